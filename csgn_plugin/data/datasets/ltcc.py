"""LTCC (Long-Term Cloth-Changing), Qian et al., ACCV 2020."""

from __future__ import annotations

import os
import re
from typing import Any

from ..base import (
    ClothesImageDataset,
    DatasetLayoutError,
    Record,
    build_splits,
    cached_parse,
    check_layout,
    report_unparsed,
)
from ._scan import check_choice, dataset_root, list_files, match_basenames

CC_ID_LIST = os.path.join("info", "cloth-change_id_train.txt")


def read_id_list(path: str) -> set[int]:
    """The pids of an LTCC ``info/*.txt`` list: one integer (the first token) per non-empty line."""
    pids = set()
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            tokens = line.split()
            if not tokens:
                continue
            if not tokens[0].isdigit():
                raise DatasetLayoutError(
                    f"LTCC: '{path}' line {lineno}: expected a person id (an integer), "
                    f"got '{line.strip()}'"
                )
            pids.add(int(tokens[0]))
    return pids


class LTCC(ClothesImageDataset):
    """LTCC: 17,119 images of 152 people in 12 indoor cameras, with clothes labels.

    Layout under ``<root>/LTCC_ReID/``::

        train/  query/  test/ (the gallery)  info/cloth-change_id_train.txt ...
        names: 103_1_c9_017008.png = pid 103, outfit 1, camera 9 (1-12), frame

    Clothes key = (pid, outfit); camera id = c - 1.

    Options (keyword arguments, from the ``cc_data`` config section):
        ltcc_train_ids: ``'all'`` (default) or ``'cc'``: train on the clothes-changing ids of
            ``info/cloth-change_id_train.txt`` only.
        name_policy: ``'fail'`` (default) or ``'skip'`` for files whose names do not parse.

    Subclass hook: the folder parsed is ``self._dataset_dir(root, **kwargs)``, which by default
    joins ``root`` and the class attribute ``dataset_dir``. A data set in LTCC's layout under
    another folder sets ``dataset_dir = 'Other'``; one whose folder depends on options (e.g. a
    generated tree per preset) overrides ``_dataset_dir`` and reads its own keys from ``kwargs``.
    The parse cache key holds the class and the resolved folder, so subclasses never share it.
    """

    dataset_dir = "LTCC_ReID"
    protocols = ("general", "cc", "sc")
    obtain = (
        "LTCC is released under a signed agreement: e-mail the authors (see the LTCC page on "
        "naiq.github.io) and unpack it so that <root>/LTCC_ReID/train exists."
    )
    official_counts = {
        "train": {"ids": 77, "images": 9576},
        "query": {"ids": 75, "images": 493},
        "gallery": {"ids": 75, "images": 7050},
        "all": {"ids": 152, "images": 17119, "cameras": 12},
    }
    name_regex = re.compile(r"(\d+)_(\d+)_c(0*[1-9]\d*)_(\d+)\.png")  # cameras from 1
    expected_name = "<pid>_<outfit>_c<camera>_<frame>.png (e.g. 103_1_c9_017008.png)"
    split_folders = {"train": "train", "query": "query", "gallery": "test"}

    def __init__(
        self,
        root: str = "",
        ltcc_train_ids: str = "all",
        name_policy: str = "fail",
        **kwargs: Any,
    ) -> None:
        check_choice("ltcc_train_ids", ltcc_train_ids, ("all", "cc"))
        self.dataset_dir = self._dataset_dir(root, **kwargs)
        key = (type(self), self.dataset_dir, ltcc_train_ids, name_policy)
        train, query, gallery = cached_parse(
            key, lambda: self._parse(self.dataset_dir, ltcc_train_ids, name_policy)
        )
        super().__init__(train, query, gallery, **kwargs)

    def _dataset_dir(self, root: str, **kwargs: Any) -> str:
        """The folder to parse; override in a subclass whose folder depends on options."""
        return dataset_root(root, type(self).dataset_dir)

    def _parse(self, dataset_dir: str, train_ids: str, name_policy: str) -> tuple:
        name = type(self).__name__
        required = list(self.split_folders.values())
        if train_ids == "cc":
            required.append(CC_ID_LIST)
        check_layout(dataset_dir, required, name, self.obtain)

        records: dict[str, list[Record]] = {}
        unparsed: list[str] = []
        for split, folder in self.split_folders.items():
            paths = list_files(os.path.join(dataset_dir, folder), (".png",))
            matched, bad = match_basenames(paths, self.name_regex)
            unparsed += bad
            records[split] = [
                Record(path, int(m[1]), int(m[3]) - 1, (int(m[1]), int(m[2])))
                for path, m in matched
            ]
        report_unparsed(name, unparsed, name_policy, self.expected_name)

        if train_ids == "cc":
            keep = read_id_list(os.path.join(dataset_dir, CC_ID_LIST))
            records["train"] = [r for r in records["train"] if r.pid in keep]
            if not records["train"]:
                raise DatasetLayoutError(
                    f"{name}: no training image belongs to the ids listed in "
                    f"'{os.path.join(dataset_dir, CC_ID_LIST)}' (ltcc_train_ids='cc')"
                )
        return build_splits(records["train"], records["query"], records["gallery"])
