"""The per-image transform pipelines of ``transforms.py``, applied to a whole batch at once.

A batch of images already decoded and resized (uint8, ``image_cache.py``: the pipeline's first
step, done once) goes through the rest of the pipeline on the device it lives on: horizontal
flip, zero padding and random crop, to float and normalisation, random erasing (torchreid's
mean-filled box and the pixel-noise box). The semantics are the pipeline's own, read from its
operations (probabilities, padding, areas, aspect ratios, attempts, mean and std):

* flip and crop are one gather: the same offsets give the same pixels as PIL's flip, pad and
  crop; ``/ 255`` then ``(x - mean) / std`` are the same float32 operations as ``ToTensor`` and
  ``Normalize``, so an image without erasing equals the PIL path's bit for bit;
* each erasing box is drawn as the per-image operation draws it (the probability, up to N
  attempts of an area and an aspect ratio until the box fits, a uniform position), vectorised.

Randomness: the numbers of a batch come from one numpy generator seeded by the batch's sample
seeds (the samplers' ``(seed, epoch, position)``), the pixel noise from a generator on the
device seeded from it. A batch is therefore a function of the sampler's stream alone: a resumed
run gets the batches of the uninterrupted one. (The numbers differ from the per-image path's,
which seeds each image on its own; the distributions are the same.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from ..compat import torchreid_api
from .transforms import PixelRandomErasing

__all__ = ["BatchAugmentation", "EraseSpec", "batch_augmentation", "to_device"]


@dataclass(frozen=True)
class EraseSpec:
    """One random-erasing operation: with probability ``p``, up to ``attempts`` draws of an area
    fraction (uniform in ``scale``) and an aspect ratio h / w (uniform in ``ratio``, or
    log-uniform); the first box strictly smaller than the image is placed uniformly and filled
    with ``fill`` (one value per channel) or, when ``fill`` is None, N(0, 1) noise per value."""

    p: float
    scale: tuple[float, float]
    ratio: tuple[float, float]
    log_ratio: bool
    attempts: int
    fill: Optional[tuple[float, ...]]


@dataclass(frozen=True)
class BatchPlan:
    """The random numbers of one batch (numpy, host): flips, crop offsets, erasing boxes
    (top, left, height, width per operation; height 0 = not erased) and the noise seed."""

    flip: np.ndarray
    top: np.ndarray
    left: np.ndarray
    boxes: tuple[np.ndarray, ...]  # per erasing operation: (B, 4) int64
    noise_seed: int


class BatchAugmentation:
    """A pipeline's operations after its resize, for a batch (see the module docstring)."""

    def __init__(
        self,
        size: tuple[int, int],
        interpolation: str,
        mean: Sequence[float],
        std: Sequence[float],
        flip_p: float = 0.0,
        pad: Optional[int] = None,
        erasing: Sequence[EraseSpec] = (),
    ) -> None:
        self.size = tuple(size)
        self.interpolation = interpolation
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.flip_p = flip_p
        self.pad = pad  # None: no crop
        self.erasing = tuple(erasing)
        self._noise: dict[torch.device, torch.Generator] = {}
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor, list]] = {}

    @property
    def random(self) -> bool:
        """Whether the pipeline draws anything (training) or only normalises (test)."""
        return self.flip_p > 0 or self.pad is not None or bool(self.erasing)

    # ------------------------------------------------------------------ random numbers
    def draw(self, seeds: Sequence[int]) -> BatchPlan:
        """The batch's random numbers from its sample seeds."""
        rng = np.random.default_rng([int(s) for s in seeds])
        batch = len(seeds)
        height, width = self.size
        flip = rng.random(batch) < self.flip_p
        if self.pad is None:
            top = left = np.zeros(batch, dtype=np.int64)
        else:  # RandomCrop of the padded image: offsets uniform in [0, 2 pad]
            top = rng.integers(0, 2 * self.pad + 1, batch)
            left = rng.integers(0, 2 * self.pad + 1, batch)
        boxes = tuple(_draw_boxes(rng, spec, batch, height, width) for spec in self.erasing)
        return BatchPlan(flip, top, left, boxes, int(rng.integers(2**62)))

    # ------------------------------------------------------------------ the batch
    def __call__(self, images: torch.Tensor, seeds: Optional[Sequence[int]] = None) -> torch.Tensor:
        """uint8 (B, 3, H, W) at the pipeline's size -> normalised float32 (B, 3, H, W), on the
        images' device; ``seeds`` (one per image) are needed when the pipeline is random."""
        if tuple(images.shape[-2:]) != self.size or images.dtype != torch.uint8:
            raise ValueError(
                f"expected uint8 images of {self.size}, got {images.dtype} {tuple(images.shape)}"
            )
        if not self.random:
            return self._normalise(images)
        if seeds is None or len(seeds) != len(images):
            raise ValueError("a random pipeline needs one seed per image")
        return self.apply(images, self.draw(seeds))

    def apply(self, images: torch.Tensor, plan: BatchPlan) -> torch.Tensor:
        """The pipeline with the random numbers of ``plan``."""
        device = images.device
        # the batch's numbers in one host-to-device copy: flip, top, left, then 4 per box
        columns = [plan.flip, plan.top, plan.left, *(b.T for b in plan.boxes)]
        numbers = to_device(torch.from_numpy(np.vstack(columns).T.astype(np.int64)), device)
        if self.flip_p > 0 or self.pad is not None:
            flip, top, left = numbers[:, 0].bool(), numbers[:, 1], numbers[:, 2]
            images = flip_crop(images, flip, top, left, self.pad or 0)
        out = self._normalise(images)
        mean, std, fills = self._constants(device)
        for i, (spec, boxes) in enumerate(zip(self.erasing, plan.boxes)):
            if not boxes[:, 2].any():
                continue
            mask = box_mask(numbers[:, 3 + 4 * i : 7 + 4 * i], *self.size)
            if spec.fill is None:
                generator = self._noise.get(device)
                if generator is None:
                    generator = self._noise[device] = torch.Generator(device=device)
                generator.manual_seed(plan.noise_seed)
                if device.type == "cpu":
                    # a CPU pays for every normal number: draw the erased pixels' only (CLIP-
                    # ReID's erasing covers under a tenth of a batch on average); a GPU draws the
                    # whole batch at no cost and keeps static shapes
                    mask = mask.expand_as(out)
                    noise = torch.randn(int(mask.sum()), generator=generator)
                    out = out.masked_scatter(mask, noise)
                    continue
                fill = torch.randn(out.shape, generator=generator, device=device)
            else:
                fill = fills[i]
            out = torch.where(mask, fill, out)
        return out

    def _constants(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, list]:
        """Mean, std and erasing fills on ``device``, made once (a tensor built from Python
        numbers on a GPU is a synchronous copy)."""
        if device not in self._on_device:
            mean = torch.tensor(self.mean).view(1, -1, 1, 1).to(device)
            std = torch.tensor(self.std).view(1, -1, 1, 1).to(device)
            fills = [
                None if spec.fill is None else torch.tensor(spec.fill).view(1, -1, 1, 1).to(device)
                for spec in self.erasing
            ]
            self._on_device[device] = (mean, std, fills)
        return self._on_device[device]

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        # ToTensor's and Normalize's float32 operations, in their order
        mean, std, _ = self._constants(images.device)
        return images.float().div(255).sub_(mean).div_(std).contiguous()


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device``. To a GPU through pinned memory: a copy from pageable memory
    would first wait for all the work queued on the device (the previous training step)."""
    if device.type != "cuda":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


def flip_crop(
    images: torch.Tensor, flip: torch.Tensor, top: torch.Tensor, left: torch.Tensor, pad: int
) -> torch.Tensor:
    """Per image: horizontal flip where ``flip``, zero padding of ``pad`` pixels, crop back to
    the size at (``top``, ``left``) of the padded image; one gather for the batch. Flipping
    commutes with a symmetric padding, so a flipped image reads the padded one mirrored."""
    batch, _, height, width = images.shape
    if pad:
        images = F.pad(images, (pad, pad, pad, pad))
    rows = top.view(-1, 1) + torch.arange(height, device=images.device)
    cols = left.view(-1, 1) + torch.arange(width, device=images.device)
    cols = torch.where(flip.view(-1, 1), width + 2 * pad - 1 - cols, cols)
    index = torch.arange(batch, device=images.device).view(-1, 1, 1)
    # advanced indices around a slice: (B, H, W) first, channels last
    picked = images[index, :, rows.view(batch, height, 1), cols.view(batch, 1, width)]
    return picked.permute(0, 3, 1, 2)


def box_mask(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, 1, H, W) bool: inside each image's box (top, left, height, width)."""
    rows = torch.arange(height, device=boxes.device).view(1, -1)
    cols = torch.arange(width, device=boxes.device).view(1, -1)
    top, left, box_h, box_w = (boxes[:, i : i + 1] for i in range(4))
    inside_rows = (rows >= top) & (rows < top + box_h)
    inside_cols = (cols >= left) & (cols < left + box_w)
    return (inside_rows[:, None, :, None] & inside_cols[:, None, None, :]).view(
        -1, 1, height, width
    )


