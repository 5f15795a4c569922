"""VC-Clothes (virtual, rendered in GTA5), Wan et al., CVPR-W 2020, and its camera-pair variants."""

from __future__ import annotations

import re

from ..base import Record
from .common import FlatFolderDataset


class VCClothes(FlatFolderDataset):
    """VC-Clothes: 512 ids, 4 cameras, 19,060 images.

    Layout under ``<root>/VC-Clothes/``: ``train/``, ``query/``, ``gallery/``, ``*.jpg`` named
    ``0001-02-03-04.jpg`` = pid, camera (1-4), outfit, counter. The released files use hyphens,
    the official page underscores: both are accepted, also mixed. Clothes key = (pid, outfit).

    ``eval_cameras`` (class attribute) restricts query and gallery to those cameras (1-based);
    training always uses every camera. Option: ``name_policy``.
    """

    dataset_dir = "VC-Clothes"
    protocols = ("general", "sc", "cc")
    eval_cameras: tuple = (1, 2, 3, 4)
    obtain = (
        "VC-Clothes is public (Google Drive / Baidu links on the VC-Clothes project page, "
        "wanfb.github.io/dataset.html); unpack it so that <root>/VC-Clothes/train exists, or "
        "pass the archive to python tools/download.py vcclothes --root <root> --archive FILE."
    )
    official_counts = {
        "train": {"ids": 256, "images": 9449},
        "query": {"ids": 256, "images": 1020},
        "gallery": {"ids": 256, "images": 8591},
        "all": {"ids": 512, "images": 19060, "cameras": 4},
    }
    name_regex = re.compile(r"(\d+)[-_](0*[1-9]\d*)[-_](\d+)[-_](\d+)\.jpg")
    expected_name = "<pid>-<camera>-<outfit>-<counter>.jpg (or with '_'; e.g. 0001-02-03-04.jpg)"

    def record(self, split: str, path: str, match: re.Match) -> Record | None:
        camera = int(match[2])
        if split != "train" and camera not in self.eval_cameras:
            return None
        return Record(path, int(match[1]), camera - 1, (int(match[1]), int(match[3])))


class VCClothesSC(VCClothes):
    """VC-Clothes same-clothes setting: query and gallery from cameras 2 and 3 (general)."""

    protocols = ("general",)
    eval_cameras = (2, 3)
    official_counts = {"train": VCClothes.official_counts["train"]}


class VCClothesCC(VCClothes):
    """VC-Clothes clothes-changing setting: query and gallery from cameras 3 and 4 (general)."""

    protocols = ("general",)
    eval_cameras = (3, 4)
    official_counts = {"train": VCClothes.official_counts["train"]}
