"""CLIP-ReID's released checkpoints: recognised, checked against the model, converted, and run
with CLIP-ReID's inference feature.

The CLIP-ReID files here are written by the tests from what CLIP-ReID's code saves (its
``build_transformer.state_dict()``: ``image_encoder.*`` = CLIP's visual tower at the ReID size,
``text_encoder.*``, ``prompt_learner.*``, ``bottleneck*``, ``classifier*``, ``cv_embed``), with
real shapes and random values, never with the converter under test. Real-size models are slow
on a CPU: the tests that run them are marked ``slow`` (about 25-40 s each on 2 cores); the others
use shapes on the 'meta' device or tiny towers.
"""

import importlib.util
import os

import open_clip
import pytest
import torch
import torch.nn.functional as F
from dataset_trees import build_market1501
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import QuickGELU, VisionTransformer
from torch import nn

from csgn_plugin.builders import model_config as preset_config
from csgn_plugin.evaluation.evaluator import Evaluator
from csgn_plugin.launcher import main
from csgn_plugin.modeling import CSGN
from csgn_plugin.modeling.clip_weights import clip_arch_config
from csgn_plugin.modeling.clipreid_format import (
    clipreid_facts,
    clipreid_model_spec,
    convert_clipreid_state_dict,
    infer_vit_stride,
    is_clipreid_state_dict,
)
from csgn_plugin.modeling.spec import ModelSpec, build_model_from_spec, input_spec, model_spec_for
from csgn_plugin.modeling.weights import CheckpointMismatchError, load_weights_file

# token grids at 256x128: ((256 - 16) // s + 1, (128 - 16) // s + 1)
VIT_GRIDS = {16: (16, 8), 12: (21, 10)}
RN50_GRID = (16, 8)  # layer 4 with stride 1 at 256x128
BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
HALF = [0.5, 0.5, 0.5]
IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_tool = importlib.util.spec_from_file_location(
    "convert_clipreid", os.path.join(ROOT, "tools", "convert_clipreid.py")
)
convert_tool = importlib.util.module_from_spec(_tool)
_tool.loader.exec_module(convert_tool)


def resize_like_clipreid(pos, grid):
    """CLIP-ReID's resize_pos_embed: the square grid of rows 1.. to ``grid``, bilinear."""
    side = round((pos.shape[0] - 1) ** 0.5)
    table = pos[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    table = F.interpolate(table, size=grid, mode="bilinear")
    return torch.cat([pos[:1], table.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)])


def clipreid_state_dict(clip_state, tower, grid, num_classes=5, cameras=0, device="cpu"):
    """What CLIP-ReID's model saves, from an OpenAI-named CLIP state dict plus its heads."""
    feature, projected = (768, 512) if tower == "vit" else (2048, 1024)
    state = {}
    for key, value in clip_state.items():
        if key.startswith("visual."):
            state["image_encoder." + key[len("visual.") :]] = value
        elif key.startswith(("transformer.", "ln_final.")) or key in (
            "positional_embedding",
            "text_projection",
        ):
            state["text_encoder." + key] = value
    grid_key = "positional_embedding" if tower == "vit" else "attnpool.positional_embedding"
    state["image_encoder." + grid_key] = resize_like_clipreid(
        state["image_encoder." + grid_key], grid
    )

    def bn(name, dim):
        state[f"{name}.weight"] = torch.randn(dim, device=device)
        state[f"{name}.bias"] = torch.randn(dim, device=device)
        state[f"{name}.running_mean"] = torch.randn(dim, device=device)
        state[f"{name}.running_var"] = torch.rand(dim, device=device) + 0.5
        state[f"{name}.num_batches_tracked"] = torch.tensor(100, device=device)

    bn("bottleneck", feature)
    bn("bottleneck_proj", projected)
    state["classifier.weight"] = torch.randn(num_classes, feature, device=device)
    state["classifier_proj.weight"] = torch.randn(num_classes, projected, device=device)
    state["prompt_learner.cls_ctx"] = torch.randn(num_classes, 4, 512, device=device)
    state["prompt_learner.token_prefix"] = torch.randn(1, 5, 512, device=device)
    state["prompt_learner.token_suffix"] = torch.randn(1, 68, 512, device=device)
    if cameras:
        state["cv_embed"] = torch.randn(cameras, 768, device=device)
    return state


