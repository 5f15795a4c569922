"""The training/test transforms by name: CLIP-ReID's recipe, torchreid's names, the new ops.

CLIP-ReID's pipeline is written out below from its public code (datasets/
make_dataloader_clipreid.py and configs/person/{vit,cnn}_clipreid.yml of Syliz517/CLIP-ReID):

    train: Resize(256x128, interpolation=3 = bicubic), RandomHorizontalFlip(p=0.5), Pad(10),
           RandomCrop(256x128), ToTensor, Normalize(mean, std),
           timm RandomErasing(probability=0.5, mode='pixel', max_count=1)
           (timm's defaults: area 0.02 - 1/3, aspect 0.3 - 1/0.3 log-uniform, 10 attempts)
    test:  Resize(256x128) (bilinear), ToTensor, Normalize(mean, std)
    mean/std: ViT-B/16 0.5/0.5, RN50 ImageNet's
"""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from csgn_plugin.checks import check_config
from csgn_plugin.compat import torchreid_api
from csgn_plugin.config import load_config
from csgn_plugin.data.transforms import (
    PixelRandomErasing,
    build_transforms,
    check_transform_names,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
tr = torchreid_api()

IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
CLIPREID_STATS = {"vitb16": ([0.5] * 3, [0.5] * 3), "rn50": IMAGENET}


def pipeline_from_config(name: str) -> tuple[T.Compose, T.Compose]:
    cfg = load_config(os.path.join(ROOT, "configs", name))
    d = cfg.data
    return build_transforms(
        d.height,
        d.width,
        d.transforms,
        d.norm_mean,
        d.norm_std,
        train_interpolation=d.train_interpolation,
        test_interpolation=d.test_interpolation,
        pad_crop_padding=d.pad_crop_padding,
    )


@pytest.mark.parametrize("model", ["vitb16", "rn50"])
def test_clipreid_configs_draw_clipreid_transforms(model):
    train, test = pipeline_from_config(f"clipreid_{model}_ltcc.yaml")
    mean, std = CLIPREID_STATS[model]
    ops = train.transforms
    assert [type(op).__name__ for op in ops] == [
        "Resize",
        "RandomHorizontalFlip",
        "Pad",
        "RandomCrop",
        "ToTensor",
        "Normalize",
        "PixelRandomErasing",
    ]
    resize, flip, pad, crop, _, normalize, erase = ops
    assert tuple(resize.size) == (256, 128)
    assert resize.interpolation == InterpolationMode.BICUBIC
    assert flip.p == 0.5
    assert pad.padding == 10 and pad.fill == 0 and pad.padding_mode == "constant"
    assert tuple(crop.size) == (256, 128) and crop.padding is None
    assert list(normalize.mean) == mean and list(normalize.std) == std
    assert erase.p == 0.5
    assert erase.scale == pytest.approx((0.02, 1 / 3))
    assert erase.ratio == pytest.approx((0.3, 1 / 0.3))
    assert erase.attempts == 10
    assert [type(op).__name__ for op in test.transforms] == ["Resize", "ToTensor", "Normalize"]
    assert tuple(test.transforms[0].size) == (256, 128)
    assert test.transforms[0].interpolation == InterpolationMode.BILINEAR
    assert list(test.transforms[2].mean) == mean and list(test.transforms[2].std) == std


def test_torchreid_names_keep_torchreid_meaning_and_order():
    # names in another order than the pipeline's: torchreid applies them in a fixed order
    names = ["random_erase", "color_jitter", "random_crop", "random_flip"]
    train, test = build_transforms(32, 16, names, *IMAGENET)
    ops = train.transforms
    assert [type(op) for op in ops] == [
        T.Resize,
        T.RandomHorizontalFlip,
        tr.data.transforms.Random2DTranslation,
        T.ColorJitter,
        T.ToTensor,
        T.Normalize,
        tr.data.transforms.RandomErasing,
    ]
    assert ops[0].interpolation == InterpolationMode.BILINEAR  # torchreid's default
    assert (ops[2].height, ops[2].width, ops[2].p) == (32, 16, 0.5)
    assert ops[3].brightness == (0.8, 1.2) and ops[3].contrast == (0.85, 1.15)
    # torchreid fills the erased box with the normalisation mean's numbers
    assert list(ops[6].mean) == IMAGENET[0] and ops[6].probability == 0.5
    assert [type(op) for op in test.transforms] == [T.Resize, T.ToTensor, T.Normalize]
    # a single string and upper case are accepted, as torchreid does
    assert [type(op) for op in build_transforms(8, 4, "Random_Flip")[0].transforms][1] == (
        T.RandomHorizontalFlip
    )


def test_simple_ccreid_config_draws_simple_ccreids_transforms():
    """data/__init__.py:49-62 (guxinqian/Simple-CCReID): Resize (bilinear), RandomCroping (p 0.5:
    enlarge 1.125x, crop at a uniform position = torchreid's Random2DTranslation), flip p 0.5,
    ToTensor, ImageNet normalisation, RandomErasing (p 0.5, area 0.02-0.4, aspect 0.3-1/0.3,
    fill 0.4914 / 0.4822 / 0.4465 in normalised space); test: Resize, ToTensor, Normalize. The
    crop and the flip commute in distribution (a mirrored uniform crop is a uniform crop)."""
    train, test = pipeline_from_config("cal_ltcc.yaml")
    ops = train.transforms
    assert [type(op) for op in ops] == [
        T.Resize,
        T.RandomHorizontalFlip,
        tr.data.transforms.Random2DTranslation,
        T.ToTensor,
        T.Normalize,
        tr.data.transforms.RandomErasing,
    ]
    assert tuple(ops[0].size) == (384, 192) and ops[0].interpolation == InterpolationMode.BILINEAR
    assert ops[1].p == 0.5 and (ops[2].height, ops[2].width, ops[2].p) == (384, 192, 0.5)
    assert list(ops[4].mean) == IMAGENET[0] and list(ops[4].std) == IMAGENET[1]
    erase = ops[5]
    assert (erase.probability, erase.sl, erase.sh, erase.r1) == (0.5, 0.02, 0.4, 0.3)
    assert list(erase.mean) == [0.4914, 0.4822, 0.4465]
    assert [type(op) for op in test.transforms] == [T.Resize, T.ToTensor, T.Normalize]
    assert test.transforms[0].interpolation == InterpolationMode.BILINEAR


def test_unknown_transform_names_are_refused_with_a_suggestion():
    with pytest.raises(ValueError, match=r"data.transforms.*'pad_crp'.*did you mean 'pad_crop'"):
        check_transform_names(["random_flip", "pad_crp"])
    cfg = load_config("", ["data.transforms", "['random_erasing']"])
    with pytest.raises(ValueError, match="did you mean 'random_erase'"):
        check_config(cfg)
    cfg = load_config("", ["data.train_interpolation", "bicubc"])
    with pytest.raises(ValueError, match="data.train_interpolation.*did you mean 'bicubic'"):
        check_config(cfg)
    with pytest.raises(ValueError, match="data.pad_crop_padding"):
        check_config(load_config("", ["data.pad_crop_padding", "-1"]))


def test_pad_crop_shifts_the_zero_padded_image():
    height, width, pad = 12, 8, 3
    # every pixel unique and non-zero, so the crop's offset can be read off the output
    values = np.arange(1, height * width + 1, dtype=np.uint8).reshape(height, width)
    image = Image.fromarray(np.stack([values] * 3, axis=-1))
    padded = np.zeros((height + 2 * pad, width + 2 * pad), dtype=np.uint8)
    padded[pad : pad + height, pad : pad + width] = values
    train, _ = build_transforms(height, width, ["pad_crop"], pad_crop_padding=pad)
    crop_ops = T.Compose(train.transforms[1:3])  # Pad + RandomCrop, before ToTensor
    offsets = set()
    for seed in range(40):
        torch.manual_seed(seed)
        out = np.asarray(crop_ops(image))[..., 0]
        assert out.shape == (height, width)
        matches = [
            (dy, dx)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            if np.array_equal(out, padded[dy : dy + height, dx : dx + width])
        ]
        assert len(matches) == 1
        offsets.add(matches[0])
    assert len(offsets) > 10  # the offset is random over the (2 pad + 1)^2 positions


def erased_box(before: torch.Tensor, after: torch.Tensor) -> tuple[int, int, int, int] | None:
    """(top, left, height, width) of the changed pixels, which must form one full rectangle."""
    changed = (before != after).any(dim=0)
    if not changed.any():
        return None
    rows = changed.any(dim=1).nonzero().flatten()
    cols = changed.any(dim=0).nonzero().flatten()
    top, bottom, left, right = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
    assert changed[top : bottom + 1, left : right + 1].all()
    assert int(changed.sum()) == (bottom - top + 1) * (right - left + 1)
    return top, left, bottom - top + 1, right - left + 1


def test_pixel_erasing_fills_one_rectangle_with_standard_normal_noise():
    height, width = 256, 128
    erase = PixelRandomErasing(p=1.0)
    for seed in range(20):
        torch.manual_seed(seed)
        image = torch.full((3, height, width), 7.0)
        out = erase(image)
        assert torch.equal(image, torch.full((3, height, width), 7.0))  # input left as it was
        top, left, box_h, box_w = erased_box(image, out)
        # area 0.02 - 1/3 of the image and aspect 0.3 - 1/0.3, up to the rounding of each side
        area = box_h * box_w / (height * width)
        assert 0.02 * 0.9 <= area <= (1 / 3) * 1.1
        assert 0.3 * 0.85 <= box_h / box_w <= (1 / 0.3) * 1.15
        assert box_h < height and box_w < width
        noise = out[:, top : top + box_h, left : left + box_w]
        # at least 3 x 0.02 x 256 x 128 ~ 1966 values: the mean is within 5 standard errors
        n = noise.numel()
        assert abs(float(noise.mean())) < 5 / n**0.5
        assert 0.9 < float(noise.std()) < 1.1
        outside = out.clone()
        outside[:, top : top + box_h, left : left + box_w] = 7.0
        assert torch.equal(outside, image)


def test_pixel_erasing_probability():
    torch.manual_seed(0)
    image = torch.zeros(3, 32, 16)
    assert all(erased_box(image, PixelRandomErasing(p=0.0)(image)) is None for _ in range(50))
    hits = sum(erased_box(image, PixelRandomErasing(p=0.5)(image)) is not None for _ in range(400))
    assert 160 <= hits <= 240  # binomial(400, 0.5): mean 200, sd 10


def test_training_pipeline_is_a_function_of_the_seed():
    names = ["random_flip", "pad_crop", "random_crop", "color_jitter", "random_erase_pixel"]
    train, _ = build_transforms(32, 16, names, train_interpolation="bicubic")
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (40, 20, 3), dtype=np.uint8))

    def draw(seed: int) -> torch.Tensor:
        random.seed(seed)  # what SeededDataset seeds per sample
        np.random.seed(seed)
        torch.manual_seed(seed)
        return train(image)

    assert torch.equal(draw(3), draw(3))
    assert sum(not torch.equal(draw(3), draw(s)) for s in range(4, 12)) >= 7


