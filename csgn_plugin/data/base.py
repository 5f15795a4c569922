"""Clothes-aware dataset base classes on top of torchreid's ``ImageDataset`` / ``VideoDataset``.

Items are ``(img_path, pid, camid, dsetid, clothes_id)`` (for video, a tuple of frame paths in place
of ``img_path``). torchreid reads fields by index (pid = 1, camid = 2, dsetid = 3), so its samplers
and ``visualize_ranked_results`` work unchanged; what unpacks exactly four fields
(``__add__``, ``combine_all``, ``__getitem__``) is overridden here.

Parsers subclass :class:`ClothesImageDataset`, describe their raw files as :class:`Record` lists
and call :func:`build_splits`, which applies the field's relabelling rules once for every dataset:
training pids and clothes to ``0..N-1``; query and gallery keep raw pids, one clothes scope.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Callable

from PIL import Image

from ..compat import torchreid_api
from ..errors import ConfigError, UserError
from ..progress import get_logger
from .image_io import ImageReadError, read_image

tr = torchreid_api()

Item = tuple  # (img_path or frame paths, pid, camid, dsetid, clothes_id)

IMAGE_POLICIES = ("fail", "skip")


@dataclass(frozen=True)
class Record:
    """One raw sample as a parser reads it: raw pid, 0-based camera, any hashable clothes key."""

    path: Any  # str for images, tuple of str for videos
    pid: int
    camid: int
    clothes_key: Hashable


class DatasetLayoutError(UserError, RuntimeError):
    """A dataset folder is missing, incomplete or holds files that do not fit its layout."""


def relabel(keys: Iterable[Hashable]) -> dict:
    """Map the distinct keys, in sorted order, to ``0..K-1`` (deterministic across runs)."""
    return {key: label for label, key in enumerate(sorted(set(keys), key=repr))}


def build_splits(
    train: Sequence[Record], query: Sequence[Record], gallery: Sequence[Record]
) -> tuple[list[Item], list[Item], list[Item]]:
    """Turn raw records into torchreid items with the field's relabelling rules."""
    pid2label = relabel(r.pid for r in train)
    train_clothes = relabel(r.clothes_key for r in train)
    test_clothes = relabel(r.clothes_key for r in (*query, *gallery))
    train_items = [
        (r.path, pid2label[r.pid], r.camid, 0, train_clothes[r.clothes_key]) for r in train
    ]

    def test_items(records: Sequence[Record]) -> list[Item]:
        return [(r.path, r.pid, r.camid, 0, test_clothes[r.clothes_key]) for r in records]

    return train_items, test_items(query), test_items(gallery)


def check_layout(dataset_dir: str, required: Sequence[str], name: str, obtain: str) -> None:
    """Raise one clear error naming every missing path, the expected layout and the source."""
    missing = [p for p in required if not os.path.exists(os.path.join(dataset_dir, p))]
    if not os.path.isdir(dataset_dir) or missing:
        what = (
            f"'{dataset_dir}' does not exist"
            if not os.path.isdir(dataset_dir)
            else ("missing: " + ", ".join(f"'{os.path.join(dataset_dir, p)}'" for p in missing))
        )
        raise DatasetLayoutError(
            f"{name}: {what}. Expected under '{dataset_dir}': {', '.join(required)}. {obtain}"
        )


def report_unparsed(name: str, unparsed: Sequence[str], policy: str, expected: str) -> None:
    """Never skip silently: fail, or warn with a count and the first examples."""
    if not unparsed:
        return
    examples = ", ".join(f"'{p}'" for p in unparsed[:5])
    msg = (
        f"{name}: {len(unparsed)} file(s) do not match the expected name pattern {expected}; "
        f"first: {examples}"
    )
    if policy == "fail":
        raise DatasetLayoutError(
            msg + " (set cc_data.name_policy 'skip' to leave them out with a warning)"
        )
    if policy != "skip":
        raise ConfigError(f"cc_data.name_policy must be 'fail' or 'skip', got '{policy}'")
    get_logger().warning(f"Warning: {msg}; skipped")


