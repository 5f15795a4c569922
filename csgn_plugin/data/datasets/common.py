"""Shared constructors: flat split folders (VC-Clothes, Celeb-reID); val/test (DeepChange, LaST)."""

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
from ._scan import check_choice, dataset_root, list_files, match_basenames


class FlatFolderDataset(ClothesImageDataset):
    """``<root>/<dataset_dir>/{train,query,gallery}/*.jpg``, every field in the file name.

    Subclasses set ``dataset_dir``, ``name_regex``, ``expected_name`` and turn one matched name
    into a :class:`Record` with :meth:`record` (``None`` leaves the image out of that split).
    Option: ``name_policy``.
    """

    dataset_dir = ""
    name_regex: re.Pattern
    expected_name = ""
    splits = ("train", "query", "gallery")

    def __init__(self, root: str = "", name_policy: str = "fail", **kwargs: Any) -> None:
        self.dataset_dir = dataset_root(root, type(self).dataset_dir)
        key = (type(self), self.dataset_dir, name_policy)
        train, query, gallery = cached_parse(key, lambda: self._parse(name_policy))
        super().__init__(train, query, gallery, **kwargs)

    def record(self, split: str, path: str, match: re.Match) -> Record | None:
        raise NotImplementedError

    def _parse(self, name_policy: str) -> tuple:
        name = type(self).__name__
        check_layout(self.dataset_dir, self.splits, name, self.obtain)
        records: dict[str, list[Record]] = {}
        unparsed: list[str] = []
        for split in self.splits:
            paths = list_files(os.path.join(self.dataset_dir, split), (".jpg",))
            matched, bad = match_basenames(paths, self.name_regex)
            unparsed += bad
            parsed = (self.record(split, path, m) for path, m in matched)
            records[split] = [r for r in parsed if r is not None]
        report_unparsed(name, unparsed, name_policy, self.expected_name)
        return build_splits(records["train"], records["query"], records["gallery"])


class EvalSplitDataset(ClothesImageDataset):
    """A dataset evaluated on its ``'test'`` (default) or ``'val'`` query/gallery pair.

    Subclasses set ``dataset_dir`` and implement ``_parse(eval_split, name_policy)``.
    Options: ``eval_split``, ``name_policy``.
    """

    dataset_dir = ""

    def __init__(
        self, root: str = "", eval_split: str = "test", name_policy: str = "fail", **kwargs: Any
    ) -> None:
        check_choice("eval_split", eval_split, ("test", "val"))
        self.dataset_dir = dataset_root(root, type(self).dataset_dir)
        self.eval_split = eval_split
        key = (type(self), self.dataset_dir, eval_split, name_policy)
        train, query, gallery = cached_parse(key, lambda: self._parse(eval_split, name_policy))
        super().__init__(train, query, gallery, **kwargs)

    def _parse(self, eval_split: str, name_policy: str) -> tuple:
        raise NotImplementedError
