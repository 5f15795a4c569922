"""CLIP weight files in every format, through open_clip's reader, and the activation they imply."""

import json
import warnings

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from csgn_plugin.modeling.clip_weights import (
    clip_arch_config,
    load_clip,
    read_clip_checkpoint,
    recorded_activation,
    transformer_activation,
)
from csgn_plugin.modeling.tiny_archs import TINY_ARCHS

TEXT = ["A photo of a person in a red coat.", "a grey photo"]


def _tiny_clip(quick_gelu):
    return open_clip.CLIP(**clip_arch_config("csgn-tiny-vit"), quick_gelu=quick_gelu).eval()


def _save_formats(tmp_path):
    """Random tiny CLIPs written the ways OpenAI and open_clip distribute weights."""
    openai_like, open_clip_like = _tiny_clip(True), _tiny_clip(False)
    paths = {}
    # OpenAI's released .pt files are TorchScript archives of the whole CLIP model.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace_module(
            openai_like, {"encode_image": (torch.ones(1, 3, 224, 224),)}, check_trace=False
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
    # open_clip's hub format: safetensors beside open_clip_config.json (which records QuickGELU
    # for OpenAI's weights)
    hub = tmp_path / "hub"
    hub.mkdir()
    save_file(openai_like.state_dict(), str(hub / "open_clip_model.safetensors"))
    model_cfg = {**clip_arch_config("csgn-tiny-vit"), "quick_gelu": True}
    (hub / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    paths["safetensors"] = (hub / "open_clip_model.safetensors", openai_like)
    return paths


def test_every_weight_format_loads_to_the_source_outputs(tmp_path):
    x = torch.randn(2, 3, 224, 224)
    tokens = open_clip.tokenize(TEXT, context_length=16)  # the tiny text tower's length
    for fmt, (path, source) in _save_formats(tmp_path).items():
        state, detected = read_clip_checkpoint(str(path))
        assert detected == fmt
        assert "input_resolution" not in state
        loaded = load_clip("csgn-tiny-vit", str(path), "auto").eval()
        expected_activation = "gelu" if fmt == "open_clip" else "quick_gelu"
        assert transformer_activation(loaded.transformer) == expected_activation, fmt
        with torch.no_grad():
            exp_img, exp_txt = source.encode_image(x), source.encode_text(tokens)
            # float16 storage rounds the weights: compare at half precision
            tol = {"atol": 2e-2, "rtol": 2e-2} if fmt == "openai-state-dict" else {}
            torch.testing.assert_close(loaded.encode_image(x), exp_img, **tol)
            torch.testing.assert_close(loaded.encode_text(tokens), exp_txt, **tol)
            if fmt != "openai-state-dict":
                # the wrong activation would change the outputs: the check has teeth
                wrong = "gelu" if expected_activation == "quick_gelu" else "quick_gelu"
                other = load_clip("csgn-tiny-vit", str(path), wrong).eval()
                assert not torch.allclose(other.encode_text(tokens), exp_txt, atol=1e-5)


def test_safetensors_activation_comes_from_the_hub_config(tmp_path):
    gelu_model = _tiny_clip(False)
    path = tmp_path / "open_clip_model.safetensors"
    save_file(gelu_model.state_dict(), str(path))
    # no config beside the file: the file does not say, 'auto' refuses and names the key
    assert recorded_activation(str(path)) is None
    with pytest.raises(ValueError, match="clip.quick_gelu"):
        load_clip("csgn-tiny-vit", str(path), "auto")
    assert transformer_activation(load_clip("csgn-tiny-vit", str(path), "gelu").transformer) == (
        "gelu"
    )
    # a hub config without quick_gelu: open_clip's default, GELU
    config = tmp_path / "open_clip_config.json"
    config.write_text(json.dumps({"model_cfg": clip_arch_config("csgn-tiny-vit")}))
    assert recorded_activation(str(path)) == "gelu"
    tokens = open_clip.tokenize(TEXT, context_length=16)
    with torch.no_grad():
        loaded = load_clip("csgn-tiny-vit", str(path), "auto").eval()
        torch.testing.assert_close(loaded.encode_text(tokens), gelu_model.encode_text(tokens))
    config.write_text("{not json")
    with pytest.raises(ValueError, match="open_clip_config.json.*model_cfg"):
        load_clip("csgn-tiny-vit", str(path), "auto")


def test_random_towers_and_architectures_that_name_their_activation(monkeypatch):
    assert transformer_activation(load_clip("csgn-tiny-vit", "", "auto").transformer) == "gelu"
    forced = load_clip("csgn-tiny-vit", "", "quick_gelu")
    assert transformer_activation(forced.transformer) == "quick_gelu"
    # an architecture config that names its activation (as open_clip's '*-quickgelu' do)
    monkeypatch.setitem(
        TINY_ARCHS, "tiny-quick", {**clip_arch_config("csgn-tiny-vit"), "quick_gelu": True}
    )
    assert transformer_activation(load_clip("tiny-quick", "", "auto").transformer) == "quick_gelu"
    gelu = load_clip("tiny-quick", "", "gelu")  # an explicit choice still wins
    assert transformer_activation(gelu.transformer) == "gelu"


def test_weight_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="unknown CLIP architecture 'ViT-Q-99'"):
        load_clip("ViT-Q-99", "", "auto")
    with pytest.raises(ValueError, match="neither an existing file nor a pretrained tag"):
        load_clip("csgn-tiny-vit", "no_such_tag", "auto")
    rn_file = tmp_path / "rn.pth"
    torch.save(load_clip("csgn-tiny-rn", "", "auto").state_dict(), rn_file)
    with pytest.raises(ValueError, match="rn.pth.*does not fit CLIP architecture 'csgn-tiny-vit'"):
        load_clip("csgn-tiny-vit", str(rn_file), "auto")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="junk.pt"):
        load_clip("csgn-tiny-vit", str(junk), "auto")
    bad_safetensors = tmp_path / "bad.safetensors"
    bad_safetensors.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    with pytest.raises(RuntimeError, match="bad.safetensors"):
        read_clip_checkpoint(str(bad_safetensors))
    torch.save({"epoch": 1}, tmp_path / "no_weights.pt")
    with pytest.raises(ValueError, match="neither a state dict nor an open_clip checkpoint"):
        read_clip_checkpoint(str(tmp_path / "no_weights.pt"))
    with pytest.raises(ValueError, match="activation must be one of"):
        load_clip("csgn-tiny-vit", "", "maybe")


def test_files_in_torchs_legacy_format_are_read(tmp_path):
    """Files saved before torch 1.6's zip format cannot be memory-mapped; they are read whole."""
    model = _tiny_clip(False)
    path = tmp_path / "legacy.pt"
    torch.save({"state_dict": model.state_dict()}, path, _use_new_zipfile_serialization=False)
    state, fmt = read_clip_checkpoint(str(path))
    assert fmt == "open_clip"
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