def test_bad_erasing_parameters_are_refused():
    with pytest.raises(ValueError, match="p must be"):
        PixelRandomErasing(p=1.5)
    with pytest.raises(ValueError, match="scale"):
        PixelRandomErasing(scale=(0.5, 0.2))


def test_config_keys_reach_the_data_manager(tmp_path):
    from csgn_plugin import builders

    cfg = load_config(
        os.path.join(ROOT, "configs", "synthcc_osnet.yaml"),
        ["data.root", str(tmp_path), "cc_data.synthcc_preset", "tiny", "data.height", "64",
         "data.width", "32", "train.batch_size", "8", "data.transforms",
         "['random_flip', 'pad_crop', 'random_erase_pixel']", "data.train_interpolation",
         "bicubic", "data.pad_crop_padding", "4", "data.test_interpolation", "nearest"],
    )  # fmt: skip
    dm = builders.build_datamanager(cfg, use_gpu=False)
    train = dm.transform_tr.transforms
    assert train[0].interpolation == InterpolationMode.BICUBIC and train[2].padding == 4
    assert isinstance(train[-1], PixelRandomErasing)
    assert dm.transform_te.transforms[0].interpolation == InterpolationMode.NEAREST
    assert dm.train_loader.dataset.dataset.transform is dm.transform_tr
    dm.train_sampler.set_epoch(0)
    assert next(iter(dm.train_loader))["img"].shape == (8, 3, 64, 32)
