"""The assembled models: torchreid factories, FeatureExtractor, stages, ablations, config."""

import dataclasses

import pytest
import torch

from csgn_plugin.builders import CLIP_MODEL_FACTORIES as MODEL_FACTORIES
from csgn_plugin.builders import build_clip_model, csgn_config
from csgn_plugin.builders import model_config as preset_config
from csgn_plugin.compat import torchreid_api
from csgn_plugin.config import get_default_config
from csgn_plugin.losses import HSFLoss, MutualLoss, label_smoothed_cross_entropy
from csgn_plugin.modeling import CSGN, CSGNConfig
from csgn_plugin.modeling.clip_weights import load_clip

tr = torchreid_api()
TINY = {"vit_arch": "csgn-tiny-vit", "resnet_arch": "csgn-tiny-rn", "image_size": (128, 64)}


def _tiny(name="csgn", num_classes=6, **overrides):
    options = dict(TINY)
    options.update(overrides)
    if name == "clipreid_vitb16":
        options["resnet_arch"] = ""
    if name == "clipreid_rn50":
        options["vit_arch"] = ""
    return CSGN(preset_config(name, **options), num_classes)


def _shapes(model):
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


# ----------------------------------------------------------------- real-size models (heavy)
# One real forward on the CPU (FeatureExtractor); the other real-size shape checks run on the
# 'meta' device, which propagates shapes and dtypes without computing.
def _on_meta(model, batch=2):
    model = model.to("meta")
    return model, torch.empty(batch, 3, *model.vss.image_size, device="meta")


def test_real_csgn_through_feature_extractor(tmp_path):
    """torchreid's FeatureExtractor builds 'csgn' (num_classes=1, pretrained=False because the
    weight file exists), loads the file and extracts 768 + 2048 + 512-d features."""
    weights = tmp_path / "csgn.pth"
    torch.save({"vss.necks.proj.weight": torch.full((512,), 2.0)}, weights)
    extractor = tr.utils.FeatureExtractor(
        model_name="csgn", model_path=str(weights), device="cpu", verbose=False
    )
    model = extractor.model
    assert isinstance(model, CSGN) and model.num_ids == 1
    assert model.modalities == ("rgb", "gray")
    torch.testing.assert_close(model.vss.necks["proj"].weight, torch.full((512,), 2.0))
    features = extractor(torch.randn(1, 3, 256, 128))
    assert features.shape == (1, 768 + 2048 + 512) and features.dtype == torch.float32
    assert torch.isfinite(features).all()
    model, imgs = _on_meta(model)
    out = model.train()(imgs)
    assert [t.shape for t in out["logits"]] == [(2, 1)] * 3
    assert [t.shape[1] for t in out["features"]] == [768, 768, 2048, 512]
    assert out["image_feature"].shape == (2, 512)
    assert all(t.dtype == torch.float32 for t in out["features"] + [out["image_feature"]])
    assert model.prompt_features(torch.tensor([0], device="meta"), "gray").shape == (1, 512)


def test_real_clipreid_vit_with_overlapping_patches():
    model = MODEL_FACTORIES["clipreid_vitb16"](num_classes=3, pretrained=False, vit_stride=12)
    assert model.vss.vit.grid == (21, 10) and model.modalities == ("rgb",)
    assert model.vss.resnet is None and model.vss.fusion is None
    model, imgs = _on_meta(model)
    assert model.eval()(imgs).shape == (2, 768 + 512)
    assert [t.shape[1] for t in model.train()(imgs)["features"]] == [768, 768, 512]


def test_real_clipreid_rn50_at_a_second_size():
    model = tr.models.build_model(
        "clipreid_rn50", num_classes=3, loss="triplet", pretrained=False, use_gpu=False
    )
    assert model.vss.vit is None and model.embed_dim == 1024  # RN50 CLIP's own text space
    model = MODEL_FACTORIES["clipreid_rn50"](num_classes=3, pretrained=False, image_size=(320, 160))
    assert model.vss.resnet.grid == (20, 10)
    model, imgs = _on_meta(model)
    out = model.train()(imgs)
    assert [t.shape[1] for t in out["features"]] == [1024, 2048, 1024]
    assert out["image_feature"].shape == (2, 1024)
    assert model.eval()(imgs).shape == (2, 2048 + 1024)


