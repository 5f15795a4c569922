"""PRCC (Person Re-id under moderate Clothing Change), Yang et al., TPAMI 2019."""

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
from ._scan import check_choice, dataset_root, list_files, list_subdirs, match_basenames

CAMERAS = "ABC"


class PRCC(ClothesImageDataset):
    """PRCC: 221 people, three cameras; A and B share clothes, C shows another outfit.

    Layout under ``<root>/prcc/``::

        rgb/train/<pid>/<A|B|C>_*.jpg     camera = first letter of the file name
        rgb/val/<pid>/...                 (same structure; not used for training or testing)
        rgb/test/<A|B|C>/<pid>/*.jpg      camera = folder
        sketch/...                        the same tree with contour images (option)

    Train clothes key: pid for A/B, (pid, 'C') for C. Test: gallery = A, query = B and C; clothes
    id = 2 * label(pid) for A and B, 2 * label(pid) + 1 for C (label: rank of the pid among the
    test pids). So the SC filter keeps exactly the B queries and the CC filter the C queries.

    Single-shot evaluation (one gallery image per id, 10 seeded trials averaged) is switched on
    by the engine from ``cc_eval.single_shot``; the dataset is the same.

    Options: ``prcc_modality`` ``'rgb'`` (default) or ``'sketch'``; ``name_policy``.
    """

    dataset_dir = "prcc"
    protocols = ("sc", "cc")
    obtain = "PRCC is obtained from isee-ai.cn/~yangqize/clothing.html (request form)."
    official_counts = {
        "train": {"ids": 150, "images": 17896},
        "query": {"ids": 71, "images": 3873 + 3543},
        "gallery": {"ids": 71, "images": 3384},
        "all": {"ids": 221, "cameras": 3},
    }
    train_regex = re.compile(r"([ABC])_.*\.(jpe?g|png)", re.IGNORECASE)
    expected_name = "train/<pid>/<A|B|C>_*.jpg with <pid> a number"

    def __init__(
        self,
        root: str = "",
        prcc_modality: str = "rgb",
        name_policy: str = "fail",
        **kwargs: Any,
    ) -> None:
        check_choice("prcc_modality", prcc_modality, ("rgb", "sketch"))
        self.dataset_dir = dataset_root(root, self.dataset_dir)
        key = (type(self), self.dataset_dir, prcc_modality, name_policy)
        train, query, gallery = cached_parse(
            key, lambda: self._parse(self.dataset_dir, prcc_modality, name_policy)
        )
        super().__init__(train, query, gallery, **kwargs)

    def _parse(self, dataset_dir: str, modality: str, name_policy: str) -> tuple:
        name = type(self).__name__
        # sketches may be stored as png; rgb crops are jpg
        exts = (".jpg", ".jpeg", ".png") if modality == "sketch" else (".jpg", ".jpeg")
        tests = [os.path.join(modality, "test", c) for c in CAMERAS]
        check_layout(dataset_dir, [os.path.join(modality, "train"), *tests], name, self.obtain)
        unparsed: list[str] = []

        train_dir = os.path.join(dataset_dir, modality, "train")
        train = []
        for pid_dir in list_subdirs(train_dir):
            paths = list_files(os.path.join(train_dir, pid_dir), exts)
            if not pid_dir.isdigit():
                unparsed += paths or [os.path.join(train_dir, pid_dir)]
                continue
            pid = int(pid_dir)
            matched, bad = match_basenames(paths, self.train_regex)
            unparsed += bad
            for path, m in matched:
                cam = m[1].upper()
                train.append(
                    Record(path, pid, CAMERAS.index(cam), (pid, "C") if cam == "C" else pid)
                )

        test: dict[str, list[tuple[str, int]]] = {}
        for cam in CAMERAS:
            cam_dir = os.path.join(dataset_dir, modality, "test", cam)
            test[cam] = []
            for pid_dir in list_subdirs(cam_dir):
                paths = list_files(os.path.join(cam_dir, pid_dir), exts)
                if not pid_dir.isdigit():
                    unparsed += paths or [os.path.join(cam_dir, pid_dir)]
                    continue
                test[cam] += [(path, int(pid_dir)) for path in paths]
        report_unparsed(name, unparsed, name_policy, self.expected_name)
        if not any(test.values()):
            raise DatasetLayoutError(f"{name}: no test image under '{dataset_dir}/{modality}/test'")

        train_items, _, _ = build_splits(train, [], [])
        # the field's fixed test clothes ids (B shares A's outfit, C is the other one)
        label = {pid: i for i, pid in enumerate(sorted({p for v in test.values() for _, p in v}))}

        def items(cam: str) -> list:
            cid = CAMERAS.index(cam)
            return [(p, pid, cid, 0, 2 * label[pid] + (cam == "C")) for p, pid in test[cam]]

        return train_items, items("B") + items("C"), items("A")
