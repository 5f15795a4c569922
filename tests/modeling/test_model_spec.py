"""A model knows its architecture: the spec a checkpoint records, the rebuild from it with no
config and no download, and the guard that stops foreign loaders from running random weights."""

import json

import pytest
import torch

from csgn_plugin.builders import model_config as preset_config
from csgn_plugin.builders import model_input as input_from_cfg
from csgn_plugin.compat import torchreid_api
from csgn_plugin.config import get_default_config
from csgn_plugin.modeling import CSGN, ModelSpec, build_model_from_spec
from csgn_plugin.modeling.architecture import ARCHITECTURE_STATE_BYTES, decode_architecture
from csgn_plugin.modeling.clip_weights import clip_arch_config
from csgn_plugin.modeling.csgn import config_from_architecture
from csgn_plugin.modeling.spec import input_spec, model_spec_for

tr = torchreid_api()
TINY = {"vit_arch": "csgn-tiny-vit", "resnet_arch": "csgn-tiny-rn", "image_size": (64, 32)}
INPUT = input_spec(64, 32, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def tiny(name="csgn", num_classes=5, **overrides):
    options = {**TINY, **overrides}
    if name == "clipreid_vitb16":
        options["resnet_arch"] = ""
    return CSGN(preset_config(name, **options), num_classes)


def test_architecture_lists_every_value_with_the_resolved_activation():
    model = tiny(vit_stride=12, num_cameras=3, sie_scale=1.5, fusion="sum", test_flip=True)
    expected = {
        "vit_arch": "csgn-tiny-vit",
        "resnet_arch": "csgn-tiny-rn",
        "activation": "gelu",  # 'auto' with random towers
        "image_size": [64, 32],
        "pixel_mean": [0.485, 0.456, 0.406],
        "pixel_std": [0.229, 0.224, 0.225],
        "vit_stride": 12,
        "resnet_last_stride": 1,
        "pos_interp": "bilinear",
        "num_cameras": 3,
        "sie_scale": 1.5,
        "modalities": ["rgb", "gray"],
        "prompt_template": "A photo of a {} person.",
        "prompt_n_ctx": 4,
        "prompt_init_std": 0.02,
        "fusion": "sum",
        "fusion_heads": 8,
        "fusion_init_std": 0.0,
        "test_neck": "before",
        "test_parts": ["auto"],
        "test_flip": True,
        "test_part_norm": False,
    }
    assert model.architecture() == expected
    assert json.loads(json.dumps(expected)) == expected  # plain JSON values
    # the state dict carries it in a fixed-size tensor
    record = model.state_dict()["_extra_state"]
    assert record.dtype == torch.uint8 and record.shape == (ARCHITECTURE_STATE_BYTES,)
    assert decode_architecture(record) == expected


def test_weights_from_an_openai_file_record_quick_gelu(tmp_path):
    import open_clip

    clip = open_clip.CLIP(**clip_arch_config("csgn-tiny-vit"), quick_gelu=True)
    torch.save(clip.state_dict(), tmp_path / "openai_like.pt")  # a flat state dict: OpenAI's
    model = tiny("clipreid_vitb16", vit_weights=str(tmp_path / "openai_like.pt"))
    assert model.architecture()["activation"] == "quick_gelu"
    # the rebuilt model uses QuickGELU too, without the file
    spec = model_spec_for("clipreid_vitb16", model, INPUT)
    rebuilt = build_model_from_spec(spec)
    assert rebuilt.activation == "quick_gelu" and rebuilt.vss.vit is not None
    rebuilt.load_state_dict(model.state_dict())
    imgs = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(imgs), model.eval()(imgs), rtol=0, atol=0)


def test_spec_round_trip_and_rebuild_give_the_same_model():
    model = tiny(
        num_classes=7, vit_stride=12, num_cameras=2, fusion="cross_attn", test_neck="after"
    )
    spec = model_spec_for("csgn", model, INPUT)
    data = json.loads(json.dumps(spec.to_dict()))
    assert set(data) == {"name", "num_classes", "architecture", "input"}
    assert data["input"] == {
        "height": 64,
        "width": 32,
        "norm_mean": [0.485, 0.456, 0.406],
        "norm_std": [0.229, 0.224, 0.225],
        "interpolation": "bilinear",
    }
    again = ModelSpec.from_dict(data)
    assert again == spec
    rebuilt = build_model_from_spec(again)
    assert rebuilt.num_classes == 7 and rebuilt.vss.vit.grid == (5, 2)
    assert rebuilt.vss.vit.camera_embedding.shape == (2, 64)
    rebuilt.load_state_dict(model.state_dict())
    imgs, cams = torch.randn(2, 3, 64, 32), torch.tensor([0, 1])
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(imgs, cams), model.eval()(imgs, cams))
    config = config_from_architecture(model.architecture())
    assert config == preset_config(
        "csgn",
        **TINY,
        activation="gelu",
        vit_stride=12,
        num_cameras=2,
        fusion="cross_attn",
        test_neck="after",
    )