# ----------------------------------------------------------------- stages
def test_stage_one_trains_only_the_prompts():
    model = _tiny()
    model.set_stage(1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"prompt_learner.ctx.rgb", "prompt_learner.ctx.gray"}
    labels = torch.tensor([0, 0, 3, 5])
    with torch.no_grad():  # the engine caches these once
        imgs = torch.randn(4, 3, 128, 64)
        cached = {
            "rgb": model.prompt_image_features(imgs),
            "gray": model.prompt_image_features(model.to_grayscale(imgs)),
        }
    text = {m: model.prompt_features(labels, m) for m in model.modalities}
    loss, _ = MutualLoss(cross_modal_weight=1.0)(cached, text, labels)
    loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == trainable


def test_stage_two_trains_the_image_side():
    model = _tiny(num_cameras=3)  # with SIE so that the camera embedding is exercised
    model.set_stage(2)
    names = {n for n, _ in model.named_parameters()}
    expected = {n for n in names if n.startswith("vss.") and not n.startswith("vss.necks.")}
    expected |= {n for n in names if n.startswith("vss.necks.") and n.endswith(".weight")}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == expected  # prompts, text tower and BN-neck biases frozen
    assert "vss.vit.camera_embedding" in trainable
    labels = torch.tensor([0, 0, 1, 1])
    with torch.no_grad():
        bank = {m: model.prompt_features(torch.arange(6), m) for m in model.modalities}
    model.train()
    out = model(torch.randn(4, 3, 128, 64), torch.tensor([0, 1, 2, 0]))
    loss = sum(label_smoothed_cross_entropy(s, labels, 0.1) for s in out["logits"])
    loss = loss + sum(f.pow(2).mean() for f in out["features"])
    hsf, _ = HSFLoss({"rgb": 1.0, "gray": 1.0}, 0.1)(out["image_feature"], bank, labels)
    (loss + hsf).backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == trainable
    with pytest.raises(ValueError, match="stage must be 1 or 2"):
        model.set_stage(3)


def test_prompt_image_features_use_eval_mode_and_restore_it():
    model = _tiny("clipreid_rn50").train()
    imgs = torch.randn(3, 3, 128, 64)
    bn = model.vss.resnet.bn1
    before = bn.running_mean.clone()
    with torch.no_grad():
        train_mode = model.prompt_image_features(imgs)
        assert model.vss.resnet.training  # mode restored
        torch.testing.assert_close(bn.running_mean, before)  # BN statistics untouched
        model.eval()
        torch.testing.assert_close(model.prompt_image_features(imgs), train_mode)
        resnet = model.vss.resnet
        torch.testing.assert_close(train_mode, resnet.attnpool(resnet(imgs)[1]))


def test_model_grayscale_uses_the_data_normalisation():
    model = _tiny(pixel_mean=(0.5, 0.5, 0.5), pixel_std=(0.5, 0.5, 0.5))
    imgs = torch.tensor([1.0, 0.0, -1.0]).view(1, 3, 1, 1).expand(1, 3, 128, 64)
    luma = 0.299 * 1.0 + 0.587 * 0.5 + 0.114 * 0.0
    gray = model.to_grayscale(imgs)
    torch.testing.assert_close(gray[0, :, 5, 5], torch.full((3,), (luma - 0.5) / 0.5))


# ----------------------------------------------------------------- ablations
def test_ablation_switches_change_the_graph():
    full = _shapes(_tiny())
    assert {"prompt_learner.ctx.rgb", "prompt_learner.ctx.gray"} <= set(full)
    no_gray = _shapes(_tiny(modalities=("rgb",)))
    assert not [n for n in no_gray if "gray" in n]
    assert set(full) - set(no_gray) == {"prompt_learner.ctx.gray"}
    no_resnet = _shapes(_tiny(resnet_arch=""))
    assert not [n for n in no_resnet if n.startswith(("vss.resnet.", "vss.fusion."))]
    # CSGN without ResNet and grayscale prompts is CLIP-ReID, parameter for parameter
    assert _shapes(_tiny(resnet_arch="", modalities=("rgb",))) == _shapes(_tiny("clipreid_vitb16"))
    fusion_params = {
        mode: {n for n in _shapes(_tiny(fusion=mode)) if n.startswith("vss.fusion.")}
        for mode in ("concat", "sum", "cross_attn")
    }
    assert all(fusion_params.values())
    assert not fusion_params["concat"] & fusion_params["sum"]
    assert not fusion_params["sum"] & fusion_params["cross_attn"]


