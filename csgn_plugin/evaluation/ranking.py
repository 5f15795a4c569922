"""CMC and mAP for person re-identification under the general, CC and SC protocols.

Protocols (``mode``). For one query, a gallery item of the *same identity* is good or junk:

============  ==========================================  =======================================
mode          good                                        junk (removed from the ranking)
============  ==========================================  =======================================
``general``   different camera                            same camera
``cc``        different camera and different clothes      same camera or same clothes
``sc``        different camera and same clothes           same camera or different clothes
============  ==========================================  =======================================

Gallery items of other identities are never removed. Junk is dropped from the ranking entirely,
as if absent. A query without any good item is skipped: it enters neither the CMC nor the mAP,
and :class:`RankResult` counts it (``num_skipped``). After junk removal, CMC(k) is the fraction of
valid queries with a good item among their first k; AP is the mean over the good items of
(good items up to it / its rank), non-interpolated. ``general`` equals torchreid's
``metrics.evaluate_rank(..., use_metric_cuhk03=False)``.

Decisions beyond torchreid's evaluator:

* The CMC always has ``max_rank`` entries. When a query's ranking (after junk removal) is shorter
  than ``max_rank`` its good item is within the list, so its CMC is 1 from its first good rank
  on; the curve is therefore the natural one extended with its last value. torchreid instead
  shortens ``max_rank`` to the gallery size and fails on the ragged curves junk removal leaves.
* Equal distances are ordered by gallery index (stable sort), so results are deterministic;
  torchreid's ``np.argsort`` leaves their order unspecified.
* A distance matrix with NaN values, or a protocol under which no query has a good item, raises
  ``ValueError`` instead of producing a meaningless score.

Implementation: queries are ranked ``chunk_size`` at a time, vectorised with torch, on the device
of the distance matrix (or of the features); numpy inputs run as CPU tensors through the same
code. Only same-identity items can be good or junk, so only their positions are needed, and no
row is sorted: the position of item g in row r is the number of gallery items before it in the
stable order (a smaller distance, or the same distance and a smaller index). Each row's distances
are mapped to integer bucket keys by a monotone map (scaled from the row's smallest distance to
its largest same-identity one); a histogram of the keys counts the items of lower buckets
exactly, and only the few items sharing a bucket with a same-identity item are compared one by
one. That is a few passes over each row instead of a sort, and every requested protocol is
scored from the same positions. On the CPU, blocks of rows are ranked on all torch threads at
once.
"""

from __future__ import annotations

import contextlib
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence, TypeVar, Union

import numpy as np
import torch

from ..progress import track
from .distance import METRICS, PairwiseDistance, as_feature_tensor, common_device

MODES = ("general", "cc", "sc")
Modes = Union[str, Sequence[str]]


@dataclass(frozen=True)
class RankResult:
    """Scores of one protocol.

    ``cmc`` is float32 of length ``max_rank`` (``cmc[k - 1]`` is rank-k accuracy), ``mAP`` a
    fraction in [0, 1]. ``num_valid`` queries were scored and ``num_skipped`` had no good item.
    For single-shot results both counts are summed over the ``num_trials`` trials.
    """

    mode: str
    cmc: np.ndarray
    mAP: float
    num_valid: int
    num_skipped: int
    num_trials: int = 1

    def rank(self, k: int) -> float:
        """Rank-k accuracy (CMC at k, 1-based)."""
        if not 1 <= k <= len(self.cmc):
            raise ValueError(f"rank {k} is outside the computed CMC (1..{len(self.cmc)})")
        return float(self.cmc[k - 1])


@dataclass(frozen=True)
class _Labels:
    pids: torch.Tensor
    camids: torch.Tensor
    clothes_ids: torch.Tensor | None

    def subset(self, index: torch.Tensor | slice) -> _Labels:
        clothes = None if self.clothes_ids is None else self.clothes_ids[index]
        return _Labels(self.pids[index], self.camids[index], clothes)


@dataclass(frozen=True)
class _SameIdentityItems:
    """A chunk's same-identity gallery items, grouped by query row and ordered by position."""

    rows: torch.Tensor
    positions: torch.Tensor  # 0-based, in the full ranking of the row
    gallery_index: torch.Tensor
    row_starts: torch.Tensor  # where each row's items begin
    row_counts: torch.Tensor


