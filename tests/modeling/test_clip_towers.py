"""CLIP towers at ReID sizes: grids, positional interpolation (square or not), SIE, key names."""

import copy

import open_clip
import pytest
import torch
import torch.nn.functional as F

from csgn_plugin.modeling.clip_towers import ReIDResNet, ReIDViT, resnet_grid, vit_grid
from csgn_plugin.modeling.clip_weights import clip_arch_config, load_clip


def _random_vit():
    return load_clip("csgn-tiny-vit", "", "auto")


def _random_rn():
    return load_clip("csgn-tiny-rn", "", "auto")


def _reference_grid(pos: torch.Tensor, old: tuple, new: tuple, mode: str) -> torch.Tensor:
    """Interpolate the (1 + h*w, D) grid directly with F.interpolate (the test's reference)."""
    grid = pos[1:].reshape(old[0], old[1], -1).permute(2, 0, 1).unsqueeze(0)
    grid = F.interpolate(grid, size=new, mode=mode, align_corners=False)
    return grid[0].permute(1, 2, 0).reshape(new[0] * new[1], -1)


def test_grid_sizes():
    assert vit_grid((256, 128), 16, 16) == (16, 8)
    assert vit_grid((256, 128), 16, 12) == (21, 10)  # CLIP-ReID's overlapping-patch grid
    assert vit_grid((320, 160), 16, 16) == (20, 10)
    assert resnet_grid((256, 128), 1) == (16, 8)
    assert resnet_grid((256, 128), 2) == (8, 4)
    assert resnet_grid((224, 224), 2) == (7, 7)  # CLIP's own geometry
    with pytest.raises(ValueError, match="smaller than the patch"):
        vit_grid((8, 128), 16, 16)


@pytest.mark.parametrize(
    "stride,size,mode",
    [(16, (256, 128), "bilinear"), (12, (256, 128), "bilinear"), (16, (320, 160), "bicubic")],
)
def test_vit_positional_interpolation_matches_reference(stride, size, mode):
    clip = _random_vit()
    source = clip.visual.positional_embedding.detach().clone()  # 1 + 14x14 rows
    vit = ReIDViT(clip.visual, size, stride=stride, pos_interp=mode, num_cameras=0, sie_scale=3.0)
    grid = vit_grid(size, 16, stride)
    assert vit.positional_embedding.shape == (1 + grid[0] * grid[1], 64)
    torch.testing.assert_close(vit.positional_embedding[0], source[0])  # class token kept
    expected = _reference_grid(source, (14, 14), grid, mode)
    torch.testing.assert_close(vit.positional_embedding[1:].detach(), expected)
    penultimate, final = vit(torch.randn(2, 3, *size))
    assert penultimate.shape == final.shape == (2, 64)
    assert vit.project(final).shape == (2, 64)


def test_resnet_attnpool_interpolation_and_last_stride():
    clip = _random_rn()
    source = clip.visual.attnpool.positional_embedding.detach().clone()  # 1 + 7x7 rows
    resnet = ReIDResNet(clip.visual, (256, 128), last_stride=1, pos_interp="bilinear")
    assert resnet.grid == (16, 8)
    torch.testing.assert_close(resnet.attnpool.positional_embedding[0], source[0])
    expected = _reference_grid(source, (7, 7), (16, 8), "bilinear")
    torch.testing.assert_close(resnet.attnpool.positional_embedding[1:].detach(), expected)
    layer3, layer4 = resnet(torch.randn(2, 3, 256, 128))
    assert layer3.shape == (2, 128, 16, 8)
    assert layer4.shape == (2, 256, 16, 8)  # last stride 1: same map as layer 3
    assert resnet.attnpool(layer4).shape == (2, 64)


def test_resnet_without_attnpool_has_no_pool_parameters():
    resnet = ReIDResNet(_random_rn().visual, (128, 64), 1, "bilinear", keep_attnpool=False)
    assert resnet.attnpool is None
    assert not [n for n, _ in resnet.named_parameters() if "attnpool" in n]


def test_towers_at_native_geometry_equal_open_clip():
    vit_clip, rn_clip = _random_vit(), _random_rn()
    vit_clip.eval(), rn_clip.eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected_vit = vit_clip.encode_image(x)
        expected_rn = rn_clip.encode_image(x)
        vit = ReIDViT(copy.deepcopy(vit_clip.visual), (224, 224), 16, "bilinear", 0, 3.0).eval()
        resnet = ReIDResNet(copy.deepcopy(rn_clip.visual), (224, 224), 2, "bilinear").eval()
        torch.testing.assert_close(vit.project(vit(x)[1]), expected_vit)
        torch.testing.assert_close(resnet.attnpool(resnet(x)[1]), expected_rn)


def test_sie_adds_scaled_camera_vector_to_class_token():
    clip = _random_vit()
    with_sie = ReIDViT(
        copy.deepcopy(clip.visual), (128, 64), 16, "bilinear", num_cameras=3, sie_scale=3.0
    )
    plain = ReIDViT(copy.deepcopy(clip.visual), (128, 64), 16, "bilinear", 0, 3.0)
    vector = torch.randn(64)
    with torch.no_grad():
        with_sie.camera_embedding[2] = vector
        plain.class_embedding += 3.0 * vector  # the same shift, applied by hand
    x = torch.randn(2, 3, 128, 64)
    with torch.no_grad():
        shifted = with_sie(x, torch.tensor([2, 2]))
        torch.testing.assert_close(shifted[1], plain(x)[1])
        assert not torch.allclose(with_sie(x)[1], shifted[1])  # no camids: no embedding


def test_vit_from_a_non_square_source_grid():
    """A CLIP built at (64, 32) has a 4x2 grid; ReIDViT interpolates from that grid."""
    cfg = clip_arch_config("csgn-tiny-vit")
    cfg["vision_cfg"]["image_size"] = [64, 32]
    clip = open_clip.CLIP(**cfg).eval()
    assert tuple(clip.visual.grid_size) == (4, 2)
    source = clip.visual.positional_embedding.detach().clone()  # 1 + 4*2 rows
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        expected = clip.encode_image(x)
        native = ReIDViT(copy.deepcopy(clip.visual), (64, 32), 16, "bilinear", 0, 3.0).eval()
        torch.testing.assert_close(native.project(native(x)[1]), expected)
    vit = ReIDViT(clip.visual, (128, 64), 16, pos_interp="bicubic", num_cameras=0, sie_scale=3.0)
    assert vit.grid == (8, 4)
    torch.testing.assert_close(vit.positional_embedding[0], source[0])
    reference = _reference_grid(source, (4, 2), (8, 4), "bicubic")
    torch.testing.assert_close(vit.positional_embedding[1:].detach(), reference)


def test_resnet_keeps_clips_key_names():
    visual = _random_rn().visual
    clip_keys = list(visual.state_dict())
    resnet = ReIDResNet(visual, (128, 64), 1, "bilinear")
    assert list(resnet.state_dict()) == clip_keys  # conv1.weight, layer1.0.bn1.weight, ...
    assert "conv1.weight" in clip_keys and "attnpool.c_proj.weight" in clip_keys
    without_pool = ReIDResNet(_random_rn().visual, (128, 64), 1, "bilinear", keep_attnpool=False)
    assert list(without_pool.state_dict()) == [k for k in clip_keys if not k.startswith("attnpool")]
