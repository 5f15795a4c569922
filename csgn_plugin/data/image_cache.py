"""Images decoded once: each split's images read, decoded and resized a single time, kept as
uint8, and served by loaders that do the rest of the pipeline on the whole batch
(``batch_augment.py``).

Every transform pipeline here starts with a deterministic resize to the model's input (at the
split's interpolation); everything after it is cheap on a batch. A split's images are therefore
decoded once - through the dataset's own ``__getitem__`` with the resize as its transform, so
the data package's image reader (RGBA composited on black, 16-bit images scaled, the unreadable
image policy and its stand-in images) applies unchanged - in parallel DataLoader workers, into
one ``(N, 3, H, W)`` uint8 tensor (N x 3 x H x W bytes). Where it goes (``data.cache``):

1. the training device, while the splits fit ``data.cache_device_gb``;
2. otherwise host memory (pinned when CUDA is present, so that batches copy asynchronously),
   while they fit ``data.cache_host_gb``;
3. otherwise nowhere: the split keeps the per-image loader.

``'auto'`` caches on CUDA only (the CPU jobs keep the per-image path and its random numbers),
``'on'`` caches on any device, ``'off'`` never. A pipeline with an operation the batch path does
not implement keeps the per-image loader too.

The training loader follows the epoch sampler's ``(index, seed)`` stream exactly as a DataLoader
would (whole batches, the last partial one dropped), so streaming, resuming mid-epoch and DDP
sharding behave as with the per-image loader.
"""

from __future__ import annotations

import copy
import itertools
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch.utils.data import DataLoader
from torchvision import transforms as T
from torchvision.transforms.functional import pil_to_tensor

from ..progress import Progress, get_logger
from .batch_augment import BatchAugmentation, to_device
from .transforms import INTERPOLATIONS

__all__ = [
    "CACHE_MODES",
    "CacheBudget",
    "CacheOptions",
    "CachedEvalLoader",
    "CachedTrainLoader",
    "DecodedImages",
    "decode_split",
    "image_bytes",
]

CACHE_MODES = ("auto", "on", "off")
_DECODE_BATCH = 64


@dataclass(frozen=True)
class CacheOptions:
    """The ``data.cache*`` keys (built by ``builders.cache_options``)."""

    mode: str  # 'auto' (CUDA only), 'on', 'off'
    device_gb: float  # decoded images kept on the training device, at most
    host_gb: float  # then in host memory, at most


def image_bytes(count: int, height: int, width: int) -> int:
    """Bytes of ``count`` decoded RGB images of ``height`` x ``width`` (uint8)."""
    return count * 3 * height * width


class CacheBudget:
    """Where the next split's decoded images go: the training device while its budget lasts,
    then host memory (pinned with CUDA), then nowhere. On a CPU the training device is host
    memory and only the host budget counts."""

    def __init__(self, options: CacheOptions, device: torch.device) -> None:
        self.device = device
        cuda = device.type == "cuda"
        self.tiers: list[tuple[torch.device, bool, float]] = []
        if cuda:
            self.tiers.append((device, False, options.device_gb * 1e9))
        self.tiers.append((torch.device("cpu"), cuda, options.host_gb * 1e9))

    @staticmethod
    def enabled(options: CacheOptions, device: torch.device) -> bool:
        return options.mode == "on" or (options.mode == "auto" and device.type == "cuda")

    def place(self, nbytes: int) -> Optional[tuple[torch.device, bool]]:
        """(storage device, pinned) for ``nbytes`` more, taken from the first tier they fit."""
        for i, (where, pinned, left) in enumerate(self.tiers):
            if nbytes <= left:
                self.tiers[i] = (where, pinned, left - nbytes)
                return where, pinned
        return None


class DecodedImages:
    """One split decoded: ``images[k]`` (N, 3, H, W) uint8 per interpolation asked for, and the
    other fields of every item as the dataset gives them (pid, camid, impath, clothes_id,
    unreadable_path ...): integers as tensors, strings as lists."""

    def __init__(self, images: list[torch.Tensor], fields: dict[str, Any]) -> None:
        self.images = images
        self.fields = fields

    def __len__(self) -> int:
        return self.images[0].shape[0]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() for t in self.images)

    def items(self, indices: Sequence[int], which: int, device: torch.device) -> dict[str, Any]:
        """The batch of ``indices``: uint8 images (copy ``which``) on ``device``, the fields as a
        DataLoader collates them (tensors on the host, strings as lists)."""
        store = self.images[which]
        host_index = torch.as_tensor(indices, dtype=torch.long)
        if store.device.type == "cpu":
            images = _gather(store, host_index, store.is_pinned()).to(device, non_blocking=True)
        else:
            images = store.index_select(0, to_device(host_index, store.device))
        batch: dict[str, Any] = {"img": images}
        pin = device.type == "cuda"  # the labels copy to the GPU without waiting, as pinned ones
        for key, values in self.fields.items():
            if torch.is_tensor(values):
                batch[key] = _gather(values, host_index, pin)
            else:
                batch[key] = [values[i] for i in indices]
        return batch