# ---------------------------------------------------------------------------------------------
# Input checks and conversion


def _check_modes(modes: Modes) -> tuple[str, ...]:
    requested = (modes,) if isinstance(modes, str) else tuple(modes)
    if not requested:
        raise ValueError(f"no evaluation mode given: expected some of {MODES}")
    for mode in requested:
        if mode not in MODES:
            raise ValueError(f"unknown evaluation mode {mode!r}: expected one of {MODES}")
    return tuple(dict.fromkeys(requested))


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _as_distance_tensor(distmat: Any) -> torch.Tensor:
    if isinstance(distmat, torch.Tensor):
        tensor = distmat.detach()
    else:
        array = np.asarray(distmat)
        if array.dtype.kind not in "fiu":
            raise TypeError(f"distmat must hold numbers, got dtype {array.dtype}")
        tensor = torch.from_numpy(np.ascontiguousarray(array))
    if tensor.dim() != 2:
        raise ValueError(
            f"distmat must be 2-D (num_query, num_gallery), got shape {tuple(tensor.shape)}"
        )
    if tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise ValueError(f"distmat is empty: shape {tuple(tensor.shape)}")
    return tensor if tensor.is_floating_point() else tensor.double()


def _as_label_tensor(name: str, values: Any, length: int, device: torch.device) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        tensor = values.detach()
        is_integer = not tensor.is_floating_point() and not tensor.is_complex()
    else:
        array = np.asarray(values)
        is_integer = array.dtype.kind in "biu"
        tensor = torch.from_numpy(np.ascontiguousarray(array)) if is_integer else None
    if not is_integer:
        dtype = values.dtype if hasattr(values, "dtype") else type(values).__name__
        raise TypeError(f"{name} must hold integer labels, got {dtype}")
    if tensor.dim() != 1 or tensor.shape[0] != length:
        raise ValueError(
            f"{name} must be 1-D with {length} entries (one per row/column of the distance "
            f"matrix), got shape {tuple(tensor.shape)}"
        )
    return tensor.to(device=device, dtype=torch.int64)


def _prepare_labels(
    num_query: int,
    num_gallery: int,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    q_clothes_ids: Any,
    g_clothes_ids: Any,
    modes: tuple[str, ...],
    device: torch.device,
) -> tuple[_Labels, _Labels]:
    clothes_modes = [mode for mode in modes if mode != "general"]
    missing = [
        name
        for name, value in (("q_clothes_ids", q_clothes_ids), ("g_clothes_ids", g_clothes_ids))
        if value is None
    ]
    if clothes_modes and missing:
        raise ValueError(
            f"mode {clothes_modes[0]!r} needs clothes labels for query and gallery, but "
            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} None"
        )
    use_clothes = bool(clothes_modes)
    query = _Labels(
        _as_label_tensor("q_pids", q_pids, num_query, device),
        _as_label_tensor("q_camids", q_camids, num_query, device),
        _as_label_tensor("q_clothes_ids", q_clothes_ids, num_query, device)
        if use_clothes
        else None,
    )
    gallery = _Labels(
        _as_label_tensor("g_pids", g_pids, num_gallery, device),
        _as_label_tensor("g_camids", g_camids, num_gallery, device),
        _as_label_tensor("g_clothes_ids", g_clothes_ids, num_gallery, device)
        if use_clothes
        else None,
    )
    return query, gallery


# ---------------------------------------------------------------------------------------------
# The vectorised core


def _exclusive_cumsum_per_row(
    values: torch.Tensor, rows: torch.Tensor, row_starts: torch.Tensor
) -> torch.Tensor:
    """Sum of ``values`` before each entry within its row (entries are grouped by row)."""
    exclusive = torch.cumsum(values, 0) - values
    return exclusive - exclusive[row_starts[rows]]


def _sum_per_row(
    values: torch.Tensor, row_starts: torch.Tensor, row_counts: torch.Tensor
) -> torch.Tensor:
    # cumulative sums rather than index_add_, whose CUDA atomics make float sums nondeterministic
    padded = torch.cat([values.new_zeros(1), torch.cumsum(values, 0)])
    return padded[row_starts + row_counts] - padded[row_starts]


