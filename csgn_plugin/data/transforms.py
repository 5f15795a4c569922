"""Train and test image transforms by name (``data.transforms``): torchreid's and CLIP-ReID's.

torchreid builds its training pipeline from a list of names and silently ignores names it does
not know; this module builds the same pipeline, refuses unknown names, and adds the operations
CLIP-ReID trains with under torchreid-style names, so that a torchreid baseline and a CLIP-ReID
recipe are both one list of names:

* ``random_flip`` (torchreid): horizontal flip, p 0.5;
* ``random_crop`` (torchreid's ``Random2DTranslation``): with p 0.5, enlarge 1.125x and crop
  back to size at a random position;
* ``pad_crop`` (CLIP-ReID): zero-pad ``data.pad_crop_padding`` pixels on every side, then crop
  back to size at a random position (always);
* ``random_patch`` (torchreid's ``RandomPatch``): paste a patch of an earlier image;
* ``color_jitter`` (torchreid): brightness 0.2, contrast 0.15;
* ``random_erase`` (torchreid's ``RandomErasing``): with p 0.5 a rectangle (area 0.02-0.4,
  aspect 0.3-1/0.3 uniform) takes the normalisation mean's numbers;
* ``random_erase_cifar_mean`` (Simple-CCReID's ``RandomErasing``): the same operation with
  torchreid's and Zhong et al.'s own default fill, the CIFAR-10 mean (0.4914, 0.4822, 0.4465);
* ``random_erase_pixel`` (CLIP-ReID's use of timm's ``RandomErasing(mode='pixel')``): with
  p 0.5 a rectangle (area 0.02-1/3, aspect 0.3-1/0.3 log-uniform) takes N(0, 1) noise.

The order of the operations is fixed, whatever the order of the names (torchreid's rule): resize,
flip, crops, patch, colour jitter, to tensor, normalise, erasing. Both erasing operations act on
the normalised tensor, as in torchreid and CLIP-ReID (so torchreid's ``random_erase`` fills with
the mean's numbers in normalised space, not with the mean colour: that is torchreid's meaning and
it is kept). The resize interpolation is set separately for training and test
(``data.train_interpolation``, ``data.test_interpolation``) because CLIP-ReID trains with bicubic
and tests with bilinear resizing.

Randomness comes from the global ``random`` (torchreid's operations) and ``torch`` generators
(torchvision's and ours), which :class:`~csgn_plugin.data.samplers.SeededDataset` seeds per
sample: the augmentation of a sample is a function of its seed. The exception is torchreid's
``random_patch``, which pastes patches from a pool of images the same process has seen before.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence

import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from ..compat import torchreid_api
from ..errors import ConfigError

tr = torchreid_api()

TRANSFORMS = (
    "random_flip",
    "random_crop",
    "pad_crop",
    "random_patch",
    "color_jitter",
    "random_erase",
    "random_erase_cifar_mean",
    "random_erase_pixel",
)
INTERPOLATIONS = {
    "nearest": InterpolationMode.NEAREST,
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
}
# the erasing fill of Zhong et al.'s code, torchreid's and Simple-CCReID's RandomErasing default
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
_PIL_INTERPOLATIONS = {
    "nearest": Image.NEAREST,
    "bilinear": Image.BILINEAR,
    "bicubic": Image.BICUBIC,
}


class PixelRandomErasing:
    """Random erasing with per-pixel standard normal noise (timm's ``mode='pixel'``, one box).

    With probability ``p``: up to ``attempts`` times, draw an area fraction uniformly in
    ``scale`` and an aspect ratio (height / width) log-uniformly in ``ratio``; the first box
    that fits strictly inside the image is placed uniformly at random and filled with N(0, 1)
    values, one per channel and pixel. Meant for a normalised tensor, where N(0, 1) is the
    spread of a natural image. A box that never fits leaves the image unchanged.
    """

    def __init__(
        self,
        p: float = 0.5,
        scale: tuple[float, float] = (0.02, 1 / 3),
        ratio: tuple[float, float] = (0.3, 1 / 0.3),
        attempts: int = 10,
    ) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"PixelRandomErasing: p must be in [0, 1], got {p}")
        if not 0.0 < scale[0] <= scale[1] <= 1.0:
            raise ValueError(f"PixelRandomErasing: scale must satisfy 0 < lo <= hi <= 1: {scale}")
        if not 0.0 < ratio[0] <= ratio[1]:
            raise ValueError(f"PixelRandomErasing: ratio must satisfy 0 < lo <= hi: {ratio}")
        self.p = p
        self.scale = scale
        self.ratio = ratio
        self.attempts = attempts

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if torch.rand(()).item() >= self.p:
            return img
        channels, height, width = img.shape[-3:]
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(self.attempts):
            area = height * width * _uniform(*self.scale)
            aspect = math.exp(_uniform(log_lo, log_hi))
            box_h = int(round(math.sqrt(area * aspect)))
            box_w = int(round(math.sqrt(area / aspect)))
            if box_h < height and box_w < width:
                top = int(torch.randint(0, height - box_h + 1, ()))
                left = int(torch.randint(0, width - box_w + 1, ()))
                img = img.clone()
                noise = torch.randn(channels, box_h, box_w, dtype=img.dtype, device=img.device)
                img[..., top : top + box_h, left : left + box_w] = noise
                return img
        return img

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(p={self.p}, scale={self.scale}, ratio={self.ratio}, "
            f"attempts={self.attempts})"
        )


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * torch.rand(()).item()


def describe(pipeline: T.Compose) -> str:
    """One line naming a pipeline's operations (torchreid's have no readable repr)."""
    parts = [
        type(op).__name__ if type(op).__repr__ is object.__repr__ else repr(op).replace("\n", "")
        for op in pipeline.transforms
    ]
    return " -> ".join(parts)


def check_transform_names(names: str | Sequence[str]) -> list[str]:
    """``data.transforms`` as a list of lower-case names; an unknown name is refused."""
    names = [names] if isinstance(names, str) else list(names)
    names = [str(n).lower() for n in names]
    for name in names:
        if name not in TRANSFORMS:
            close = difflib.get_close_matches(name, TRANSFORMS, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(
                f"data.transforms: unknown transform '{name}'{hint} Available: {list(TRANSFORMS)}"
            )
    return names


def check_interpolation(key: str, name: str) -> None:
    """Refuse a resize interpolation we do not offer (``key``: the config key)."""
    if name not in INTERPOLATIONS:
        close = difflib.get_close_matches(str(name), INTERPOLATIONS, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(
            f"{key}: unknown interpolation '{name}'{hint} Available: {sorted(INTERPOLATIONS)}"
        )


def build_transforms(
    height: int,
    width: int,
    transforms: str | Sequence[str] = "random_flip",
    norm_mean: Sequence[float] | None = None,
    norm_std: Sequence[float] | None = None,
    train_interpolation: str = "bilinear",
    test_interpolation: str = "bilinear",
    pad_crop_padding: int = 10,
) -> tuple[T.Compose, T.Compose]:
    """The training and test pipelines (``Compose``), in the fixed order the module describes.

    ``norm_mean`` / ``norm_std`` None: ImageNet's (torchreid's default)."""
    names = check_transform_names(transforms)
    check_interpolation("data.train_interpolation", train_interpolation)
    check_interpolation("data.test_interpolation", test_interpolation)
    if pad_crop_padding < 0:
        raise ValueError(f"data.pad_crop_padding must be >= 0, got {pad_crop_padding}")
    if norm_mean is None or norm_std is None:
        norm_mean, norm_std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    normalize = T.Normalize(mean=list(norm_mean), std=list(norm_std))
    size = (height, width)

    train: list = [T.Resize(size, interpolation=INTERPOLATIONS[train_interpolation])]
    if "random_flip" in names:
        train.append(T.RandomHorizontalFlip(p=0.5))
    if "random_crop" in names:
        pil_mode = _PIL_INTERPOLATIONS[train_interpolation]
        train.append(tr.data.transforms.Random2DTranslation(height, width, interpolation=pil_mode))
    if "pad_crop" in names:
        train += [T.Pad(pad_crop_padding), T.RandomCrop(size)]
    if "random_patch" in names:
        train.append(tr.data.transforms.RandomPatch())
    if "color_jitter" in names:
        train.append(T.ColorJitter(brightness=0.2, contrast=0.15, saturation=0, hue=0))
    train += [T.ToTensor(), normalize]
    if "random_erase" in names:
        train.append(tr.data.transforms.RandomErasing(mean=list(norm_mean)))
    if "random_erase_cifar_mean" in names:
        train.append(tr.data.transforms.RandomErasing(mean=list(CIFAR_MEAN)))
    if "random_erase_pixel" in names:
        train.append(PixelRandomErasing())

    test = build_test_transform(height, width, norm_mean, norm_std, test_interpolation)
    return T.Compose(train), test


def build_test_transform(
    height: int,
    width: int,
    norm_mean: Sequence[float],
    norm_std: Sequence[float],
    interpolation: str,
) -> T.Compose:
    """Evaluation's pipeline: resize, to tensor, normalise (also what a checkpoint's extractor
    applies, from the input its spec records)."""
    check_interpolation("data.test_interpolation", interpolation)
    return T.Compose(
        [
            T.Resize((height, width), interpolation=INTERPOLATIONS[interpolation]),
            T.ToTensor(),
            T.Normalize(mean=list(norm_mean), std=list(norm_std)),
        ]
    )