def test_torchreid_models_in_a_spec():
    spec = ModelSpec("osnet_x0_25", 6, {"loss": "triplet"}, INPUT)
    model = build_model_from_spec(ModelSpec.from_dict(spec.to_dict()))
    assert type(model).__name__ == "OSNet" and model.loss == "triplet"
    assert model.classifier.out_features == 6
    assert model_spec_for("osnet_x0_25", model, INPUT, "triplet", 6) == spec
    with pytest.raises(ValueError, match="needs the loss it was built with and its num_classes"):
        model_spec_for("osnet_x0_25", model, INPUT)
    with pytest.raises(ValueError, match="loss=None, num_classes=6"):
        model_spec_for("osnet_x0_25", model, INPUT, num_classes=6)
    with pytest.raises(ValueError, match="neither a CSGN model .* nor a torchreid model"):
        build_model_from_spec(ModelSpec("osnet_x9", 6, {"loss": "softmax"}, INPUT))


def test_input_from_the_project_config():
    cfg = get_default_config()
    assert input_from_cfg(cfg) == {
        "height": 256,
        "width": 128,
        "norm_mean": [0.485, 0.456, 0.406],
        "norm_std": [0.229, 0.224, 0.225],
        "interpolation": "bilinear",
    }


def _spec_dict(**changes):
    data = model_spec_for("csgn", tiny(), INPUT).to_dict()
    for path, value in changes.items():
        node, *keys = path.split("__")
        target = data if not keys else data[node]
        key = keys[0] if keys else node
        if value is KeyError:
            del target[key]
        else:
            target[key] = value
    return data


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"input": KeyError}, r"model_spec: missing keys \['input'\]"),
        ({"extra": 1}, r"unknown keys \['extra'\]"),
        ({"num_classes": 0}, "model_spec.num_classes must be a positive int"),
        ({"input__height": "64"}, "model_spec.input.height must be a positive int"),
        ({"input__norm_std": [0.2, 0.2]}, "model_spec.input.norm_std must be 3 numbers"),
        ({"input__interpolation": "area"}, "model_spec.input.interpolation must be one of"),
        ({"architecture__vit_stride": KeyError}, r"architecture: missing keys \['vit_stride'\]"),
        ({"architecture__vit_stride": "12"}, "model_spec.architecture.vit_stride: expected"),
        ({"architecture__activation": "auto"}, "activation must be resolved"),
        ({"input__width": 64}, r"input size \(64, 64\) differs from architecture.image_size"),
        ({"input__norm_mean": [0.5, 0.5, 0.5]}, "input.norm_mean .* differs from architecture"),
        ({"name": "clipreid_rn50"}, r"contradicts model 'clipreid_rn50' on \['vit_arch'"),
    ],
)
def test_bad_specs_are_refused_naming_the_key(changes, message):
    with pytest.raises(ValueError, match=message):
        ModelSpec.from_dict(_spec_dict(**changes))


def test_a_torchreid_spec_needs_its_loss():
    with pytest.raises(ValueError, match="architecture of torchreid model 'osnet_x0_25'"):
        ModelSpec("osnet_x0_25", 6, {}, INPUT)


# ----------------------------------------------------------------- foreign loaders
def _checkpoint(model, path):
    torch.save({"state_dict": model.state_dict()}, path)
    return str(path)


def test_torchreid_loader_refuses_weights_of_another_architecture(tmp_path):
    """torchreid keeps same-name same-shape tensors; the fixed-size architecture record is one
    of them, and the model refuses it when it describes another model."""
    path = _checkpoint(tiny(activation="quick_gelu", vit_stride=12, test_flip=True), tmp_path / "a")
    target = tiny()
    before = {k: v.clone() for k, v in target.state_dict().items() if k != "_extra_state"}
    with pytest.raises(ValueError) as err:
        tr.utils.load_pretrained_weights(target, path)
    message = str(err.value)
    for line in (
        "activation (clip.quick_gelu on|off): 'quick_gelu' -> 'gelu'",
        "test_flip (csgn.test_flip): True -> False",
        "vit_stride (clip.vit_stride): 12 -> 16",
        "csgn_plugin.load_extractor(path)",
    ):
        assert line in message
    assert "num_classes" not in message
    # torch refuses the load as a whole: no tensor of the foreign model is left behind
    after = target.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_torchreid_loader_accepts_the_same_architecture_with_other_classes(tmp_path):
    source = tiny(num_classes=9)
    path = _checkpoint(source, tmp_path / "b")
    target = tiny(num_classes=1)  # as FeatureExtractor builds it
    tr.utils.load_pretrained_weights(target, path)
    torch.testing.assert_close(target.vss.vit.proj, source.vss.vit.proj)
    imgs = torch.randn(1, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(target.eval()(imgs), source.eval()(imgs))


def test_feature_extractor_refuses_a_tiny_checkpoint(tmp_path):
    """The issue's case: FeatureExtractor builds the real-size csgn (about 6 s on this CPU)."""
    path = _checkpoint(tiny(num_classes=3), tmp_path / "tiny.pth")
    with pytest.raises(ValueError, match="vit_arch .*'csgn-tiny-vit' -> 'ViT-B-16'"):
        tr.utils.FeatureExtractor(model_name="csgn", model_path=path, device="cpu", verbose=False)
