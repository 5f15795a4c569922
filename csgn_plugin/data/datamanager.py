"""A torchreid ``DataManager`` for clothes-changing data, built for speed, resume and DDP.

It builds the same attributes as torchreid's ``ImageDataManager`` / ``VideoDataManager``
(``train_loader``, ``test_loader[name]['query'|'gallery']``, ``test_dataset``, ``sources``,
``targets``, ``data_type``, ``num_train_pids``...) so torchreid's engines and
``visualize_ranked_results`` use it unchanged. What it adds:

* dataset options (the ``cc_data`` config section) passed to every dataset as keyword arguments;
* the plugin's transforms (``transforms.py``: torchreid's names and CLIP-ReID's operations,
  unknown names refused, resize interpolation per split);
* the plugin's epoch-seeded samplers (resumable, sharded over DDP ranks);
* loaders that keep a GPU fed: workers, pinned memory, persistent workers, prefetch;
* loaders that draw nothing from torch's global generator (dropout's), so iterating one again
  after a resume leaves a resumed run's random numbers as the uninterrupted run's;
* images decoded once (``data.cache``, ``image_cache.py``): each split decoded and resized a
  single time into memory (the training device first), then batches augmented on the device;
* ``protocols[name]``: the evaluation protocols each target dataset declares;
* ``identity_outfits()``: which outfits of the training split each identity wears.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader

from ..compat import torchreid_api
from ..errors import ConfigError
from ..progress import get_logger
from .batch_augment import batch_augmentation
from .image_cache import (
    CacheBudget,
    CachedEvalLoader,
    CachedTrainLoader,
    CacheOptions,
    DecodedImages,
    image_bytes,
    log_decoded,
    timed_decode,
)
from .samplers import EpochSampler, SeededDataset, build_sampler
from .transforms import build_transforms, describe

tr = torchreid_api()


class ClothesDataManager(tr.data.datamanager.DataManager):
    """Train and test loaders for ``sources`` / ``targets`` (names registered with torchreid)."""

    def __init__(
        self,
        root: str,
        sources: str | Sequence[str],
        targets: str | Sequence[str] | None = None,
        data_type: str = "image",
        height: int = 256,
        width: int = 128,
        transforms: str | Sequence[str] = "random_flip",
        norm_mean: Sequence[float] | None = None,
        norm_std: Sequence[float] | None = None,
        train_interpolation: str = "bilinear",
        test_interpolation: str = "bilinear",
        pad_crop_padding: int = 10,
        use_gpu: bool = False,
        combineall: bool = False,
        batch_size_train: int = 32,
        batch_size_test: int = 100,
        workers: int = 2,
        train_sampler: str = "RandomSampler",
        num_instances: int = 4,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        prefetch_factor: int = 2,
        seq_len: int = 15,
        sample_method: str = "evenly",
        dataset_options: dict | None = None,
        train: bool = True,
        cache: CacheOptions | None = None,
    ) -> None:
        # torchreid's DataManager.__init__ would build its own transforms (ignoring names it does
        # not know); its few attributes are set here instead
        self.sources = [sources] if isinstance(sources, str) else list(sources)
        targets = targets or self.sources
        self.targets = [targets] if isinstance(targets, str) else list(targets)
        self.height, self.width = height, width
        self.transform_tr, self.transform_te = build_transforms(
            height,
            width,
            transforms,
            norm_mean,
            norm_std,
            train_interpolation=train_interpolation,
            test_interpolation=test_interpolation,
            pad_crop_padding=pad_crop_padding,
        )
        self.use_gpu = torch.cuda.is_available() and use_gpu
        self.device = (
            torch.device("cuda", torch.cuda.current_device())
            if self.use_gpu
            else torch.device("cpu")
        )
        get_logger().info(f"=> Train transforms: {describe(self.transform_tr)}")
        get_logger().info(f"=> Test transforms: {describe(self.transform_te)}")
        if data_type not in ("image", "video"):
            raise ValueError(f"data.type must be 'image' or 'video', got '{data_type}'")
        self.data_type = data_type
        self.world_size = world_size
        self._loader_kwargs = {
            # a loader draws its workers' base seed each time it is iterated: from this
            # generator, not from torch's global one, so that dropout's random numbers do not
            # depend on how many loaders were iterated (a resumed run iterates them anew)
            "generator": torch.Generator(),
            "num_workers": workers,
            "pin_memory": pin_memory and self.use_gpu,
            "persistent_workers": persistent_workers and workers > 0,
            "prefetch_factor": prefetch_factor if workers > 0 else None,
        }
        # decoded-image caches: the splits that fit, in this order (training, then test)
        caching = cache is not None and CacheBudget.enabled(cache, self.device)
        self._budget = CacheBudget(cache, self.device) if caching and data_type == "image" else None
        self.cache_timings: list[tuple[str, int, float]] = []  # (split, images, seconds)
        self._feature_images: tuple[DecodedImages, int] | None = None
        common = {"root": root, "combineall": combineall, **(dataset_options or {})}
        if data_type == "video":
            common.update(seq_len=seq_len, sample_method=sample_method)

        get_logger().info("=> Loading train (source) dataset")
        trainset = sum(
            self._init_dataset(name, transform=self.transform_tr, mode="train", **common)
            for name in self.sources
        )
        self.trainset = trainset
        self._num_train_pids = trainset.num_train_pids
        self._num_train_cams = trainset.num_train_cams
        self.num_train_clothes = getattr(trainset, "num_train_clothes", 0)
        self.train_sampler: EpochSampler | None = None
        self.train_loader: DataLoader | None = None
        if train:  # evaluation alone needs the training set's statistics, not its batches
            self.train_sampler = build_sampler(
                train_sampler,
                trainset.train,
                batch_size_train,
                num_instances=num_instances,
                seed=seed,
                rank=rank,
                world_size=world_size,
            )
            self.train_loader = DataLoader(
                SeededDataset(trainset),
                sampler=self.train_sampler,
                batch_size=batch_size_train // world_size,
                drop_last=True,
                **self._loader_kwargs,
            )
            if self._budget is not None:
                self._cache_train_split(trainset, batch_size_train // world_size)

        get_logger().info("=> Loading test (target) dataset")
        self.test_loader: dict[str, dict[str, DataLoader]] = {}
        self.test_dataset: dict[str, dict[str, list]] = {}
        self.protocols: dict[str, tuple[str, ...]] = {}
        for name in self.targets:
            loaders, data = {}, {}
            for mode in ("query", "gallery"):
                dataset = self._init_dataset(
                    name,
                    transform=self.transform_te,
                    mode=mode,
                    verbose=mode == "query",
                    **common,
                )
                loaders[mode] = self._cached_test_split(
                    dataset, f"{name} {mode}", batch_size_test
                ) or DataLoader(
                    dataset, batch_size=batch_size_test, shuffle=False, **self._loader_kwargs
                )
                # the tracklets, also when a video dataset tests on clips of them
                data[mode] = dataset.query if mode == "query" else dataset.gallery
            self.test_loader[name] = loaders
            self.test_dataset[name] = data
            self.protocols[name] = tuple(getattr(dataset, "protocols", ("general",)))
        self._print_summary(trainset)

    def _init_dataset(self, name: str, **kwargs: Any) -> Any:
        init = (
            tr.data.datasets.init_image_dataset
            if self.data_type == "image"
            else tr.data.datasets.init_video_dataset
        )
        try:
            return init(name, **kwargs)
        except ValueError as exc:
            if "Invalid dataset name" in str(exc):
                raise ConfigError(
                    f"data.sources/targets: unknown {self.data_type} dataset '{name}'. "
                    f"{str(exc).split('. ', 1)[-1]}"
                ) from exc
            raise

    def identity_outfits(self) -> torch.Tensor:
        """(training ids, training outfits) booleans: True where the training split holds that
        outfit of that identity (CAL's positive outfits; Simple-CCReID's ``pid2clothes``)."""
        if self.num_train_clothes < 1:
            raise ConfigError(
                f"data.sources {self.sources}: the training split has no clothes ids (not a "
                "clothes-changing dataset), which this model's loss needs"
            )
        items = torch.tensor([(item[1], item[4]) for item in self.trainset.train])
        outfits = torch.zeros(self.num_train_pids, self.num_train_clothes, dtype=torch.bool)
        outfits[items[:, 0], items[:, 1]] = True
        return outfits

    # ------------------------------------------------------------------ decoded once
    def _decode(self, dataset: Any, what: str, interpolations: list[str]) -> DecodedImages | None:
        """``dataset`` decoded at every interpolation asked for, where the budget has room (the
        training set may ask for a second copy: it is dropped first when both do not fit)."""
        assert self._budget is not None
        one = image_bytes(len(dataset), self.height, self.width)
        while interpolations:
            place = self._budget.place(one * len(interpolations))
            if place is not None:
                break
            interpolations = interpolations[:-1]
        if not interpolations:
            get_logger().info(
                f"=> {what}: {len(dataset)} images ({one / 1e9:.2f} GB decoded) exceed the "
                "cache budget (data.cache_device_gb, data.cache_host_gb); loaded per image"
            )
            return None
        storage, pinned = place
        workers = self._loader_kwargs["num_workers"]
        decoded, seconds = timed_decode(
            dataset, (self.height, self.width), interpolations, storage, pinned, workers, what
        )
        self.cache_timings.append((what, len(decoded), seconds))
        log_decoded(what, decoded, storage, seconds)
        return decoded

    def _cache_train_split(self, trainset: Any, batch_size: int) -> None:
        augmentation = batch_augmentation(self.transform_tr)
        if augmentation is None:
            get_logger().info(
                "=> The training transforms hold an operation the batch path does not implement "
                "(random_crop, random_patch, color_jitter): training images are loaded per image"
            )
            return
        features = batch_augmentation(self.transform_te)
        sizes = [augmentation.interpolation]
        if features is not None and features.interpolation != augmentation.interpolation:
            sizes.append(features.interpolation)  # the stage-1 feature pass's test resize
        decoded = self._decode(trainset, "train", sizes)
        if decoded is None:
            return
        self.train_loader = CachedTrainLoader(
            decoded, self.train_sampler, batch_size, augmentation, self.device
        )
        if features is not None and features.interpolation in sizes[: len(decoded.images)]:
            self._feature_images = (decoded, sizes.index(features.interpolation))

    def _cached_test_split(
        self, dataset: Any, what: str, batch_size: int
    ) -> CachedEvalLoader | None:
        normalise = batch_augmentation(self.transform_te)
        if self._budget is None or normalise is None:
            return None
        decoded = self._decode(dataset, what, [normalise.interpolation])
        if decoded is None:
            return None
        return CachedEvalLoader(decoded, batch_size, normalise, self.device)

    def train_loader_for_features(self, batch_size: int) -> DataLoader | CachedEvalLoader:
        """The training set with test transforms, in order, unsharded (stage-1 feature cache)."""
        if self._feature_images is not None:
            decoded, which = self._feature_images
            normalise = batch_augmentation(self.transform_te)
            return CachedEvalLoader(decoded, batch_size, normalise, self.device, which)
        plain = copy.copy(self.trainset)
        plain.transform = self.transform_te
        plain.data = plain.train
        return DataLoader(plain, batch_size=batch_size, shuffle=False, **self._loader_kwargs)

    def _print_summary(self, trainset: Any) -> None:
        get_logger().info("\n  **************** Summary ****************")
        get_logger().info(f"  source            : {self.sources}")
        get_logger().info(f"  # source datasets : {len(self.sources)}")
        get_logger().info(f"  # source ids      : {self.num_train_pids}")
        get_logger().info(f"  # source images   : {len(trainset)}")
        get_logger().info(f"  # source cameras  : {self.num_train_cams}")
        get_logger().info(f"  # source outfits  : {self.num_train_clothes}")
        get_logger().info(f"  target            : {self.targets}")
        get_logger().info("  *****************************************\n")