def plugin_heads(state, part):
    """The same head tensors under the plugin's names (the mapping written out by hand)."""
    heads = {f"vss.necks.{part}.{k}": state[f"bottleneck.{k}"] for k in BN_KEYS}
    heads.update({f"vss.necks.proj.{k}": state[f"bottleneck_proj.{k}"] for k in BN_KEYS})
    heads[f"vss.classifiers.{part}.weight"] = state["classifier.weight"]
    heads["vss.classifiers.proj.weight"] = state["classifier_proj.weight"]
    heads["prompt_learner.ctx.rgb"] = state["prompt_learner.cls_ctx"]
    heads["prompt_learner.token_prefix"] = state["prompt_learner.token_prefix"]
    heads["prompt_learner.token_suffix"] = state["prompt_learner.token_suffix"]
    if "cv_embed" in state:
        heads["vss.vit.camera_embedding"] = state["cv_embed"]
    return heads


def meta_clip_state(arch):
    with torch.device("meta"):
        return open_clip.CLIP(**clip_arch_config(arch), quick_gelu=True).state_dict()


# ----------------------------------------------------------------- fast: names, facts, errors
def test_key_mapping():
    t = torch.zeros(1)
    vit = {
        "module.image_encoder.proj": t,
        "module.image_encoder.transformer.resblocks.0.mlp.c_fc.weight": t,
        "module.cv_embed": t,
        "module.bottleneck.running_var": t,
        "module.bottleneck_proj.weight": t,
        "module.classifier.weight": t,
        "module.classifier_proj.weight": t,
        "module.prompt_learner.cls_ctx": t,
        "module.prompt_learner.token_suffix": t,
        "module.text_encoder.ln_final.bias": t,
    }
    assert list(convert_clipreid_state_dict(vit)) == [
        "vss.vit.proj",
        "vss.vit.transformer.resblocks.0.mlp.c_fc.weight",
        "vss.vit.camera_embedding",
        "vss.necks.global.running_var",
        "vss.necks.proj.weight",
        "vss.classifiers.global.weight",
        "vss.classifiers.proj.weight",
        "prompt_learner.ctx.rgb",
        "prompt_learner.token_suffix",
        "text_encoder.ln_final.bias",
    ]
    rn = {
        "image_encoder.layer4.0.downsample.0.weight": t,
        "image_encoder.attnpool.c_proj.bias": t,
        "bottleneck.weight": t,
        "bottleneck_proj.weight": t,
        "classifier.weight": t,
        "prompt_learner.cls_ctx": t,
    }
    assert list(convert_clipreid_state_dict(rn)) == [
        "vss.resnet.layer4.0.downsample.0.weight",
        "vss.resnet.attnpool.c_proj.bias",
        "vss.necks.local.weight",
        "vss.necks.proj.weight",
        "vss.classifiers.local.weight",
        "prompt_learner.ctx.rgb",
    ]
    with pytest.raises(ValueError, match=r"keys CLIP-ReID's model does not have: \['center'\]"):
        convert_clipreid_state_dict({**rn, "center": t})


def test_recognition():
    state = clipreid_state_dict(meta_clip_state("RN50"), "rn50", RN50_GRID, device="meta")
    assert is_clipreid_state_dict(state)
    assert is_clipreid_state_dict({f"module.{k}": v for k, v in state.items()})
    assert not is_clipreid_state_dict(meta_clip_state("RN50"))  # a plain CLIP
    tiny = CSGN(preset_config("clipreid_vitb16", vit_arch="csgn-tiny-vit", image_size=(64, 32)), 2)
    assert not is_clipreid_state_dict(tiny.state_dict())  # our own names


@pytest.mark.parametrize(
    ("tower", "stride", "cameras", "expected"),
    [
        ("vit", 16, 0, {"name": "clipreid_vitb16", "vit_stride": 16, "num_cameras": 0}),
        ("vit", 12, 6, {"name": "clipreid_vitb16", "vit_stride": 12, "num_cameras": 6}),
        ("rn50", None, 0, {"name": "clipreid_rn50", "resnet_last_stride": 1, "num_cameras": 0}),
    ],
)
def test_what_each_release_implies(tower, stride, cameras, expected):
    arch = "ViT-B-16" if tower == "vit" else "RN50"
    grid = VIT_GRIDS[stride] if tower == "vit" else RN50_GRID
    state = clipreid_state_dict(meta_clip_state(arch), tower, grid, 7, cameras, "meta")
    facts = clipreid_facts(state, (256, 128))
    assert {k: facts[k] for k in expected} == expected
    assert facts["activation"] == "quick_gelu" and facts["num_classes"] == 7
    spec = clipreid_model_spec(state)
    architecture = spec.architecture
    assert spec.name == expected["name"] and spec.num_classes == 7
    assert architecture["activation"] == "quick_gelu" and architecture["modalities"] == ["rgb"]
    assert architecture["vit_arch"] == ("ViT-B-16" if tower == "vit" else "")
    assert architecture["resnet_arch"] == ("RN50" if tower == "rn50" else "")
    # CLIP-ReID's inference feature: every part, before the BN necks, no flip
    assert (architecture["test_neck"], architecture["test_parts"]) == ("before", ["auto"])
    assert architecture["test_flip"] is False
    # the SIE scale is not in the file: CLIP-ReID's README trains SIE + stride 12 with 1.0
    assert architecture["sie_scale"] == (1.0 if cameras else 3.0)
    assert clipreid_model_spec(state, sie_scale=2.0).architecture["sie_scale"] == 2.0
    mean, std = (HALF, HALF) if tower == "vit" else IMAGENET
    assert spec.input == {
        "height": 256,
        "width": 128,
        "norm_mean": mean,
        "norm_std": std,
        "interpolation": "bilinear",
    }
    assert ModelSpec.from_dict(spec.to_dict()) == spec


