"""CLIP towers at ReID sizes: grids, positional interpolation, weight formats, SIE."""

import copy
import warnings

import open_clip
import pytest
import torch
import torch.nn.functional as F

from csgn_plugin.modeling.clip_towers import (
    ReIDResNet,
    ReIDViT,
    load_clip,
    read_clip_checkpoint,
    resnet_grid,
    vit_grid,
)

TEXT = ["A photo of a person in a red coat.", "a grey photo"]


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
    clip = load_clip("csgn-tiny-vit")
    source = clip.visual.positional_embedding.detach().clone()  # 1 + 14x14 rows
    vit = ReIDViT(clip.visual, size, stride=stride, pos_interp=mode)
    grid = vit_grid(size, 16, stride)
    assert vit.positional_embedding.shape == (1 + grid[0] * grid[1], 64)
    torch.testing.assert_close(vit.positional_embedding[0], source[0])  # class token kept
    expected = _reference_grid(source, (14, 14), grid, mode)
    torch.testing.assert_close(vit.positional_embedding[1:].detach(), expected)
    penultimate, final = vit(torch.randn(2, 3, *size))
    assert penultimate.shape == final.shape == (2, 64)
    assert vit.project(final).shape == (2, 64)


def test_resnet_attnpool_interpolation_and_last_stride():
    clip = load_clip("csgn-tiny-rn")
    source = clip.visual.attnpool.positional_embedding.detach().clone()  # 1 + 7x7 rows
    resnet = ReIDResNet(clip.visual, (256, 128), last_stride=1)
    assert resnet.grid == (16, 8)
    torch.testing.assert_close(resnet.attnpool.positional_embedding[0], source[0])
    expected = _reference_grid(source, (7, 7), (16, 8), "bilinear")
    torch.testing.assert_close(resnet.attnpool.positional_embedding[1:].detach(), expected)
    layer3, layer4 = resnet(torch.randn(2, 3, 256, 128))
    assert layer3.shape == (2, 128, 16, 8)
    assert layer4.shape == (2, 256, 16, 8)  # last stride 1: same map as layer 3
    assert resnet.attnpool(layer4).shape == (2, 64)


def test_resnet_without_attnpool_has_no_pool_parameters():
    resnet = ReIDResNet(load_clip("csgn-tiny-rn").visual, (128, 64), keep_attnpool=False)
    assert resnet.attnpool is None
    assert not [n for n, _ in resnet.named_parameters() if "attnpool" in n]


def test_towers_at_native_geometry_equal_open_clip():
    vit_clip, rn_clip = load_clip("csgn-tiny-vit"), load_clip("csgn-tiny-rn")
    vit_clip.eval(), rn_clip.eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected_vit = vit_clip.encode_image(x)
        expected_rn = rn_clip.encode_image(x)
        vit = ReIDViT(copy.deepcopy(vit_clip.visual), (224, 224), stride=16).eval()
        resnet = ReIDResNet(copy.deepcopy(rn_clip.visual), (224, 224), last_stride=2).eval()
        torch.testing.assert_close(vit.project(vit(x)[1]), expected_vit)
        torch.testing.assert_close(resnet.attnpool(resnet(x)[1]), expected_rn)


def test_sie_adds_scaled_camera_vector_to_class_token():
    clip = load_clip("csgn-tiny-vit")
    with_sie = ReIDViT(copy.deepcopy(clip.visual), (128, 64), num_cameras=3, sie_scale=3.0)
    plain = ReIDViT(copy.deepcopy(clip.visual), (128, 64))
    vector = torch.randn(64)
    with torch.no_grad():
        with_sie.camera_embedding[2] = vector
        plain.class_embedding += 3.0 * vector  # the same shift, applied by hand
    x = torch.randn(2, 3, 128, 64)
    with torch.no_grad():
        shifted = with_sie(x, torch.tensor([2, 2]))
        torch.testing.assert_close(shifted[1], plain(x)[1])
        assert not torch.allclose(with_sie(x)[1], shifted[1])  # no camids: no embedding


