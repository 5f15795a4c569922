"""CCVID (clothes-changing video re-id, from the FVG gait data set), Gu et al., CVPR 2022."""

from __future__ import annotations

import os
import re
from typing import Any

from ..base import (
    DatasetLayoutError,
    Record,
    build_splits,
    cached_parse,
    check_layout,
    report_unparsed,
)
from ..video import ClothesVideoDataset
from ._scan import check_unique, dataset_root, list_files

TRACKLET_REGEX = re.compile(r"session(\d+)/(\d+)_(0*[1-9]\d*)")


class CCVID(ClothesVideoDataset):
    """CCVID: 226 people, 2,856 tracklets, 2-5 outfits per person.

    Layout under ``<root>/CCVID/``: ``train.txt``, ``query.txt``, ``gallery.txt`` with lines
    ``session<k>/<pid>_<walk> <pid> <clothes label>``; frames ``session<k>/<pid>_<walk>/*.jpg``
    (sorted by name). Camera id = walk - 1, + 12 in session3; clothes key = (pid, clothes label).
    A tracklet listed twice in one list, a missing or empty frame folder, a malformed line or a
    pid column that disagrees with the folder name is an error.

    Options: ``video_train_chunk_len`` (default 64), ``video_test_clip_len`` (8) and
    ``video_test_clip_stride`` (4), see :mod:`csgn_plugin.data.video`; ``name_policy``.
    torchreid's ``seq_len`` and ``sample_method`` come from ``VideoDataManager``.
    """

    dataset_dir = "CCVID"
    protocols = ("general", "sc", "cc")
    obtain = (
        "CCVID is public (Google Drive / Baidu links at github.com/guxinqian/Simple-CCReID): "
        "python tools/download.py ccvid --root <root> fetches and unpacks it, or unpack it "
        "so that <root>/CCVID/train.txt exists."
    )
    official_counts = {"all": {"ids": 226, "images": 2856}}
    official_note = "CCVID counts tracklets (shown in the images column)"
    expected_name = "session<k>/<pid>_<walk> (walk from 1)"

    def __init__(
        self,
        root: str = "",
        name_policy: str = "fail",
        video_train_chunk_len: int = 64,
        video_test_clip_len: int = 8,
        video_test_clip_stride: int = 4,
        **kwargs: Any,
    ) -> None:
        self.dataset_dir = dataset_root(root, type(self).dataset_dir)
        key = (type(self), self.dataset_dir, name_policy)
        train, query, gallery = cached_parse(key, lambda: self._parse(name_policy))
        super().__init__(
            train,
            query,
            gallery,
            video_train_chunk_len=video_train_chunk_len,
            video_test_clip_len=video_test_clip_len,
            video_test_clip_stride=video_test_clip_stride,
            **kwargs,
        )

    def _read_list(self, split: str, unparsed: list[str]) -> list[Record]:
        list_path = os.path.join(self.dataset_dir, f"{split}.txt")
        records, tracklets, missing, empty = [], [], [], []
        with open(list_path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                fields = line.split()
                if not fields:
                    continue
                if len(fields) != 3 or not fields[1].isdigit():
                    raise DatasetLayoutError(
                        f"CCVID: '{list_path}' line {lineno}: expected "
                        f"'session<k>/<pid>_<walk> <pid> <clothes label>', got '{line.strip()}'"
                    )
                rel, pid, clothes = fields[0].strip("/"), int(fields[1]), fields[2]
                m = TRACKLET_REGEX.fullmatch(rel)
                if m is None:
                    unparsed.append(f"{list_path}: {rel}")
                    continue
                if int(m[2]) != pid:
                    raise DatasetLayoutError(
                        f"CCVID: '{list_path}' line {lineno}: pid column {pid} disagrees with "
                        f"the tracklet name '{rel}'"
                    )
                tracklets.append(rel)
                folder = os.path.join(self.dataset_dir, *rel.split("/"))
                if not os.path.isdir(folder):
                    missing.append(folder)
                    continue
                frames = tuple(list_files(folder, (".jpg",)))
                if not frames:
                    empty.append(folder)
                    continue
                camid = int(m[3]) - 1 + (12 if int(m[1]) == 3 else 0)
                records.append(Record(frames, pid, camid, (pid, clothes)))
        check_unique("CCVID", f"'{list_path}'", tracklets)
        for bad, what in ((missing, "missing"), (empty, "without *.jpg frames")):
            if bad:
                raise DatasetLayoutError(
                    f"CCVID: {len(bad)} tracklet folder(s) listed in '{list_path}' are {what}; "
                    f"first: {', '.join(repr(p) for p in bad[:5])}"
                )
        return records

    def _parse(self, name_policy: str) -> tuple:
        splits = ("train", "query", "gallery")
        check_layout(self.dataset_dir, [f"{s}.txt" for s in splits], "CCVID", self.obtain)
        unparsed: list[str] = []
        records = {split: self._read_list(split, unparsed) for split in splits}
        report_unparsed("CCVID", unparsed, name_policy, self.expected_name)
        return build_splits(records["train"], records["query"], records["gallery"])