def test_stride_and_input_size_are_checked():
    assert infer_vit_stride(128, (256, 128)) == 16
    assert infer_vit_stride(210, (256, 128)) == 12
    assert infer_vit_stride(24 * 8, (384, 128)) == 16
    with pytest.raises(ValueError, match="210 tokens.*set data.height / data.width"):
        infer_vit_stride(210, (384, 128))
    rn = clipreid_state_dict(meta_clip_state("RN50"), "rn50", RN50_GRID, device="meta")
    with pytest.raises(ValueError, match="128 tokens.*24x8 layer-4 map.*data.height"):
        clipreid_facts(rn, (384, 128))
    with pytest.raises(ValueError, match="data.height"):  # the converter's --height too
        clipreid_model_spec(rn, {"height": 384})


def test_a_release_that_does_not_fit_the_model_is_refused(monkeypatch):
    state = clipreid_state_dict(meta_clip_state("ViT-B-16"), "vit", VIT_GRIDS[12], 5, 6, "meta")
    monkeypatch.setattr("csgn_plugin.modeling.weights.load_checkpoint", lambda path: state)
    model = CSGN(
        preset_config("clipreid_vitb16", vit_arch="csgn-tiny-vit", image_size=(256, 128)), 5
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointMismatchError) as err:
        load_weights_file(model, "released/ViT-B-16_60.pth", "strict")
    message = str(err.value)
    for expected in (
        "'released/ViT-B-16_60.pth' is a CLIP-ReID checkpoint of model clipreid_vitb16",
        "activation (clip.quick_gelu on|off): file 'quick_gelu', model 'gelu'",
        "vit_arch (clip.vit_arch): file 'ViT-B-16', model 'csgn-tiny-vit'",
        "vit_stride (clip.vit_stride): file 12, model 16",
        "num_cameras (clip.sie_camera): file 6, model 0",
        "tools/convert_clipreid.py",
    ):
        assert expected in message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(CheckpointMismatchError, match="load it into model clipreid_vitb16"):
        load_weights_file(nn.Linear(2, 2), "released/ViT-B-16_60.pth", "strict")


def test_the_converter_refuses_other_files(tmp_path, capsys):
    torch.save({"state_dict": {"conv.weight": torch.zeros(2)}}, tmp_path / "other.pth")
    args = [str(tmp_path / "other.pth"), str(tmp_path / "out.pth")]
    assert convert_tool.run(convert_tool.main, args) == 2  # a user error: one line, exit 2
    assert "is not a CLIP-ReID checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "out.pth").exists()


# ----------------------------------------------------------------- slow: real-size releases
def clipreid_vit_feature(state, imgs, stride, camids=None, sie_scale=3.0):
    """CLIP-ReID's ViT-B/16 inference feature, as its code computes it, with open_clip's
    VisionTransformer built at the file's grid: [class token after ln_post, its projection]; SIE
    adds ``sie_scale * cv_embed[cam]`` to the class token before the positional embedding."""
    grid = VIT_GRIDS[stride]
    visual = VisionTransformer(
        image_size=(grid[0] * 16, grid[1] * 16),
        patch_size=16,
        width=768,
        layers=12,
        heads=12,
        mlp_ratio=4.0,
        output_dim=512,
        act_layer=QuickGELU,
    )
    prefix = "image_encoder."
    visual.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
    visual.conv1.stride = (stride, stride)  # CLIP-ReID's overlapping patches
    proj = visual.proj.detach().clone()
    visual.proj = None  # the pooled feature before the projection
    visual.eval()
    base = visual.class_embedding.detach().clone()
    feats = []
    with torch.no_grad():
        for i in range(imgs.shape[0]):
            if camids is not None:
                visual.class_embedding.copy_(base + sie_scale * state["cv_embed"][camids[i]])
            pooled = visual(imgs[i : i + 1])
            feats.append(torch.cat([pooled, pooled @ proj], dim=1))
    return torch.cat(feats)