_PARSE_CACHE: dict = {}


def cached_parse(key: Hashable, parse: Callable[[], Any]) -> Any:
    """torchreid builds each dataset three times (train, query, gallery): parse once."""
    if key not in _PARSE_CACHE:
        _PARSE_CACHE[key] = parse()
    return copy.deepcopy(_PARSE_CACHE[key])


def _num_clothes(data: Sequence[Item]) -> int:
    return len({item[4] for item in data})


def _check_nonempty(name: str, train: list, query: list, gallery: list) -> None:
    needed = {"train": train, "query": query, "gallery": gallery}
    empty = [split for split, items in needed.items() if not items]
    if empty:
        raise DatasetLayoutError(f"{name}: the {', '.join(empty)} split(s) hold no samples")


class ClothesDatasetMixin:
    """What the clothes-changing datasets add to torchreid's datasets."""

    #: protocols the engine reports for this dataset, in order
    protocols: tuple = ("general", "cc", "sc")
    #: where the data set is obtained (used in error messages and by check_dataset)
    obtain: str = ""
    #: made on first use (SynthCC) rather than obtained: never missing before a run
    generated: bool = False

    train: list
    query: list
    gallery: list
    num_train_pids: int
    _junk_pids: list

    @classmethod
    def check_generation(cls, options: dict) -> None:
        """Refuse the ``cc_data`` options a generated data set cannot be made with, without
        making it (``generated`` data sets only; the others check theirs while parsing)."""

    @property
    def num_train_clothes(self) -> int:
        return _num_clothes(self.train)

    def _offset_train(self, other: Any) -> list[Item]:
        """``other``'s training items shifted past ours, clothes ids included."""
        shift_pid, shift_cam = self.num_train_pids, self.get_num_cams(self.train)
        shift_dset, shift_clothes = self.get_num_datasets(self.train), self.num_train_clothes
        return [
            (path, pid + shift_pid, camid + shift_cam, dsetid + shift_dset, cid + shift_clothes)
            for path, pid, camid, dsetid, cid in other.train
        ]

    def combine_all(self) -> None:
        """torchreid's combine_all, keeping clothes ids (query and gallery share one scope)."""
        if getattr(self, "_train_only", False):
            return
        combined = copy.deepcopy(self.train)
        shift_clothes = _num_clothes(self.train)
        g_pids = sorted({item[1] for item in self.gallery if item[1] not in self._junk_pids})
        pid2label = {pid: i + self.num_train_pids for i, pid in enumerate(g_pids)}
        for path, pid, camid, dsetid, cid in (*self.query, *self.gallery):
            if pid in self._junk_pids:
                continue
            combined.append((path, pid2label[pid], camid, dsetid, cid + shift_clothes))
        self.train = combined
        self.num_train_pids = self.get_num_pids(self.train)


