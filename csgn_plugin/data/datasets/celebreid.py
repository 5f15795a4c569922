"""Celeb-reID and Celeb-reID-light (celebrities from street snaps), Huang et al., 2019/2020."""

from __future__ import annotations

import re

from ..base import Record
from .common import FlatFolderDataset


class CelebReID(FlatFolderDataset):
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
        "github.com/Huang-3/Celeb-reID); unpack it so that <root>/Celeb-reID/train exists, or "
        "pass the archive to python tools/download.py celebreid --root <root> --archive FILE."
    )
    official_counts = {
        "train": {"ids": 632, "images": 20208},
        "query": {"ids": 420, "images": 2972},
        "gallery": {"ids": 420, "images": 11006},
    }
    name_regex = re.compile(r"(\d+)_(\d+)_([^_]+)\.jpg")
    expected_name = "<pid>_<n>_<x>.jpg (e.g. 12_31_0.jpg)"

    def record(self, split: str, path: str, match: re.Match) -> Record:
        # camera = first digit of n; each image is its own outfit
        return Record(path, int(match[1]), int(match[2][0]), path)


class CelebReIDLight(CelebReID):
    """Celeb-reID-light: the smaller release (``<root>/Celeb-reID-light/``), same layout."""

    dataset_dir = "Celeb-reID-light"
    obtain = CelebReID.obtain.replace("Celeb-reID/train", "Celeb-reID-light/train").replace(
        "download.py celebreid ", "download.py celebreid_light "
    )
    official_counts = {
        "train": {"ids": 490, "images": 9021},
        "query": {"ids": 100, "images": 887},
        "gallery": {"ids": 100, "images": 934},
    }