def clipreid_rn50_feature(state, imgs):
    """CLIP-ReID's RN50 inference feature: [average-pooled layer-4 map, attention pool]. Its
    layer 4 has stride 1: no average pool in the first block, AvgPool2d(1) on the shortcut."""
    visual = ModifiedResNet(layers=[3, 4, 6, 3], output_dim=1024, heads=32, width=64)
    visual.layer4[0].avgpool = nn.Identity()
    visual.layer4[0].downsample._modules["-1"] = nn.AvgPool2d(1)
    rows = state["image_encoder.attnpool.positional_embedding"].shape[0]
    visual.attnpool.positional_embedding = nn.Parameter(torch.empty(rows, 2048))
    prefix = "image_encoder."
    visual.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
    visual.eval()
    with torch.no_grad():
        x = visual.stem(imgs)
        x = visual.layer4(visual.layer3(visual.layer2(visual.layer1(x))))
        pooled = F.avg_pool2d(x, x.shape[2:]).flatten(1)
        return torch.cat([pooled, visual.attnpool(x)], dim=1)


@pytest.fixture(scope="module")
def openai_clips(tmp_path_factory):
    """Random ViT-B/16 and RN50 CLIPs with QuickGELU, as OpenAI's flat state dicts in float16
    (half the file); the float32 values the tests use are the same rounded ones."""
    folder = tmp_path_factory.mktemp("openai")
    clips = {}
    for arch in ("ViT-B-16", "RN50"):
        torch.manual_seed(0)
        state = open_clip.CLIP(**clip_arch_config(arch), quick_gelu=True).state_dict()
        half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        path = folder / f"{arch}.pt"
        torch.save(half, path)
        clips[arch] = (str(path), {k: v.float() for k, v in half.items()})
    return clips


def _native_and_converted(tmp_path, clips, tower, stride=16, cameras=0, ddp=False):
    """(native, converted, clipreid_state, load report): the same weights loaded the plugin's
    way (CLIP file + heads by our names) and from the CLIP-ReID file."""
    arch, name = ("ViT-B-16", "clipreid_vitb16") if tower == "vit" else ("RN50", "clipreid_rn50")
    path, clip_state = clips[arch]
    grid = VIT_GRIDS[stride] if tower == "vit" else RN50_GRID
    state = clipreid_state_dict(clip_state, tower, grid, 5, cameras)
    released = tmp_path / "released.pth"
    torch.save({f"module.{k}": v for k, v in state.items()} if ddp else state, released)

    mean, std = (HALF, HALF) if tower == "vit" else IMAGENET
    options = {"pixel_mean": tuple(mean), "pixel_std": tuple(std)}
    if tower == "vit":
        sie_scale = 1.0 if cameras else 3.0
        options.update(
            vit_weights=path, vit_stride=stride, num_cameras=cameras, sie_scale=sie_scale
        )
    else:
        options.update(resnet_weights=path)
    native = CSGN(preset_config(name, **options), 5)
    part = "global" if tower == "vit" else "local"
    incompatible = native.load_state_dict(plugin_heads(state, part), strict=False)
    assert not incompatible.unexpected_keys

    spec = clipreid_model_spec(torch.load(released, map_location="cpu"))
    converted = build_model_from_spec(spec)
    report = load_weights_file(converted, str(released), "strict")
    return native, converted, state, report