class ClothesImageDataset(ClothesDatasetMixin, tr.data.ImageDataset):
    """Image dataset whose items carry a clothes id and whose batches carry ``clothes_id``.

    ``image_policy`` (``cc_data.image_policy``) says what an unreadable image does:

    * ``'fail'``: raise :class:`ImageReadError` naming the file (also from a loader worker);
    * ``'skip'``: use the next readable image of the same identity instead (same outfit first,
      in dataset order, so the choice is deterministic), and flag the item: every item then
      carries ``unreadable_path``, the file it could not read (``''`` when it read its own). The
      engine counts the flags of each batch, which works whatever process loaded the item, and
      leaves flagged query/gallery items out of the evaluation. A training identity without any
      readable image still fails; a test item without one gets a black placeholder (left out).
    """

    def __init__(self, train: list, query: list, gallery: list, **kwargs: Any) -> None:
        _check_nonempty(type(self).__name__, train, query, gallery)
        self.image_policy = kwargs.pop("image_policy", "fail")
        if self.image_policy not in IMAGE_POLICIES:
            raise ConfigError(
                f"cc_data.image_policy must be one of {IMAGE_POLICIES}, got '{self.image_policy}'"
            )
        self._same_identity: tuple[list, dict] | None = None
        super().__init__(train, query, gallery, **kwargs)

    def __getitem__(self, index: int) -> dict:
        img_path, pid, camid, dsetid, clothes_id = self.data[index]
        unreadable = ""
        try:
            img = read_image(img_path)
        except ImageReadError:
            if self.image_policy == "fail":
                raise
            unreadable = img_path
            img_path, img = self._substitute(index)
        if self.transform is not None:
            img = self._transform_image(self.transform, self.k_tfm, img)
        item = {
            "img": img,
            "pid": pid,
            "camid": camid,
            "impath": img_path,
            "dsetid": dsetid,
            "clothes_id": clothes_id,
        }
        if self.image_policy == "skip":
            item["unreadable_path"] = unreadable
        return item

    def _candidates(self, index: int) -> list[int]:
        """Indices of the same identity after ``index`` (cyclic), those of its outfit first."""
        if self._same_identity is None or self._same_identity[0] is not self.data:
            by_pid: dict[int, list[int]] = {}
            for i, item in enumerate(self.data):
                by_pid.setdefault(item[1], []).append(i)
            self._same_identity = (self.data, by_pid)
        _, pid, _, _, clothes_id = self.data[index]
        same = self._same_identity[1][pid]
        start = same.index(index)
        ordered = same[start + 1 :] + same[:start]
        return [i for i in ordered if self.data[i][4] == clothes_id] + [
            i for i in ordered if self.data[i][4] != clothes_id
        ]

    def _substitute(self, index: int) -> tuple[str, Image.Image]:
        """The first readable image that can stand in for item ``index``, and its path."""
        for other in self._candidates(index):
            path = self.data[other][0]
            try:
                return path, read_image(path)
            except ImageReadError:
                continue
        path, pid = self.data[index][0], self.data[index][1]
        if self.mode == "train":
            raise ImageReadError(
                path,
                f"unreadable, and no other image of training identity {pid} can be read "
                "(cc_data.image_policy 'skip' needs one to stand in)",
            )
        # the engine leaves this item out of the evaluation; the transform resizes it
        return "", Image.new("RGB", (64, 128))

    def __add__(self, other: Any) -> ClothesImageDataset:
        """Concatenate training sets (torchreid's version unpacks four fields and fails)."""
        if not isinstance(other, ClothesDatasetMixin):
            raise TypeError(
                f"cannot combine {type(self).__name__} with {type(other).__name__}: both sources "
                "must be clothes-changing datasets (items with clothes ids)"
            )
        train = copy.deepcopy(self.train) + self._offset_train(other)
        return ClothesImageDataset(
            train,
            self.query,
            self.gallery,
            transform=self.transform,
            k_tfm=self.k_tfm,
            mode=self.mode,
            combineall=False,
            verbose=False,
            image_policy=self.image_policy,
        )

    def show_summary(self) -> None:
        get_logger().info(f"=> Loaded {type(self).__name__}")
        get_logger().info(format_statistics(self.train, self.query, self.gallery))


def split_statistics(data: Sequence[Item]) -> dict:
    """ids, images, cameras and outfits of one split."""
    return {
        "ids": len({item[1] for item in data}),
        "images": len(data),
        "cameras": len({item[2] for item in data}),
        "outfits": len({item[4] for item in data}),
    }


def format_statistics(train: Sequence[Item], query: Sequence[Item], gallery: Sequence[Item]) -> str:
    lines = [
        "  ---------------------------------------------------",
        "  subset   | # ids | # images | # cameras | # outfits",
        "  ---------------------------------------------------",
    ]
    for split, data in (("train", train), ("query", query), ("gallery", gallery)):
        s = split_statistics(data)
        lines.append(
            f"  {split:<8} | {s['ids']:5d} | {s['images']:8d} | {s['cameras']:9d} | "
            f"{s['outfits']:9d}"
        )
    lines.append("  ---------------------------------------------------")
    return "\n".join(lines)