def _good_mask(
    mode: str, same_cam: torch.Tensor, same_clothes: torch.Tensor | None
) -> torch.Tensor:
    """Which same-identity gallery items are good; the others are junk."""
    if mode == "general":
        return ~same_cam
    if mode == "cc":
        return ~same_cam & ~same_clothes
    return ~same_cam & same_clothes


class _Accumulator:
    """Running totals of one protocol, kept on the device until the end (no per-chunk syncs)."""

    def __init__(self, max_rank: int, device: torch.device):
        self.max_rank = max_rank
        # first_rank_hist[r - 1]: valid queries whose first good item has rank r (last: > max_rank)
        self.first_rank_hist = torch.zeros(max_rank + 1, dtype=torch.int64, device=device)
        self.ap_total = torch.zeros((), dtype=torch.float64, device=device)
        self.num_valid = torch.zeros((), dtype=torch.int64, device=device)
        self.num_queries = 0

    def add(self, items: _SameIdentityItems, good: torch.Tensor) -> None:
        """Score one chunk from its same-identity items and which of them are good."""
        rows, positions = items.rows, items.positions
        row_starts, row_counts = items.row_starts, items.row_counts
        num_rows = row_counts.shape[0]
        good_count = good.to(torch.int64)
        junk_before = _exclusive_cumsum_per_row(1 - good_count, rows, row_starts)
        hits = _exclusive_cumsum_per_row(good_count, rows, row_starts) + good_count
        rank = positions + 1 - junk_before  # 1-based rank once junk is removed
        precision = torch.where(good, hits.double() / rank.double(), 0.0)
        ap_sums = _sum_per_row(precision, row_starts, row_counts)
        num_good = _sum_per_row(good_count, row_starts, row_counts)
        first_rank = torch.full_like(row_counts, self.max_rank + 1)
        first_rank.scatter_reduce_(0, rows[good], rank[good], reduce="amin")
        valid = num_good > 0
        self.first_rank_hist += torch.bincount(
            (first_rank[valid] - 1).clamp_(max=self.max_rank), minlength=self.max_rank + 1
        )
        self.ap_total += (ap_sums[valid] / num_good[valid]).sum()
        self.num_valid += valid.sum()
        self.num_queries += num_rows

    def result(self, mode: str) -> RankResult:
        num_valid = int(self.num_valid.item())
        hits_at_k = torch.cumsum(self.first_rank_hist[: self.max_rank], 0).cpu().numpy()
        # float32 division, exactly as torchreid divides its float32 CMC sums
        cmc = hits_at_k.astype(np.float32) / np.float32(max(num_valid, 1))
        mean_ap = float(self.ap_total.item()) / num_valid if num_valid else float("nan")
        return RankResult(mode, cmc, mean_ap, num_valid, self.num_queries - num_valid)