def _save_formats(tmp_path):
    """Random tiny CLIPs written the ways OpenAI and open_clip distribute weights."""
    openai_like = open_clip.CLIP(**_cfg("csgn-tiny-vit"), quick_gelu=True).eval()
    open_clip_like = open_clip.CLIP(**_cfg("csgn-tiny-vit"), quick_gelu=False).eval()
    paths = {}
    # OpenAI's released .pt files are TorchScript archives of the whole CLIP model.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace_module(
            openai_like,
            {"encode_image": (torch.ones(1, 3, 224, 224),)},
            check_trace=False,
        )
        torch.jit.save(traced, str(tmp_path / "ViT-tiny.pt"))
    paths["openai-torchscript"] = (tmp_path / "ViT-tiny.pt", openai_like)
    # OpenAI's clip package state dict: flat CLIP names, many tensors in float16.
    state = {
        k: (v.half() if v.is_floating_point() else v) for k, v in openai_like.state_dict().items()
    }
    state["input_resolution"] = torch.tensor(224)  # metadata OpenAI's archives carry
    torch.save(state, tmp_path / "openai_state.pth")
    paths["openai-state-dict"] = (tmp_path / "openai_state.pth", openai_like)
    # open_clip's training checkpoint: DDP-prefixed names under 'state_dict'.
    torch.save(
        {
            "epoch": 3,
            "name": "run",
            "state_dict": {f"module.{k}": v for k, v in open_clip_like.state_dict().items()},
        },
        tmp_path / "epoch_3.pt",
    )
    paths["open_clip"] = (tmp_path / "epoch_3.pt", open_clip_like)
    return paths


def _cfg(arch):
    from csgn_plugin.modeling.clip_towers import TINY_ARCHS

    return copy.deepcopy(TINY_ARCHS[arch])


def test_every_weight_format_loads_to_the_source_outputs(tmp_path):
    x = torch.randn(2, 3, 224, 224)
    tokens = open_clip.tokenize(TEXT, context_length=16)  # the tiny text tower's length
    for fmt, (path, source) in _save_formats(tmp_path).items():
        state, detected = read_clip_checkpoint(str(path))
        assert detected == fmt
        assert "input_resolution" not in state
        loaded = load_clip("csgn-tiny-vit", str(path)).eval()  # quick_gelu 'auto'
        with torch.no_grad():
            exp_img, exp_txt = source.encode_image(x), source.encode_text(tokens)
            # float16 storage rounds the weights: compare at half precision
            tol = {"atol": 2e-2, "rtol": 2e-2} if fmt == "openai-state-dict" else {}
            torch.testing.assert_close(loaded.encode_image(x), exp_img, **tol)
            torch.testing.assert_close(loaded.encode_text(tokens), exp_txt, **tol)
            if fmt != "openai-state-dict":
                # the wrong activation would change the outputs: the check has teeth
                wrong = "off" if fmt.startswith("openai") else "on"
                other = load_clip("csgn-tiny-vit", str(path), quick_gelu=wrong).eval()
                assert not torch.allclose(other.encode_text(tokens), exp_txt, atol=1e-5)


def test_reid_towers_from_a_file_keep_the_file_weights(tmp_path):
    path, source = _save_formats(tmp_path)["openai-torchscript"]
    vit = ReIDViT(load_clip("csgn-tiny-vit", str(path)).visual, (256, 128))
    torch.testing.assert_close(
        vit.transformer.resblocks[1].mlp.c_fc.weight,
        source.visual.transformer.resblocks[1].mlp.c_fc.weight,
    )
    expected = _reference_grid(
        source.visual.positional_embedding.detach(), (14, 14), (16, 8), "bilinear"
    )
    torch.testing.assert_close(vit.positional_embedding[1:].detach(), expected)


def test_weight_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="unknown CLIP architecture 'ViT-Q-99'"):
        load_clip("ViT-Q-99")
    with pytest.raises(ValueError, match="neither an existing file nor a pretrained tag"):
        load_clip("csgn-tiny-vit", "no_such_tag")
    rn_file = tmp_path / "rn.pth"
    torch.save(load_clip("csgn-tiny-rn").state_dict(), rn_file)
    with pytest.raises(ValueError, match="rn.pth.*does not fit CLIP architecture 'csgn-tiny-vit'"):
        load_clip("csgn-tiny-vit", str(rn_file))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="junk.pt"):
        load_clip("csgn-tiny-vit", str(junk))
    with pytest.raises(ValueError, match="quick_gelu"):
        load_clip("csgn-tiny-vit", quick_gelu="maybe")
