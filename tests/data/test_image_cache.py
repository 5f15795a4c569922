"""Images decoded once and augmented per batch (``data.cache``): the same pixels as the per-image
PIL pipeline for the same flips and crop offsets, erasing boxes from the same distributions, the
image reader's semantics, the memory accounting and its fallbacks, and exact resumption."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import ks_2samp
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from csgn_plugin import builders
from csgn_plugin.compat import torchreid_api
from csgn_plugin.config import load_config
from csgn_plugin.data.base import ClothesImageDataset
from csgn_plugin.data.batch_augment import BatchPlan, _draw_boxes, batch_augmentation
from csgn_plugin.data.image_cache import (
    CacheBudget,
    CachedEvalLoader,
    CachedTrainLoader,
    CacheOptions,
    decode_split,
    image_bytes,
)
from csgn_plugin.data.transforms import PixelRandomErasing, build_transforms

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLIP_REID = ["random_flip", "pad_crop", "random_erase_pixel"]
MEAN, STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def pipelines(names=CLIP_REID, size=(64, 32), pad=4):
    return build_transforms(*size, names, MEAN, STD, "bicubic", "bilinear", pad_crop_padding=pad)


def random_image(seed, size=(83, 37)):
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize(("top", "left"), [(0, 0), (8, 8), (3, 6), (8, 0)])
def test_flip_and_crop_give_the_pil_pixels_for_the_same_offsets(flip, top, left):
    train, _ = pipelines()
    batch_path = batch_augmentation(train)
    resize, pad, normalize = train.transforms[0], 4, train.transforms[5]
    img = resize(random_image(top * 10 + left))
    expected = TF.hflip(img) if flip else img
    expected = TF.crop(T.Pad(pad)(expected), top, left, 64, 32)
    expected = normalize(T.ToTensor()(expected))
    plan = BatchPlan(
        np.array([flip]),
        np.array([top]),
        np.array([left]),
        (np.zeros((1, 4), dtype=np.int64),),  # not erased
        0,
    )
    got = batch_path.apply(TF.pil_to_tensor(img)[None], plan)[0]
    assert torch.equal(got, expected)


def test_test_pipeline_is_the_pil_one_bit_for_bit():
    _, test = pipelines()
    normalise = batch_augmentation(test)
    assert not normalise.random and normalise.interpolation == "bilinear"
    img = random_image(1)
    cached = TF.pil_to_tensor(test.transforms[0](img))  # what the cache keeps
    assert torch.equal(normalise(cached[None])[0], test(img))


def test_pipelines_the_batch_path_cannot_run_stay_per_image():
    for names in (["random_crop"], ["color_jitter"], ["random_patch", "random_flip"]):
        assert batch_augmentation(pipelines(names)[0]) is None
    for names in (["random_flip"], ["random_erase"], CLIP_REID + ["random_erase"]):
        assert batch_augmentation(pipelines(names)[0]) is not None


def pil_boxes(op, count, height, width):
    """(erased, h, w, top, left) of ``count`` applications of a per-image erasing op."""
    rows = []
    for _ in range(count):
        img = op(torch.full((3, height, width), 7.0))
        changed = (img != 7.0).any(dim=0)
        if not changed.any():
            rows.append((0, 0, 0, 0, 0))
            continue
        r, c = changed.any(dim=1).nonzero().flatten(), changed.any(dim=0).nonzero().flatten()
        rows.append((1, int(r[-1] - r[0] + 1), int(c[-1] - c[0] + 1), int(r[0]), int(c[0])))
    return np.array(rows)


@pytest.mark.parametrize("name", ["random_erase_pixel", "random_erase"])
def test_erasing_boxes_come_from_the_per_image_distribution(name):
    height, width, count = 128, 64, 3000
    train, _ = pipelines([name], size=(height, width))
    op = next(
        t
        for t in train.transforms
        if isinstance(t, (PixelRandomErasing, torchreid_api().data.transforms.RandomErasing))
    )
    spec = batch_augmentation(train).erasing[0]
    pil = pil_boxes(op, count, height, width)
    boxes = _draw_boxes(np.random.default_rng(0), spec, count, height, width)
    ours = np.column_stack([boxes[:, 2] > 0, boxes[:, 2], boxes[:, 3], boxes[:, 0], boxes[:, 1]])
    rate_pil, rate_ours = pil[:, 0].mean(), ours[:, 0].mean()
    assert abs(rate_pil - 0.5) < 0.04 and abs(rate_ours - 0.5) < 0.04
    pil, ours = pil[pil[:, 0] == 1], ours[ours[:, 0] == 1]

    def statistics(rows):
        h, w, top, left = rows[:, 1], rows[:, 2], rows[:, 3], rows[:, 4]
        return {
            "area": h * w / (height * width),
            "aspect": np.log(h / w),
            "top": (top + 0.5) / (height - h + 1),  # where in the range the box may take
            "left": (left + 0.5) / (width - w + 1),
        }

    expected, got = statistics(pil), statistics(ours)
    for key in expected:
        assert ks_2samp(expected[key], got[key]).pvalue > 0.001, key
    # every box strictly inside the image, as the per-image op requires
    assert (ours[:, 1] < height).all() and (ours[:, 2] < width).all()
    assert (ours[:, 3] + ours[:, 1] <= height).all() and (ours[:, 4] + ours[:, 2] <= width).all()


def test_erasing_fills_the_box_with_noise_or_the_mean():
    height, width = 64, 32
    for name, fill in (("random_erase_pixel", None), ("random_erase", MEAN)):
        aug = batch_augmentation(pipelines([name])[0])
        images = torch.full((2, 3, height, width), 255, dtype=torch.uint8)
        box = np.array([[5, 3, 10, 6], [0, 0, 0, 0]])
        plan = BatchPlan(np.zeros(2, bool), np.zeros(2, int), np.zeros(2, int), (box,), 3)
        out = aug.apply(images, plan)
        white = (1 - torch.tensor(MEAN)) / torch.tensor(STD)
        inside = out[0, :, 5:15, 3:9]
        if fill is None:
            assert inside.std() > 0.5 and abs(float(inside.mean())) < 0.5  # N(0, 1) noise
        else:
            assert torch.equal(inside, torch.tensor(fill).view(3, 1, 1).expand_as(inside))
        outside = out[0].clone()
        outside[:, 5:15, 3:9] = white.view(3, 1, 1)
        torch.testing.assert_close(outside, white.view(3, 1, 1).expand(3, height, width))
        torch.testing.assert_close(out[1], white.view(3, 1, 1).expand(3, height, width))


def write_dataset(tmp_path):
    """Train items: an RGBA image fully transparent, a 16-bit white one, a damaged one of the
    same identity and outfit as a red one (its stand-in under the 'skip' policy)."""
    paths = {name: str(tmp_path / f"{name}.png") for name in ("rgba", "sixteen", "bad", "red")}
    Image.new("RGBA", (20, 40), (200, 100, 50, 0)).save(paths["rgba"])
    Image.fromarray(np.full((40, 20), 65535, dtype=np.uint16)).save(paths["sixteen"])
    open(paths["bad"], "w").write("not an image")
    Image.new("RGB", (20, 40), (255, 0, 0)).save(paths["red"])
    train = [
        (paths["rgba"], 0, 0, 0, 0),
        (paths["sixteen"], 1, 0, 0, 1),
        (paths["bad"], 2, 0, 0, 2),
        (paths["red"], 2, 1, 0, 2),
    ]
    return paths, ClothesImageDataset(
        train, train[:1], train[1:2], image_policy="skip", mode="train", verbose=False
    )


def test_decoding_reads_through_the_datasets_reader_and_policy(tmp_path):
    paths, dataset = write_dataset(tmp_path)
    decoded = decode_split(
        dataset, (16, 8), ["bicubic", "bilinear"], torch.device("cpu"), False, 0, "train"
    )
    assert len(decoded) == 4 and len(decoded.images) == 2
    assert decoded.nbytes == 2 * image_bytes(4, 16, 8) == 2 * 4 * 3 * 16 * 8
    for images in decoded.images:
        assert images.dtype == torch.uint8 and images.shape == (4, 3, 16, 8)
        assert (images[0] == 0).all()  # transparent pixels composited on black
        assert (images[1] == 255).all()  # 16-bit white scaled to 255
        red = torch.tensor([255, 0, 0], dtype=torch.uint8).view(3, 1, 1).expand(3, 16, 8)
        assert torch.equal(images[2], red) and torch.equal(images[3], red)  # the stand-in
    assert decoded.fields["unreadable_path"] == ["", "", paths["bad"], ""]
    assert decoded.fields["impath"][2] == paths["red"]
    assert decoded.fields["pid"].tolist() == [0, 1, 2, 2]
    assert decoded.fields["clothes_id"].tolist() == [0, 1, 2, 2]


def test_budget_tiers_device_then_host_then_none():
    options = CacheOptions("on", device_gb=1e-6, host_gb=2e-6)  # 1,000 and 2,000 bytes
    budget = CacheBudget(options, torch.device("cuda", 0))
    assert budget.place(1000) == (torch.device("cuda", 0), False)
    assert budget.place(500) == (torch.device("cpu"), True)  # pinned beside CUDA
    assert budget.place(1600) is None  # 1,500 left on the host
    assert budget.place(1500) == (torch.device("cpu"), True)
    cpu = CacheBudget(options, torch.device("cpu"))
    assert cpu.place(1500) == (torch.device("cpu"), False)  # only the host budget counts
    assert not CacheBudget.enabled(CacheOptions("auto", 1, 1), torch.device("cpu"))
    assert CacheBudget.enabled(CacheOptions("auto", 1, 1), torch.device("cuda"))
    assert not CacheBudget.enabled(CacheOptions("off", 1, 1), torch.device("cuda"))


def datamanager(tmp_path, *extra):
    cfg = load_config(
        os.path.join(ROOT, "configs", "csgn_synthcc.yaml"),
        [
            "data.root", str(tmp_path / "data"), "cc_data.synthcc_preset", "tiny",
            "data.height", "64", "data.width", "32", "data.pad_crop_padding", "3",
            "train.batch_size", "16", "data.cache", "on", *extra,
        ],
    )  # fmt: skip
    return builders.build_datamanager(cfg, use_gpu=False)


def test_splits_that_exceed_the_budget_load_per_image(tmp_path):
    dm = datamanager(tmp_path)
    n_train = len(dm.trainset.train)
    n_query = len(dm.test_dataset["synthcc"]["query"])
    n_gallery = len(dm.test_dataset["synthcc"]["gallery"])
    one = image_bytes(1, 64, 32)
    # training images at the training (bicubic) and the feature pass's (bilinear) resize
    assert isinstance(dm.train_loader, CachedTrainLoader)
    assert dm.train_loader.dataset.nbytes == 2 * n_train * one
    assert isinstance(dm.train_loader_for_features(8), CachedEvalLoader)
    loaders = dm.test_loader["synthcc"]
    assert isinstance(loaders["query"], CachedEvalLoader)
    assert loaders["query"].images.nbytes == n_query * one
    assert loaders["gallery"].images.nbytes == n_gallery * one
    assert [t[:2] for t in dm.cache_timings] == [
        ("train", n_train), ("synthcc query", n_query), ("synthcc gallery", n_gallery)
    ]  # fmt: skip

    def budget_gb(nbytes):
        return str((nbytes + 0.5) / 1e9)

    dm = datamanager(tmp_path, "data.cache_host_gb", budget_gb(2 * n_train * one))
    assert isinstance(dm.train_loader, CachedTrainLoader)
    assert not isinstance(dm.test_loader["synthcc"]["query"], CachedEvalLoader)
    dm = datamanager(tmp_path, "data.cache_host_gb", budget_gb(n_train * one))
    assert dm.train_loader.dataset.nbytes == n_train * one  # the feature copy is dropped
    assert not isinstance(dm.train_loader_for_features(8), CachedEvalLoader)
    dm = datamanager(tmp_path, "data.cache_host_gb", budget_gb(n_train * one - 1))
    assert isinstance(dm.train_loader, torch.utils.data.DataLoader)
    dm = datamanager(tmp_path, "data.cache", "off")
    assert isinstance(dm.train_loader, torch.utils.data.DataLoader) and not dm.cache_timings


def test_batches_after_a_resume_equal_the_uninterrupted_runs(tmp_path):
    dm = datamanager(tmp_path)
    sampler = dm.train_sampler
    first, second = sampler.num_batches(0), sampler.num_batches(1)
    sampler.stream_from(0)
    stream = iter(dm.train_loader)
    uninterrupted = [next(stream) for _ in range(first + second)]
    assert uninterrupted[0]["img"].dtype == torch.float32
    assert uninterrupted[0]["img"].shape == (16, 3, 64, 32)
    resumed_dm = datamanager(tmp_path)  # a new process resuming at epoch 2, batch 3
    resumed_dm.train_sampler.stream_from(1, 2)
    resumed = iter(resumed_dm.train_loader)
    for expected in uninterrupted[first + 2 :]:
        got = next(resumed)
        assert torch.equal(got["img"], expected["img"])
        assert torch.equal(got["pid"], expected["pid"]) and got["impath"] == expected["impath"]
    # each batch of one epoch drew its own flips, crops and boxes
    assert not torch.equal(uninterrupted[0]["img"], uninterrupted[first]["img"])
