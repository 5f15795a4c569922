"""DeepChange, Xu and Zhu, 2021: long-term clothes changes over a year, 17 outdoor cameras."""

from __future__ import annotations

import os
import re

from ..base import (
    DatasetLayoutError,
    Record,
    build_splits,
    check_layout,
    report_unparsed,
)
from ._scan import check_unique, list_files, match_basenames
from .common import EvalSplitDataset


def read_bbox_list(path: str) -> dict[str, str]:
    """``<image name>,<tracklet id>`` lines -> {basename: tracklet id}; a name twice is an error."""
    tracklets: dict[str, str] = {}
    names = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            fields = [s.strip() for s in line.split(",")]
            if len(fields) != 2 or not fields[0] or not fields[1]:
                raise DatasetLayoutError(
                    f"DeepChange: '{path}' line {lineno}: expected '<image name>,<tracklet id>', "
                    f"got '{line}'"
                )
            base = os.path.basename(fields[0].replace("\\", "/"))
            names.append(base)
            tracklets[base] = fields[1]
    check_unique("DeepChange", f"'{path}'", names)
    return tracklets


def _tracklet_order(tracklet: str) -> tuple:
    # numeric tracklet ids sort as numbers, anything else after them as text
    return (0, int(tracklet), "") if tracklet.isdigit() else (1, 0, tracklet)


class DeepChange(EvalSplitDataset):
    """DeepChange: 178,407 boxes of 1,121 people in 17 cameras over 12 months.

    Layout under ``<root>/DeepChangeDataset/``: ``train-set/``, ``val-set-query/``,
    ``val-set-gallery/``, ``test-set-query/``, ``test-set-gallery/``, each with a list
    ``<folder>-bbox.txt`` beside it (lines ``<image name>,<tracklet id>``). Names have six
    ``_``-separated fields ``P<pid>_C<cam>_<day>_<hour>_<x>_<y>.jpg``; clothes key = (pid, day).

    Training camera id = C - 1. In query and gallery the **tracklet id takes the camera's place**
    (relabelled to 0..T-1 over query and gallery together), so a same-camera match from another
    tracklet counts, as in the original evaluation. Every listed image must exist and every image
    must be listed (only the lists of the folders in use are read).

    Options: ``eval_split`` ``'test'`` (default) or ``'val'``; ``name_policy``.
    """

    dataset_dir = "DeepChangeDataset"
    protocols = ("general",)
    obtain = (
        "DeepChange is released under a signed agreement (see github.com/PengBoXiangShang/"
        "deepchange); unpack it so that <root>/DeepChangeDataset/train-set exists."
    )
    official_counts = {"all": {"ids": 1121, "cameras": 17}}
    official_note = "official totals cover all five folders: 178,407 boxes, 1,121 ids, 17 cameras"
    name_regex = re.compile(r"P(\d+)_C(0*[1-9]\d*)_([^_]+)_([^_]+)_([^_]+)_([^_.]+)\.jpg")
    expected_name = "P<pid>_C<cam>_<day>_<hour>_<x>_<y>.jpg"

    def _parse(self, eval_split: str, name_policy: str) -> tuple:
        name = type(self).__name__
        folders = {
            "train": "train-set",
            "query": f"{eval_split}-set-query",
            "gallery": f"{eval_split}-set-gallery",
        }
        required = [*folders.values(), *(f"{f}-bbox.txt" for f in folders.values())]
        check_layout(self.dataset_dir, required, name, self.obtain)

        parsed: dict[str, list] = {}
        unparsed: list[str] = []
        for split, folder in folders.items():
            folder_dir = os.path.join(self.dataset_dir, folder)
            list_path = f"{folder_dir}-bbox.txt"
            tracklets = read_bbox_list(list_path)
            paths = list_files(folder_dir, (".jpg",))
            on_disk = {os.path.basename(p) for p in paths}
            for missing, what in (
                (sorted(set(tracklets) - on_disk), f"listed in '{list_path}' but not found in"),
                (sorted(on_disk - set(tracklets)), f"not listed in '{list_path}' but found in"),
            ):
                if missing:
                    examples = ", ".join(f"'{m}'" for m in missing[:5])
                    raise DatasetLayoutError(
                        f"{name}: {len(missing)} image(s) {what} '{folder_dir}'; first: {examples}"
                    )
            matched, bad = match_basenames(paths, self.name_regex)
            unparsed += bad
            parsed[split] = [(path, m, tracklets[os.path.basename(path)]) for path, m in matched]
        report_unparsed(name, unparsed, name_policy, self.expected_name)

        train = [
            Record(p, int(m[1]), int(m[2]) - 1, (int(m[1]), m[3])) for p, m, _ in parsed["train"]
        ]
        test_tracklets = [t for split in ("query", "gallery") for _, _, t in parsed[split]]
        tracklet_id = {t: i for i, t in enumerate(sorted(set(test_tracklets), key=_tracklet_order))}

        def test_records(split: str) -> list[Record]:
            return [
                Record(p, int(m[1]), tracklet_id[t], (int(m[1]), m[3])) for p, m, t in parsed[split]
            ]

        return build_splits(train, test_records("query"), test_records("gallery"))