def test_bad_model_options_are_refused():
    with pytest.raises(ValueError, match="csgn.modalities"):
        _tiny(modalities=("rgb", "infrared"))
    with pytest.raises(ValueError, match="vit_arch or clip.resnet_arch"):
        _tiny(vit_arch="", resnet_arch="")
    with pytest.raises(ValueError, match="need the ViT tower"):
        _tiny("clipreid_rn50", num_cameras=2)
    with pytest.raises(TypeError, match="unknown model options"):
        preset_config("csgn", fusoin="sum")


# ----------------------------------------------------------------- config
def _cfg(name="csgn", **opts):
    cfg = get_default_config()
    cfg.model.name = name
    cfg.clip.vit_arch, cfg.clip.resnet_arch = "csgn-tiny-vit", "csgn-tiny-rn"
    cfg.data.height, cfg.data.width = 128, 64
    for key, value in opts.items():
        section, leaf = key.split("__")
        setattr(cfg[section], leaf, value)
    return cfg


def test_the_default_config_describes_the_real_size_csgn():
    cfg = get_default_config()
    cfg.model.name = "csgn"
    built = csgn_config(cfg)
    expected = {  # the paper's model, as projects/CSGN/README.md describes it
        "vit_arch": "ViT-B-16", "resnet_arch": "RN50", "vit_weights": "", "resnet_weights": "",
        "activation": "auto", "image_size": (256, 128), "vit_stride": 16,
        "resnet_last_stride": 1, "num_cameras": 0, "modalities": ("rgb", "gray"),
        "prompt_template": "A photo of a {} person.", "prompt_n_ctx": 4, "fusion": "concat",
        "test_neck": "before", "test_parts": ("auto",), "test_flip": False,
    }  # fmt: skip
    assert {k: getattr(built, k) for k in expected} == expected
    assert {f.name for f in dataclasses.fields(CSGNConfig)} >= set(expected)
    cfg.model.pretrained = True
    assert csgn_config(cfg).vit_weights == "openai"
    with pytest.raises(TypeError):
        CSGNConfig()  # no defaults of its own: the config holds them


def test_build_model_from_config():
    cfg = _cfg(csgn__fusion="cross_attn", csgn__test_flip=True, clip__sie_camera=True)
    model = build_clip_model(cfg, num_classes=5, num_cameras=4)
    assert model.config.fusion == "cross_attn" and model.vss.test_flip
    assert model.vss.vit.camera_embedding.shape == (4, 64)
    assert model.num_ids == 5 and model.vss.image_size == (128, 64)
    baseline = build_clip_model(_cfg("clipreid_vitb16"), num_classes=5, num_cameras=0)
    assert baseline.modalities == ("rgb",) and baseline.vss.resnet is None
    ablated = build_clip_model(
        _cfg(csgn__use_resnet=False, csgn__modalities=["rgb"]), num_classes=5, num_cameras=0
    )
    assert _shapes(ablated) == _shapes(baseline)
    with pytest.raises(KeyError):
        build_clip_model(_cfg("osnet_x0_25"), num_classes=5, num_cameras=0)
    with pytest.raises(ValueError, match="sie_camera"):
        build_clip_model(_cfg(clip__sie_camera=True), num_classes=5, num_cameras=0)


def test_config_loads_local_clip_weights(tmp_path):
    source = load_clip("csgn-tiny-vit", "", "auto")
    path = tmp_path / "vit.pt"
    torch.save(source.state_dict(), path)
    cfg = _cfg("clipreid_vitb16", clip__vit_weights=str(path), model__pretrained=True)
    model = build_clip_model(cfg, num_classes=2, num_cameras=0)
    torch.testing.assert_close(model.vss.vit.class_embedding, source.visual.class_embedding)
    torch.testing.assert_close(model.text_encoder.text_projection, source.text_projection)
