"""Training samplers that are deterministic per epoch, resumable mid-epoch and shard for DDP.

torchreid's samplers draw from the global ``random``/``numpy`` state, so a resumed run cannot
replay the batches it would have seen. These samplers draw from a generator seeded by
``(seed, epoch)``: every rank builds the same global order, takes its own shard, and a run resumed
at batch ``b`` of epoch ``e`` skips exactly the first ``b`` batches.

* ``RandomSampler``: a shuffled permutation (what softmax-only baselines use).
* ``RandomIdentitySampler``: P identities x K instances per batch (torchreid's and CLIP-ReID's
  scheme, the same rules).
* ``ClothesIdentitySampler``: as above, with the K instances of an identity spread round-robin
  over its outfits, so that a batch holds clothes-changing positives whenever the id has them.
* ``IdentityGroupShuffleSampler``: every identity's K-groups of the epoch shuffled together and
  cut into batches (Simple-CCReID's sampler: a batch may hold two groups of one identity).

They yield ``(index, sample_seed)`` pairs; :class:`SeededDataset` seeds the augmentation of each
sample from its seed, so augmentation too is a function of (seed, epoch, position) alone, whatever
the number of workers and wherever a run was resumed.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..errors import ConfigError

SAMPLERS = (
    "RandomSampler",
    "RandomIdentitySampler",
    "ClothesIdentitySampler",
    "IdentityGroupShuffleSampler",
)
IDENTITY_SAMPLERS = SAMPLERS[1:]


class EpochSampler(Sampler):
    """Base: a per-epoch global order of whole batches, sharded over ranks.

    Subclasses implement :meth:`global_batches`, a list of global batches (lists of dataset
    indices) for one epoch. Rank ``r`` of ``w`` takes the ``r``-th of ``w`` equal slices of each
    global batch (identity samplers slice at identity boundaries: each rank keeps whole K-groups).

    An iteration covers one epoch (:meth:`set_epoch`), or, after :meth:`stream_from`, every epoch
    from then on back to back: one loader iterator then serves a whole run, and its workers load
    the next epoch's first batches while the current epoch's last ones train (no epoch-start
    stall). The batches are the same either way.
    """

    def __init__(
        self,
        data_source: Sequence,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size % world_size:
            raise ValueError(
                f"train.batch_size={batch_size} must be divisible by the number of processes "
                f"({world_size})"
            )
        self.data_source = data_source
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start_batch = 0
        self.streaming = False
        self._plans: dict[int, list[list[int]]] = {}

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Iterate over one epoch, skipping its first ``start_batch`` batches (resume)."""
        self.epoch, self.start_batch, self.streaming = epoch, start_batch, False

    def stream_from(self, epoch: int, start_batch: int = 0) -> None:
        """Iterate over ``epoch`` (from batch ``start_batch``), then every later epoch."""
        self.epoch, self.start_batch, self.streaming = epoch, start_batch, True

    def _rng(self, epoch: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch])

    def global_batches(self, epoch: int) -> list[list[int]]:
        raise NotImplementedError

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        """An epoch's global batches, computed once (the two latest epochs are kept: a stream
        runs ahead into the next epoch while the loop still asks about the current one)."""
        if epoch not in self._plans:
            self._plans = {e: p for e, p in self._plans.items() if e == epoch - 1}
            self._plans[epoch] = self.global_batches(epoch)
        return self._plans[epoch]

    def num_batches(self, epoch: int | None = None) -> int:
        """Batches in ``epoch`` (default: the selected one)."""
        return len(self._epoch_batches(self.epoch if epoch is None else epoch))

    def _epoch_items(self, epoch: int, start_batch: int) -> Iterator[tuple[int, int]]:
        share = self.batch_size // self.world_size
        lo = self.rank * share
        base = (self.seed * 1_000_003 + epoch * 7_919) * 65_536
        batches = self._epoch_batches(epoch)
        for b in range(start_batch, len(batches)):
            for i, index in enumerate(batches[b][lo : lo + share]):
                position = b * self.batch_size + lo + i  # unique over ranks
                yield index, (base + position) % (2**31)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, start = self.epoch, self.start_batch
        while True:
            yield from self._epoch_items(epoch, start)
            if not self.streaming:
                return
            epoch, start = epoch + 1, 0

    def __len__(self) -> int:
        """Items of the selected epoch from ``start_batch`` (a stream goes on beyond it)."""
        return (self.num_batches() - self.start_batch) * (self.batch_size // self.world_size)


class RandomSampler(EpochSampler):
    """A seeded permutation cut into full batches (the last partial batch is dropped)."""

    def global_batches(self, epoch: int) -> list[list[int]]:
        order = self._rng(epoch).permutation(len(self.data_source)).tolist()
        n = len(order) // self.batch_size
        return [order[i * self.batch_size : (i + 1) * self.batch_size] for i in range(n)]


class RandomIdentitySampler(EpochSampler):
    """P = batch_size / K identities, K instances each, with CLIP-ReID's (and torchreid's)
    epoch: each id's images shuffled and cut into K-groups, ids drawn until fewer than P hold
    a group. The number of batches varies with the draws; :meth:`num_batches` counts them."""

    def __init__(
        self,
        data_source: Sequence,
        batch_size: int,
        num_instances: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__(data_source, batch_size, seed, rank, world_size)
        if num_instances < 1 or batch_size % num_instances:
            raise ValueError(
                f"train.batch_size={batch_size} must be a multiple of "
                f"sampler.num_instances={num_instances}"
            )
        if (batch_size // world_size) % num_instances:
            raise ValueError(
                f"the per-process batch ({batch_size} / {world_size} processes) must be a "
                f"multiple of sampler.num_instances={num_instances}"
            )
        self.num_instances = num_instances
        self.ids_per_batch = batch_size // num_instances
        self.by_pid: dict[int, list[int]] = defaultdict(list)
        for index, item in enumerate(data_source):
            self.by_pid[item[1]].append(index)
        self.pids = sorted(self.by_pid)
        if len(self.pids) < self.ids_per_batch:
            raise ConfigError(
                f"a batch of {batch_size} (train.batch_size) with {num_instances} instances per "
                f"identity (sampler.num_instances) needs {self.ids_per_batch} identities, but the "
                f"training set has {len(self.pids)}: lower train.batch_size"
            )

    def _ordered_instances(self, pid: int, rng: np.random.Generator) -> list[int]:
        indices = list(self.by_pid[pid])
        rng.shuffle(indices)
        return indices

    def _groups(self, pid: int, rng: np.random.Generator) -> list[list[int]]:
        """The id's instances cut into K-groups, the remainder dropped. An id with fewer than K
        images gives one group of K draws with replacement from its images (CLIP-ReID's and
        torchreid's rule: an image may then repeat, and another may be left out)."""
        k = self.num_instances
        indices = self._ordered_instances(pid, rng)
        if len(indices) < k:
            indices = rng.choice(indices, size=k, replace=True).tolist()
        usable = len(indices) - len(indices) % k
        return [indices[i : i + k] for i in range(0, usable, k)]

    def global_batches(self, epoch: int) -> list[list[int]]:
        """While at least P ids hold groups: P of them drawn uniformly without replacement, in
        the drawn order, each giving its next group (CLIP-ReID's epoch)."""
        rng = self._rng(epoch)
        groups = {pid: self._groups(pid, rng) for pid in self.pids}
        available = list(self.pids)
        batches = []
        while len(available) >= self.ids_per_batch:
            chosen = rng.choice(len(available), size=self.ids_per_batch, replace=False)
            batch: list[int] = []
            for pid in [available[i] for i in chosen]:
                batch.extend(groups[pid].pop(0))
            batches.append(batch)
            available = [pid for pid in available if groups[pid]]
        return batches


class ClothesIdentitySampler(RandomIdentitySampler):
    """Identity sampler whose K instances of an id cycle through the id's outfits."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.by_pid_clothes: dict[int, dict[int, list[int]]] = {}
        for index, item in enumerate(self.data_source):
            self.by_pid_clothes.setdefault(item[1], {}).setdefault(item[4], []).append(index)

    def _ordered_instances(self, pid: int, rng: np.random.Generator) -> list[int]:
        outfits = []
        for clothes_id in sorted(self.by_pid_clothes[pid]):
            indices = list(self.by_pid_clothes[pid][clothes_id])
            rng.shuffle(indices)
            outfits.append(indices)
        rng.shuffle(outfits)
        # round-robin: consecutive instances (hence each K-group) come from different outfits
        interleaved = []
        for position in range(max(len(o) for o in outfits)):
            interleaved.extend(o[position] for o in outfits if position < len(o))
        return interleaved


class IdentityGroupShuffleSampler(RandomIdentitySampler):
    """Simple-CCReID's epoch (``data/samplers.py``, ``DistributedRandomIdentitySampler``): every
    identity's K-groups (:meth:`RandomIdentitySampler._groups`, the same rules) in one shuffled
    list, cut into batches of ``batch_size / K`` groups, the last partial batch dropped. Every
    group of the epoch is used once; a batch may hold several groups of one identity. Under DDP
    each rank takes whole groups of the same global batch (the reference deals the shuffled
    groups to the ranks in turn: the same distribution)."""

    def global_batches(self, epoch: int) -> list[list[int]]:
        rng = self._rng(epoch)
        groups = [group for pid in self.pids for group in self._groups(pid, rng)]
        order = rng.permutation(len(groups))
        per_batch = self.ids_per_batch
        return [
            [index for g in order[b * per_batch : (b + 1) * per_batch] for index in groups[g]]
            for b in range(len(groups) // per_batch)
        ]


def build_sampler(
    name: str,
    data_source: Sequence,
    batch_size: int,
    num_instances: int = 4,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> EpochSampler:
    """The sampler called ``name`` (``sampler.train_sampler``)."""
    if name == "RandomSampler":
        return RandomSampler(data_source, batch_size, seed, rank, world_size)
    if name == "RandomIdentitySampler":
        return RandomIdentitySampler(data_source, batch_size, num_instances, seed, rank, world_size)
    if name == "ClothesIdentitySampler":
        return ClothesIdentitySampler(
            data_source, batch_size, num_instances, seed, rank, world_size
        )
    if name == "IdentityGroupShuffleSampler":
        return IdentityGroupShuffleSampler(
            data_source, batch_size, num_instances, seed, rank, world_size
        )
    raise ValueError(f"sampler.train_sampler: unknown sampler '{name}', expected one of {SAMPLERS}")


class SeededDataset(Dataset):
    """Wraps a dataset so that ``ds[(index, seed)]`` runs its random augmentation from ``seed``.

    The generators of the calling process are restored afterwards, so in a loader without
    workers the training step's own randomness (dropout) is left as it was.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> object:
        index, seed = key
        python_state, numpy_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            random.seed(seed)
            np.random.seed(seed)
            # the CPU generator only, as torch.manual_seed seeds it: augmentation draws on the
            # CPU, and torch.manual_seed also queues a CUDA seeding (with a formatted stack
            # trace) on every call, ~0.1-0.5 ms an image
            torch.default_generator.manual_seed(seed)
            try:
                return self.dataset[index]
            finally:
                random.setstate(python_state)
                np.random.set_state(numpy_state)
