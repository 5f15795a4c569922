"""Celeb-reID and Celeb-reID-light (celebrities from street snaps), Huang et al., 2019/2020."""

from __future__ import annotations

import os
import re
from typing import Any

from ..base import (
    ClothesImageDataset,
    Record,
    build_splits,
    cached_parse,
    check_layout,
    report_unparsed,
)
from ._scan import dataset_root, list_files, match_basenames


class CelebReID(ClothesImageDataset):
    """Celeb-reID: ``train/``, ``query/``, ``gallery/``, ``*.jpg`` named ``<pid>_<n>_<x>.jpg``.

    The release has no camera and no clothes labels (nearly every image is a clothes change).
    Choices, following the official evaluation code: camera id = the first digit of ``n`` (so
    0-9); general protocol only. Each image is its own outfit (clothes key = the image), since no
    two images are known to share clothes. Option: ``name_policy``.
    """

    dataset_dir = "Celeb-reID"
    protocols = ("general",)
    obtain = (
        "Celeb-reID is public for research (OneDrive / Baidu links at "
        "github.com/Huang-3/Celeb-reID); unpack it so that <root>/Celeb-reID/train exists."
    )
    official_counts = {
        "train": {"ids": 632, "images": 20208},
        "query": {"ids": 420, "images": 2972},
        "gallery": {"ids": 420, "images": 11006},
    }
    name_regex = re.compile(r"(\d+)_(\d+)_([^_]+)\.jpg")
    expected_name = "<pid>_<n>_<x>.jpg (e.g. 12_31_0.jpg)"

    def __init__(self, root: str = "", name_policy: str = "fail", **kwargs: Any) -> None:
        self.dataset_dir = dataset_root(root, type(self).dataset_dir)
        key = (type(self), self.dataset_dir, name_policy)
        train, query, gallery = cached_parse(key, lambda: self._parse(name_policy))
        super().__init__(train, query, gallery, **kwargs)

    def _parse(self, name_policy: str) -> tuple:
        name = type(self).__name__
        splits = ("train", "query", "gallery")
        check_layout(self.dataset_dir, splits, name, self.obtain)
        records: dict[str, list[Record]] = {}
        unparsed: list[str] = []
        for split in splits:
            paths = list_files(os.path.join(self.dataset_dir, split), (".jpg",))
            matched, bad = match_basenames(paths, self.name_regex)
            unparsed += bad
            records[split] = [Record(p, int(m[1]), int(m[2][0]), p) for p, m in matched]
        report_unparsed(name, unparsed, name_policy, self.expected_name)
        return build_splits(records["train"], records["query"], records["gallery"])


class CelebReIDLight(CelebReID):
    """Celeb-reID-light: the smaller release (``<root>/Celeb-reID-light/``), same layout."""

    dataset_dir = "Celeb-reID-light"
    obtain = CelebReID.obtain.replace("Celeb-reID/train", "Celeb-reID-light/train")
    official_counts = {
        "train": {"ids": 490, "images": 9021},
        "query": {"ids": 100, "images": 887},
        "gallery": {"ids": 100, "images": 934},
    }