def _draw_boxes(
    rng: np.random.Generator, spec: EraseSpec, batch: int, height: int, width: int
) -> np.ndarray:
    """(B, 4) boxes (top, left, height, width) as ``spec`` draws them; height 0 = no box."""
    erase = rng.random(batch) < spec.p
    area = height * width * rng.uniform(spec.scale[0], spec.scale[1], (batch, spec.attempts))
    if spec.log_ratio:
        log_lo, log_hi = math.log(spec.ratio[0]), math.log(spec.ratio[1])
        aspect = np.exp(rng.uniform(log_lo, log_hi, (batch, spec.attempts)))
    else:
        aspect = rng.uniform(spec.ratio[0], spec.ratio[1], (batch, spec.attempts))
    box_h = np.round(np.sqrt(area * aspect)).astype(np.int64)  # round half to even, as round()
    box_w = np.round(np.sqrt(area / aspect)).astype(np.int64)
    fits = (box_h < height) & (box_w < width)
    first = fits.argmax(axis=1)  # the first attempt that fits
    rows = np.arange(batch)
    box_h, box_w = box_h[rows, first], box_w[rows, first]
    chosen = erase & fits.any(axis=1)
    # positions uniform over every place the box fits (inclusive bounds)
    top = np.floor(rng.random(batch) * (height - box_h + 1)).astype(np.int64)
    left = np.floor(rng.random(batch) * (width - box_w + 1)).astype(np.int64)
    boxes = np.stack([top, left, box_h, box_w], axis=1)
    boxes[~chosen] = 0
    return boxes


