"""The clothes-changing datasets, by the name torchreid knows them under."""

from __future__ import annotations

from .ccvid import CCVID
from .celebreid import CelebReID, CelebReIDLight
from .deepchange import DeepChange
from .last import LaST
from .ltcc import LTCC
from .prcc import PRCC
from .synthcc import SynthCC
from .vcclothes import VCClothes, VCClothesCC, VCClothesSC

IMAGE_DATASETS: dict = {
    "ltcc": LTCC,
    "prcc": PRCC,
    "vcclothes": VCClothes,
    "vcclothes_sc": VCClothesSC,
    "vcclothes_cc": VCClothesCC,
    "deepchange": DeepChange,
    "last": LaST,
    "celebreid": CelebReID,
    "celebreid_light": CelebReIDLight,
    "synthcc": SynthCC,
}
VIDEO_DATASETS: dict = {
    "ccvid": CCVID,
}