@dataclass(frozen=True)
class _GalleryIdentities:
    """The gallery's items grouped by identity, each group in gallery order."""

    order: torch.Tensor  # gallery indices sorted by pid (stable)
    sorted_pids: torch.Tensor

    @classmethod
    def of(cls, pids: torch.Tensor) -> _GalleryIdentities:
        order = torch.sort(pids, stable=True).indices
        return cls(order, pids[order])

    def pairs(self, query_pids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every (query row, gallery index) of the same identity, by row, then gallery index."""
        first = torch.searchsorted(self.sorted_pids, query_pids, side="left")
        counts = torch.searchsorted(self.sorted_pids, query_pids, side="right") - first
        rows = torch.repeat_interleave(torch.arange(len(query_pids), device=counts.device), counts)
        slot = (
            torch.arange(rows.shape[0], device=rows.device)
            - (torch.cumsum(counts, 0) - counts)[rows]
        )
        return rows, self.order[first[rows] + slot]


#: distances ranked at a time per worker: on a CPU, 16 rows of a LaST-size gallery, so that a
#: block of a gallery-major chunk reads whole cache lines; on a GPU, fewer kernel launches
_BLOCK_ENTRIES = {"cpu": 2**21, "cuda": 2**26}
#: rows of a block: its bucket keys (row offset included) stay exact integers in float32
_MAX_BLOCK_ROWS = 256


def _bucket_count(num_gallery: int) -> int:
    """Buckets per row: about four gallery items each (a power of two, 4 to 2**15)."""
    return min(2**15, max(4, 1 << max(0, math.ceil(math.log2(num_gallery / 4)))))


def _positions(
    distances: torch.Tensor,
    lowest: torch.Tensor,
    columns: torch.Tensor,
    gallery_index: torch.Tensor,
) -> torch.Tensor:
    """The 0-based position of each item (``gallery_index`` in query ``columns``) in its
    query's ranking, equal distances ordered by gallery index.

    ``distances``: (G, b), gallery along dim 0, NaN-free: a column block of a gallery-major
    product, or the transposed view of a row-major block; every step below reads and writes in
    the block's own memory order. ``lowest``: each query's smallest distance.

    Keys: ``clamp(d * scale + shift)`` truncated to an integer is non-decreasing in ``d`` (every
    step rounds monotonically), so items of a lower key lie before the item and items of a
    higher key after it; only the items that share a key with a same-identity item (members)
    need their distances compared. Each query gets its own range of keys (an offset), so one
    histogram counts a whole block.
    """
    num_gallery, num_queries = distances.shape
    buckets = _bucket_count(num_gallery)
    work = torch.promote_types(distances.dtype, torch.float32)
    values = distances[gallery_index, columns].to(work)
    lowest = lowest.to(work)
    highest = torch.full_like(lowest, math.nan)
    highest.scatter_reduce_(0, columns, values, reduce="amax", include_self=False)
    # lowest -> key 0 and the farthest same-identity item -> key buckets - 2 (the last bucket
    # collects the rest); queries whose scale is not finite (no item, equal or infinite
    # distances) get scale 1: still monotone, only coarser
    offsets = torch.arange(num_queries, device=distances.device, dtype=work) * buckets
    scale = (buckets - 2) / (highest - lowest)
    shift = offsets - lowest * scale
    usable = torch.isfinite(scale) & (scale > 0) & torch.isfinite(shift)
    scale = torch.where(usable, scale, 1.0)
    shift = torch.where(usable, shift, offsets)
    keys = torch.addcmul(shift, distances, scale).clamp_(offsets, offsets + buckets - 1).long()
    # the keys in memory order: query-major (a row-major block) or gallery-major
    query_major = not keys.is_contiguous()
    flat_keys = (keys.t() if query_major else keys).reshape(-1)
    histogram = torch.bincount(flat_keys, minlength=num_queries * buckets)
    before_key = torch.cumsum(histogram, 0).sub_(histogram)  # earlier queries' items included
    item_keys = keys[gallery_index, columns]
    del keys
    is_item_key = torch.zeros(num_queries * buckets, dtype=torch.bool, device=distances.device)
    is_item_key[item_keys] = True
    members = is_item_key.take(flat_keys).nonzero().squeeze(1)  # memory positions, ascending
    if query_major:
        member_columns, member_index = members // num_gallery, members % num_gallery
        item_positions = columns * num_gallery + gallery_index
    else:
        member_index, member_columns = members // num_queries, members % num_queries
        item_positions = gallery_index * num_queries + columns
    member_keys = flat_keys[members]
    del flat_keys
    # members by (key, distance, gallery index): within a query, memory order is gallery order
    order = torch.sort(distances[member_index, member_columns], stable=True).indices
    order = order[torch.sort(member_keys[order], stable=True).indices]
    rank_among_members = torch.empty_like(order)
    rank_among_members[order] = torch.arange(order.shape[0], device=order.device)
    own = torch.searchsorted(members, item_positions)
    first_of_key = torch.searchsorted(member_keys[order], item_keys)
    before = before_key[item_keys] - columns * num_gallery
    return before + rank_among_members[own] - first_of_key


T = TypeVar("T")


@contextlib.contextmanager
def _one_thread_per_op() -> Iterator[None]:
    """torch ops single-threaded for a while: the caller runs several at once instead."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _map_blocks(function: Callable[[int], T], blocks: range, device: torch.device) -> list[T]:
    """``function`` over ``blocks``; on the CPU, one block per torch thread at a time (a
    block's ops are too small to share well between threads, and bincount has one thread)."""
    workers = min(torch.get_num_threads(), len(blocks)) if device.type == "cpu" else 1
    if workers <= 1:
        return [function(block) for block in blocks]
    with _one_thread_per_op(), ThreadPoolExecutor(workers) as pool:
        return list(pool.map(function, blocks))


def _same_identity_ranks(
    distances: torch.Tensor,
    query_pids: torch.Tensor,
    identities: _GalleryIdentities,
    first_row: int,
) -> _SameIdentityItems:
    """Where each query's same-identity gallery items fall in its ranking (``distances``
    row-major, or the transposed view of a gallery-major product)."""
    num_rows, num_gallery = distances.shape
    lowest = distances.amin(dim=1)  # NaN where a row holds one
    if bool(torch.isnan(lowest).any()):
        raise ValueError(
            f"distance matrix has NaN values in query rows {first_row}.."
            f"{first_row + num_rows - 1}: check the features"
        )
    rows, gallery_index = identities.pairs(query_pids)
    per_block = _BLOCK_ENTRIES.get(distances.device.type, _BLOCK_ENTRIES["cuda"]) // num_gallery
    step = min(max(1, per_block), _MAX_BLOCK_ROWS)
    bounds = torch.searchsorted(rows, torch.arange(0, num_rows + step, step, device=rows.device))
    bounds = bounds.tolist()

    def rank_block(block: int) -> torch.Tensor:
        start = block * step
        items = slice(bounds[block], bounds[block + 1])
        return _positions(
            distances[start : start + step].t(),
            lowest[start : start + step],
            rows[items] - start,
            gallery_index[items],
        )

    blocks = range(math.ceil(num_rows / step))
    positions = torch.cat(_map_blocks(rank_block, blocks, distances.device))
    # by row, then position (positions within a row are distinct)
    order = torch.sort(rows * num_gallery + positions).indices
    rows, positions, gallery_index = rows[order], positions[order], gallery_index[order]
    row_counts = torch.bincount(rows, minlength=num_rows)
    row_starts = torch.cumsum(row_counts, 0) - row_counts
    return _SameIdentityItems(rows, positions, gallery_index, row_starts, row_counts)


def _rank_chunk(
    distances: torch.Tensor,
    query: _Labels,
    gallery: _Labels,
    identities: _GalleryIdentities,
    modes: tuple[str, ...],
    accumulators: dict[str, _Accumulator],
    first_row: int,
) -> None:
    """Rank one chunk of query rows once and add it to every protocol's totals."""
    items = _same_identity_ranks(distances, query.pids, identities, first_row)
    del distances  # a computed chunk is not needed any more
    same_cam = query.camids[items.rows] == gallery.camids[items.gallery_index]
    same_clothes = (
        None
        if query.clothes_ids is None
        else query.clothes_ids[items.rows] == gallery.clothes_ids[items.gallery_index]
    )
    for mode in modes:
        accumulators[mode].add(items, _good_mask(mode, same_cam, same_clothes))


def _evaluate_chunks(
    chunk_distances: Callable[[int, int], torch.Tensor],
    query: _Labels,
    gallery: _Labels,
    modes: tuple[str, ...],
    max_rank: int,
    chunk_size: int,
    device: torch.device,
) -> dict[str, RankResult]:
    """Score all queries; ``chunk_distances(start, end)`` gives the rows start..end-1."""
    num_query = query.pids.shape[0]
    accumulators = {mode: _Accumulator(max_rank, device) for mode in modes}
    identities = _GalleryIdentities.of(gallery.pids)
    starts = range(0, num_query, chunk_size)
    for start in track(starts, "ranking", unit=f"chunk of {chunk_size} queries"):
        end = min(start + chunk_size, num_query)
        chunk_labels = query.subset(slice(start, end))
        _rank_chunk(
            chunk_distances(start, end),
            chunk_labels,
            gallery,
            identities,
            modes,
            accumulators,
            start,
        )
    return {mode: accumulators[mode].result(mode) for mode in modes}


def _require_valid(results: dict[str, RankResult], context: str = "") -> None:
    for result in results.values():
        if result.num_valid == 0:
            raise ValueError(
                f"no query has a good match under mode {result.mode!r}{context} (all "
                f"{result.num_skipped} queries skipped): check the camera/clothes labels, or "
                "whether this protocol applies to the dataset"
            )


def _evaluate_distance_tensor(
    distances: torch.Tensor,
    query: _Labels,
    gallery: _Labels,
    modes: tuple[str, ...],
    max_rank: int,
    chunk_size: int,
) -> dict[str, RankResult]:
    return _evaluate_chunks(
        lambda start, end: distances[start:end],
        query,
        gallery,
        modes,
        max_rank,
        chunk_size,
        distances.device,
    )


# ---------------------------------------------------------------------------------------------
# Public API


def evaluate_rank_modes(
    distmat: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    q_clothes_ids: Any = None,
    g_clothes_ids: Any = None,
    modes: Modes = ("general",),
    max_rank: int = 50,
    chunk_size: int = 1024,
) -> dict[str, RankResult]:
    """Score one distance matrix under several protocols, sorting each query row only once.

    ``distmat`` (num_query, num_gallery) and the 1-D integer labels may be numpy arrays or torch
    tensors; a CUDA distance matrix is evaluated on its GPU. ``cc`` and ``sc`` need both clothes
    label arrays. Returns ``{mode: RankResult}``; raises ``ValueError`` if under some requested
    protocol no query has a good item.
    """
    requested = _check_modes(modes)
    max_rank = _check_positive_int("max_rank", max_rank)
    chunk_size = _check_positive_int("chunk_size", chunk_size)
    distances = _as_distance_tensor(distmat)
    query, gallery = _prepare_labels(
        *distances.shape,
        q_pids,
        g_pids,
        q_camids,
        g_camids,
        q_clothes_ids,
        g_clothes_ids,
        requested,
        distances.device,
    )
    results = _evaluate_distance_tensor(distances, query, gallery, requested, max_rank, chunk_size)
    _require_valid(results)
    return results


def evaluate_rank_detailed(
    distmat: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    q_clothes_ids: Any = None,
    g_clothes_ids: Any = None,
    mode: str = "general",
    max_rank: int = 50,
    chunk_size: int = 1024,
) -> RankResult:
    """CMC, mAP and the valid/skipped query counts of one protocol (see the module docstring)."""
    results = evaluate_rank_modes(
        distmat,
        q_pids,
        g_pids,
        q_camids,
        g_camids,
        q_clothes_ids,
        g_clothes_ids,
        modes=[mode],
        max_rank=max_rank,
        chunk_size=chunk_size,
    )
    (result,) = results.values()
    return result


def evaluate_rank(
    distmat: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    q_clothes_ids: Any = None,
    g_clothes_ids: Any = None,
    mode: str = "general",
    max_rank: int = 50,
    chunk_size: int = 1024,
) -> tuple[np.ndarray, float]:
    """``(cmc, mAP)`` like torchreid's ``evaluate_rank``: cmc float32 of length ``max_rank``.

    ``mode='general'`` reproduces torchreid's Market-1501 evaluation; ``'cc'`` and ``'sc'`` are
    the clothes-changing and same-clothes protocols. Use :func:`evaluate_rank_detailed` to also
    get the number of skipped queries.
    """
    result = evaluate_rank_detailed(
        distmat,
        q_pids,
        g_pids,
        q_camids,
        g_camids,
        q_clothes_ids,
        g_clothes_ids,
        mode=mode,
        max_rank=max_rank,
        chunk_size=chunk_size,
    )
    return result.cmc, result.mAP


def evaluate_features(
    qf: Any,
    gf: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    q_clothes_ids: Any = None,
    g_clothes_ids: Any = None,
    modes: Modes = ("general",),
    metric: str = "euclidean",
    normalize: bool = False,
    max_rank: int = 50,
    chunk_size: int = 1024,
) -> dict[str, RankResult]:
    """Score query features against gallery features without ever holding the distance matrix.

    Distances (same definitions as :func:`compute_distance_matrix`) are computed ``chunk_size``
    query rows at a time, and every requested protocol is scored from the same ranked chunk.
    Beyond the features, a chunk holds its distances, ``chunk_size * num_gallery * itemsize``
    bytes (513 MB for 1,024 x 125,353 in float32), plus small blocks of rows being ranked. If
    either feature set is a CUDA tensor the work runs on that GPU.
    """
    requested = _check_modes(modes)
    if metric not in METRICS:
        raise ValueError(f"unknown distance metric {metric!r}: expected one of {METRICS}")
    max_rank = _check_positive_int("max_rank", max_rank)
    chunk_size = _check_positive_int("chunk_size", chunk_size)
    device = common_device(qf, gf)
    query_features = as_feature_tensor("qf", qf, device)
    gallery_features = as_feature_tensor("gf", gf, device)
    dtype = torch.promote_types(query_features.dtype, gallery_features.dtype)
    query_features = query_features.to(dtype)
    distance = PairwiseDistance(gallery_features.to(dtype), metric, normalize)
    num_query, num_gallery = query_features.shape[0], gallery_features.shape[0]
    if num_query == 0 or num_gallery == 0:
        raise ValueError(f"no features: {num_query} query and {num_gallery} gallery rows")
    query, gallery = _prepare_labels(
        num_query,
        num_gallery,
        q_pids,
        g_pids,
        q_camids,
        g_camids,
        q_clothes_ids,
        g_clothes_ids,
        requested,
        device,
    )
    results = _evaluate_chunks(
        lambda start, end: distance(query_features[start:end], gallery_major=True),
        query,
        gallery,
        requested,
        max_rank,
        chunk_size,
        device,
    )
    _require_valid(results)
    return results


def draw_single_shot_gallery(g_pids: Any, seed: int) -> np.ndarray:
    """Gallery indices of one single-shot draw: one image per identity, in gallery order.

    The draw: ``np.random.default_rng(seed).random(num_gallery)`` gives every gallery image a
    key, and each identity keeps its image with the smallest key (a uniform choice per identity).
    """
    pids = np.asarray(g_pids.cpu() if isinstance(g_pids, torch.Tensor) else g_pids)
    keys = np.random.default_rng(seed).random(pids.shape[0])
    by_pid_then_key = np.lexsort((keys, pids))
    sorted_pids = pids[by_pid_then_key]
    first_of_pid = np.ones(pids.shape[0], dtype=bool)
    first_of_pid[1:] = sorted_pids[1:] != sorted_pids[:-1]
    return np.sort(by_pid_then_key[first_of_pid])


def single_shot_evaluate(
    distmat: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    q_clothes_ids: Any = None,
    g_clothes_ids: Any = None,
    mode: str = "general",
    trials: int = 10,
    seed: int = 0,
    max_rank: int = 50,
) -> RankResult:
    """Single-shot scores: the mean over ``trials`` draws of one gallery image per identity.

    Trial ``t`` keeps the gallery images :func:`draw_single_shot_gallery` picks with seed
    ``seed + t`` (the same subset for every query), scores ``mode`` on that gallery, and the
    CMC curves and mAPs of the trials are averaged. ``num_valid``/``num_skipped`` are summed over
    the trials (a query can be skipped in a trial whose drawn images of its identity are all
    junk). Raises ``ValueError`` if some trial has no valid query.
    """
    requested = _check_modes([mode])
    trials = _check_positive_int("trials", trials)
    max_rank = _check_positive_int("max_rank", max_rank)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    distances = _as_distance_tensor(distmat)
    query, gallery = _prepare_labels(
        *distances.shape,
        q_pids,
        g_pids,
        q_camids,
        g_camids,
        q_clothes_ids,
        g_clothes_ids,
        requested,
        distances.device,
    )
    trial_results = []
    for trial in range(trials):
        chosen = torch.from_numpy(draw_single_shot_gallery(gallery.pids, seed + trial))
        chosen = chosen.to(distances.device)
        results = _evaluate_distance_tensor(
            distances.index_select(1, chosen),
            query,
            gallery.subset(chosen),
            requested,
            max_rank,
            chunk_size=1024,
        )
        _require_valid(results, context=f" in single-shot trial {trial} (seed {seed + trial})")
        trial_results.append(results[requested[0]])
    cmc = np.mean([result.cmc for result in trial_results], axis=0, dtype=np.float64)
    return RankResult(
        mode=requested[0],
        cmc=cmc.astype(np.float32),
        mAP=float(np.mean([result.mAP for result in trial_results])),
        num_valid=sum(result.num_valid for result in trial_results),
        num_skipped=sum(result.num_skipped for result in trial_results),
        num_trials=trials,
    )