def _gather(values: torch.Tensor, index: torch.Tensor, pinned: bool) -> torch.Tensor:
    """``values[index]`` (host), written straight into pinned memory if ``pinned``."""
    out = torch.empty((len(index), *values.shape[1:]), dtype=values.dtype, pin_memory=pinned)
    return torch.index_select(values, 0, index, out=out)


class _ResizeEach:
    """PIL image -> one uint8 (3, H, W) tensor per interpolation (the pipelines' first step)."""

    def __init__(self, size: tuple[int, int], interpolations: Sequence[str]) -> None:
        self.resizes = [T.Resize(size, interpolation=INTERPOLATIONS[i]) for i in interpolations]

    def __call__(self, img: Any) -> tuple[torch.Tensor, ...]:
        return tuple(pil_to_tensor(resize(img)) for resize in self.resizes)


def decode_split(
    dataset: Any,
    size: tuple[int, int],
    interpolations: Sequence[str],
    storage: torch.device,
    pinned: bool,
    workers: int,
    what: str,
) -> DecodedImages:
    """Decode every item of ``dataset`` (its ``data``, in order) once, resized to ``size`` with
    each of ``interpolations``, into uint8 tensors on ``storage`` (pinned host memory if
    ``pinned``), reading through the dataset's own ``__getitem__`` in ``workers`` processes."""
    plain = copy.copy(dataset)
    plain.transform = _ResizeEach(size, interpolations)
    count = len(plain)
    height, width = size
    images = [
        torch.empty((count, 3, height, width), dtype=torch.uint8, device=storage, pin_memory=pinned)
        for _ in interpolations
    ]
    loader = DataLoader(
        plain,
        batch_size=_DECODE_BATCH,
        shuffle=False,
        num_workers=workers,
        generator=torch.Generator(),  # not torch's global one (see the data manager)
    )
    gathered: dict[str, list] = {}
    start = 0
    with Progress(count, f"decoding {what}", "img") as progress:
        for batch in loader:
            decoded = batch.pop("img")
            stop = start + len(decoded[0])
            for store, part in zip(images, decoded):
                store[start:stop].copy_(part)
            for key, values in batch.items():
                gathered.setdefault(key, []).append(values)
            progress.update(stop - start)
            start = stop
    fields: dict[str, Any] = {}
    for key, parts in gathered.items():
        if torch.is_tensor(parts[0]):
            fields[key] = torch.cat(parts)
        else:
            fields[key] = list(itertools.chain.from_iterable(parts))
    return DecodedImages(images, fields)


class CachedTrainLoader:
    """Training batches from decoded images: the sampler's ``(index, seed)`` items cut into
    batches of ``batch_size`` (the last partial batch dropped, as the DataLoader's
    ``drop_last``), each augmented on ``device`` by ``augmentation`` from its seeds."""

    def __init__(
        self,
        images: DecodedImages,
        sampler: Any,
        batch_size: int,
        augmentation: BatchAugmentation,
        device: torch.device,
    ) -> None:
        self.dataset = images
        self.sampler = sampler
        self.batch_size = batch_size
        self.augmentation = augmentation
        self.device = device

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        items = iter(self.sampler)
        while True:
            chunk = list(itertools.islice(items, self.batch_size))
            if len(chunk) < self.batch_size:
                return
            indices = [index for index, _ in chunk]
            batch = self.dataset.items(indices, 0, self.device)
            batch["img"] = self.augmentation(batch["img"], [seed for _, seed in chunk])
            yield batch


class CachedEvalLoader:
    """Batches of decoded images in dataset order, normalised on ``device`` (evaluation and the
    stage-1 feature pass); ``subset`` gives a DDP rank its contiguous share."""

    def __init__(
        self,
        images: DecodedImages,
        batch_size: int,
        normalise: BatchAugmentation,
        device: torch.device,
        which: int = 0,
        indices: Optional[range] = None,
    ) -> None:
        self.images = images
        self.batch_size = batch_size
        self.normalise = normalise
        self.device = device
        self.which = which
        self.dataset = range(len(images)) if indices is None else indices

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size)

    def subset(self, indices: range) -> CachedEvalLoader:
        return CachedEvalLoader(
            self.images, self.batch_size, self.normalise, self.device, self.which, indices
        )

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for start in range(0, len(self.dataset), self.batch_size):
            indices = list(self.dataset[start : start + self.batch_size])
            batch = self.images.items(indices, self.which, self.device)
            batch["img"] = self.normalise(batch["img"])
            yield batch


def log_decoded(what: str, images: DecodedImages, where: torch.device, seconds: float) -> None:
    pinned = " (pinned)" if images.images[0].is_pinned() else ""
    get_logger().info(
        f"=> Decoded once: {what}, {len(images)} images at {len(images.images)} resize(s) "
        f"({images.nbytes / 1e9:.2f} GB, {where}{pinned}) in {seconds:.1f}s "
        f"({len(images) / max(seconds, 1e-9):.0f} img/s)"
    )


def timed_decode(*args: Any, **kwargs: Any) -> tuple[DecodedImages, float]:
    """:func:`decode_split` and its seconds."""
    start = time.perf_counter()
    images = decode_split(*args, **kwargs)
    return images, time.perf_counter() - start