def _evaluate_through_tools_test(tmp_path, name, native, released):
    """tools/test.py on the CLIP-ReID file and on the same weights saved the plugin's way (the
    natively loaded model and its spec): the same query features (CLIP-ReID's inference feature,
    camera ids passed to SIE) and the same results, on a small Market-1501 tree (torchreid's own
    data set, CLIP-ReID's home ground) evaluated at the model's 256x128."""
    config = native.config
    size = tuple(config.image_size)
    input = input_spec(*size, list(config.pixel_mean), list(config.pixel_std), "bilinear")
    native_path = tmp_path / "native.pth"
    spec = model_spec_for(name, native, input).to_dict()
    torch.save({"state_dict": native.state_dict(), "model_spec": spec}, native_path)
    tree = build_market1501(tmp_path)
    config_file = os.path.join(ROOT, "configs", f"{name}_market1501.yaml")
    query_features = []  # what each evaluation extracted itself (no second extraction)
    extract = Evaluator.extract

    def recording_extract(self, model, loader, what):
        features, labels = extract(self, model, loader, what)
        if what.endswith("query features"):
            query_features.append(features)
        return features, labels

    engines = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Evaluator, "extract", recording_extract)
        for path in (released, native_path):
            engines.append(
                main(
                    [
                        "--config-file", config_file, "data.root", tree.root, "data.workers", "0",
                        "data.save_dir", str(tmp_path / f"eval_{path.stem}"), "test.batch_size",
                        "6", "runtime.device", "cpu", "model.load_weights", str(path),
                    ],
                    test_only=True,
                )
            )  # fmt: skip
    assert [engine.runtime.image_size for engine in engines] == [(256, 128)] * 2
    assert len(query_features) == 2 and len(query_features[0]) == len(tree.truth["query"])
    torch.testing.assert_close(query_features[0], query_features[1], rtol=0, atol=0)
    for mode, res in engines[1].last_results["market1501"].items():
        assert float(engines[0].last_results["market1501"][mode].mAP) == float(res.mAP)


def _assert_same_model(native, converted):
    a, b = native.state_dict(), converted.state_dict()
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.slow
def test_vit_b16_stride_16(tmp_path, openai_clips):
    native, converted, state, report = _native_and_converted(tmp_path, openai_clips, "vit")
    assert report.complete and report.converted_from == "CLIP-ReID"
    assert converted.activation == "quick_gelu" and converted.vss.vit.grid == (16, 8)
    _assert_same_model(native, converted)
    imgs = torch.randn(2, 3, 256, 128)
    with torch.no_grad():
        feature = converted.eval()(imgs)
        assert feature.shape == (2, 768 + 512)
        torch.testing.assert_close(feature, native.eval()(imgs), rtol=0, atol=0)
    torch.testing.assert_close(feature, clipreid_vit_feature(state, imgs, 16))
    _evaluate_through_tools_test(tmp_path, "clipreid_vitb16", native, tmp_path / "released.pth")


@pytest.mark.slow
def test_vit_b16_stride_12_with_sie_saved_under_ddp(tmp_path, openai_clips):
    native, converted, state, report = _native_and_converted(
        tmp_path, openai_clips, "vit", stride=12, cameras=6, ddp=True
    )
    assert report.complete and converted.vss.vit.grid == (21, 10)
    assert converted.vss.vit.camera_embedding.shape == (6, 768)
    assert converted.architecture()["sie_scale"] == 1.0
    _assert_same_model(native, converted)
    imgs, cams = torch.randn(2, 3, 256, 128), torch.tensor([4, 1])
    with torch.no_grad():
        feature = converted.eval()(imgs, cams)
        torch.testing.assert_close(feature, native.eval()(imgs, cams), rtol=0, atol=0)
    torch.testing.assert_close(feature, clipreid_vit_feature(state, imgs, 12, cams, 1.0))
    _evaluate_through_tools_test(tmp_path, "clipreid_vitb16", native, tmp_path / "released.pth")


@pytest.mark.slow
def test_rn50_and_the_converter_tool(tmp_path, openai_clips):
    native, converted, state, report = _native_and_converted(tmp_path, openai_clips, "rn50")
    assert report.complete and converted.vss.resnet.grid == (16, 8)
    assert converted.embed_dim == 1024 and converted.activation == "quick_gelu"
    _assert_same_model(native, converted)
    imgs = torch.randn(2, 3, 256, 128)
    with torch.no_grad():
        feature = converted.eval()(imgs)
        assert feature.shape == (2, 2048 + 1024)
        torch.testing.assert_close(feature, native.eval()(imgs), rtol=0, atol=0)
    torch.testing.assert_close(feature, clipreid_rn50_feature(state, imgs))
    _evaluate_through_tools_test(tmp_path, "clipreid_rn50", native, tmp_path / "released.pth")

    # the converter tool writes the same model, with the spec that rebuilds it
    out = tmp_path / "plugin.pth"
    assert convert_tool.main([str(tmp_path / "released.pth"), str(out)]) == 0
    written = torch.load(out, map_location="cpu")
    assert set(written) == {"state_dict", "model_spec", "converted_from"}
    spec = ModelSpec.from_dict(written["model_spec"])
    assert spec.name == "clipreid_rn50" and spec.architecture == converted.architecture()
    assert list(written["state_dict"]) == list(native.state_dict())
    for key, value in native.state_dict().items():
        assert torch.equal(written["state_dict"][key], value), key