def batch_augmentation(pipeline: T.Compose) -> Optional[BatchAugmentation]:
    """The batch form of a pipeline built by ``transforms.build_transforms`` (training or test),
    or None when it holds an operation this module does not implement (torchreid's
    ``random_crop``, ``random_patch``, ``color_jitter``): that pipeline runs per image."""
    ops = list(pipeline.transforms)
    if not ops or not isinstance(ops[0], T.Resize) or len(ops[0].size) != 2:
        return None
    size = tuple(int(v) for v in ops[0].size)
    interpolation = _interpolation_name(ops[0].interpolation)
    if interpolation is None:
        return None
    tr = torchreid_api()
    flip_p, pad, erasing = 0.0, None, []
    mean = std = None
    position = 1
    while position < len(ops):
        op = ops[position]
        if isinstance(op, T.RandomHorizontalFlip) and mean is None:
            flip_p = float(op.p)
        elif isinstance(op, T.Pad) and mean is None:
            crop = ops[position + 1] if position + 1 < len(ops) else None
            if not _is_symmetric_zero_pad_then_crop(op, crop, size):
                return None
            pad = int(op.padding)
            position += 1  # the crop
        elif isinstance(op, T.ToTensor) and mean is None:
            pass
        elif isinstance(op, T.Normalize) and mean is None:
            mean, std = list(op.mean), list(op.std)
        elif isinstance(op, tr.data.transforms.RandomErasing) and mean is not None:
            erasing.append(
                EraseSpec(
                    p=float(op.probability),
                    scale=(float(op.sl), float(op.sh)),
                    ratio=(float(op.r1), 1.0 / float(op.r1)),
                    log_ratio=False,
                    attempts=100,  # torchreid's fixed number of attempts
                    fill=tuple(float(v) for v in op.mean),
                )
            )
        elif isinstance(op, PixelRandomErasing) and mean is not None:
            erasing.append(
                EraseSpec(
                    p=float(op.p),
                    scale=tuple(op.scale),
                    ratio=tuple(op.ratio),
                    log_ratio=True,
                    attempts=int(op.attempts),
                    fill=None,
                )
            )
        else:
            return None
        position += 1
    if mean is None:
        return None
    return BatchAugmentation(size, interpolation, mean, std, flip_p, pad, erasing)


def _interpolation_name(mode: InterpolationMode) -> Optional[str]:
    names = {
        InterpolationMode.NEAREST: "nearest",
        InterpolationMode.BILINEAR: "bilinear",
        InterpolationMode.BICUBIC: "bicubic",
    }
    return names.get(mode)


def _is_symmetric_zero_pad_then_crop(pad: T.Pad, crop: object, size: tuple[int, int]) -> bool:
    return (
        isinstance(pad.padding, int)
        and pad.fill == 0
        and pad.padding_mode == "constant"
        and isinstance(crop, T.RandomCrop)
        and tuple(crop.size) == size
        and crop.padding is None
    )
