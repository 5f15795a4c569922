"""LaST (Large-Scale Spatio-Temporal person re-id), Shu et al., TCSVT 2021."""

from __future__ import annotations

import os
import re

from ..base import (
    Record,
    build_splits,
    check_layout,
    report_unparsed,
)
from ._scan import (
    check_unique,
    list_files,
    list_subdirs,
    match_basenames,
)
from .common import EvalSplitDataset


def _nested_files(directory: str) -> list[str]:
    """The ``*.jpg`` files of every ``<pid>/`` folder directly under ``directory``."""
    return [
        p
        for sub in list_subdirs(directory)
        for p in list_files(os.path.join(directory, sub), (".jpg",))
    ]


class LaST(EvalSplitDataset):
    """LaST: movie frames, 10,860 people; train 5,000 ids / 71,248 images.

    Layout under ``<root>/last/``::

        train/<pid>/*.jpg
        val/query/*.jpg     val/gallery/<pid>/*.jpg
        test/query/*.jpg    test/gallery/<pid>/*.jpg

    Names are ``_``-separated; the first field is the pid, in training the last is the outfit
    (train clothes key = (pid, outfit)); in query and gallery the clothes id is the pid. Every image
    gets its own camera id (train 0..N-1; query and gallery one scope, 0..Nq+Ng-1), so nothing is
    removed as same-camera, as in the official evaluation. Basenames must be unique per split.

    Options: ``eval_split`` ``'test'`` (default) or ``'val'``; ``name_policy``.
    """

    dataset_dir = "last"
    protocols = ("general",)
    obtain = (
        "LaST is public for academic use (Google Drive / Baidu links at github.com/shuxjweb/last): "
        "python tools/download.py last --root <root> fetches and unpacks it, or unpack it so "
        "that <root>/last/train exists."
    )
    official_counts = {
        "train": {"ids": 5000, "images": 71248},
        "query": {"images": 10176},
        "gallery": {"images": 125353},
    }
    official_note = "query/gallery counts are those of the test split (eval_split='test')"
    train_regex = re.compile(r"(\d+)_.*_(\d+)\.jpg")
    test_regex = re.compile(r"(\d+)_.*\.jpg")
    expected_name = "<pid>_..._<outfit>.jpg (train) / <pid>_....jpg (query, gallery)"

    def _parse(self, eval_split: str, name_policy: str) -> tuple:
        name = type(self).__name__
        query_dir = os.path.join(eval_split, "query")
        gallery_dir = os.path.join(eval_split, "gallery")
        check_layout(self.dataset_dir, ["train", query_dir, gallery_dir], name, self.obtain)

        train_paths = _nested_files(os.path.join(self.dataset_dir, "train"))
        query_paths = list_files(os.path.join(self.dataset_dir, query_dir), (".jpg",))
        gallery_paths = _nested_files(os.path.join(self.dataset_dir, gallery_dir))
        for where, paths in (("train", train_paths), (gallery_dir, gallery_paths)):
            check_unique(
                name,
                f"'{os.path.join(self.dataset_dir, where)}'",
                [os.path.basename(p) for p in paths],
            )

        train_m, bad_train = match_basenames(train_paths, self.train_regex)
        query_m, bad_query = match_basenames(query_paths, self.test_regex)
        gallery_m, bad_gallery = match_basenames(gallery_paths, self.test_regex)
        report_unparsed(name, bad_train + bad_query + bad_gallery, name_policy, self.expected_name)

        train = [
            Record(p, int(m[1]), i, (int(m[1]), int(m[2]))) for i, (p, m) in enumerate(train_m)
        ]
        test = [Record(p, int(m[1]), i, int(m[1])) for i, (p, m) in enumerate(query_m + gallery_m)]
        return build_splits(train, test[: len(query_m)], test[len(query_m) :])
