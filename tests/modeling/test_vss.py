"""VSS: parallel towers, fusion modes, BN necks, classifiers, inference-feature options."""

import copy

import pytest
import torch

from csgn_plugin.modeling.clip_towers import ReIDResNet, ReIDViT
from csgn_plugin.modeling.clip_weights import load_clip
from csgn_plugin.modeling.vss import FUSION_MODES, VSS

NUM_CLASSES = 7
# tiny towers: ViT width 64, ResNet layer-4 256 channels, joint space 64
DIMS = {"global": 64, "local": 256, "proj": 64}


@pytest.fixture(scope="module")
def clips():
    return tuple(load_clip(arch, "", "auto").eval() for arch in ("csgn-tiny-vit", "csgn-tiny-rn"))


# VSS options of the tests unless a test sets its own
OPTIONS = {
    "fusion": "concat",
    "fusion_heads": 8,
    "fusion_init_std": 0.0,
    "test_neck": "before",
    "test_parts": ("auto",),
    "test_flip": False,
    "test_part_norm": False,
}


def _vss(clips, size=(128, 64), vit=True, resnet=True, last_stride=1, **kwargs):
    vit_clip, rn_clip = (copy.deepcopy(c) for c in clips)
    vit_tower = ReIDViT(vit_clip.visual, size, 16, "bilinear", 0, 3.0) if vit else None
    rn_tower = (
        ReIDResNet(rn_clip.visual, size, last_stride, "bilinear", keep_attnpool=not vit)
        if resnet
        else None
    )
    return VSS(vit_tower, rn_tower, NUM_CLASSES, **(OPTIONS | kwargs))


@pytest.mark.parametrize("fusion", FUSION_MODES)
@pytest.mark.parametrize("size", [(256, 128), (320, 160)])
def test_train_and_eval_outputs(clips, fusion, size):
    model = _vss(clips, size, fusion=fusion).train()
    out = model(torch.randn(4, 3, *size))
    assert set(out) == {"logits", "features", "image_feature"}
    assert [t.shape for t in out["logits"]] == [(4, NUM_CLASSES)] * 3
    # triplet on ViT layer-(L-1) and layer-L class tokens, pooled ResNet map, joint feature
    assert [t.shape[1] for t in out["features"]] == [64, 64, 256, 64]
    assert out["image_feature"].shape == (4, 64)
    assert all(t.dtype == torch.float32 for t in out["logits"] + out["features"])
    model.eval()
    with torch.no_grad():
        feat = model(torch.randn(3, 3, *size))
    assert feat.shape == (3, 64 + 256 + 64) and model.feature_dim == 384


@pytest.mark.parametrize("fusion", FUSION_MODES)
def test_fusion_starts_at_the_clip_image_embedding(clips, fusion):
    """At 224x224 with CLIP's own geometry, every fusion mode's joint feature is CLIP's image
    embedding at initialisation (so stage-2 training starts where the prompts were learned)."""
    model = _vss(clips, (224, 224), last_stride=2, fusion=fusion).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = clips[0].encode_image(x)
        torch.testing.assert_close(model.parts(x)["proj"], expected)


def test_each_fusion_mode_has_its_own_parameters(clips):
    shapes = {}
    for fusion in FUSION_MODES:
        model = _vss(clips, fusion=fusion)
        shapes[fusion] = {
            n: tuple(p.shape) for n, p in model.named_parameters() if n.startswith("fusion.")
        }
    assert shapes["concat"] == {"fusion.linear.weight": (64, 64 + 256), "fusion.linear.bias": (64,)}
    assert shapes["sum"] == {
        "fusion.local_proj.weight": (64, 256),
        "fusion.local_proj.bias": (64,),
        "fusion.gate": (),
    }
    assert shapes["cross_attn"]["fusion.attn.q_proj_weight"] == (64, 64)
    assert shapes["cross_attn"]["fusion.attn.k_proj_weight"] == (64, 256)
    assert shapes["cross_attn"]["fusion.attn.v_proj_weight"] == (64, 256)
    assert shapes["cross_attn"]["fusion.norm_kv.weight"] == (256,)
    with pytest.raises(ValueError, match="csgn.fusion must be one of"):
        _vss(clips, fusion="product")
    with pytest.raises(ValueError, match="fusion_heads=5"):
        _vss(clips, fusion="cross_attn", fusion_heads=5)


def test_single_tower_layouts(clips):
    vit_only = _vss(clips, resnet=False).train()
    assert vit_only.fusion is None and vit_only.resnet is None
    assert not [n for n, _ in vit_only.named_parameters() if n.startswith(("resnet.", "fusion."))]
    out = vit_only(torch.randn(4, 3, 128, 64))
    assert [t.shape[1] for t in out["features"]] == [64, 64, 64]  # CLIP-ReID ViT layout
    assert len(out["logits"]) == 2
    rn_only = _vss(clips, vit=False).train()
    out = rn_only(torch.randn(4, 3, 128, 64))
    assert [t.shape[1] for t in out["features"]] == [128, 256, 64]  # layer 3, 4, attnpool
    assert rn_only.eval()(torch.randn(2, 3, 128, 64)).shape == (2, 256 + 64)


def test_inference_feature_options(clips):
    model = _vss(clips).eval()
    x = torch.randn(3, 3, 128, 64)
    with torch.no_grad():
        parts = model.parts(x)
        model.test_parts = ("proj", "global")
        torch.testing.assert_close(model(x), torch.cat([parts["proj"], parts["global"]], 1))
        model.test_neck = "after"
        neck = model.necks["proj"]
        after = (parts["proj"] - neck.running_mean) / torch.sqrt(neck.running_var + neck.eps)
        after = after * neck.weight + neck.bias
        torch.testing.assert_close(model(x)[:, :64], after)
    configured = _vss(clips, test_parts=["local"], test_neck="after")
    assert configured.feature_dim == 256
    with pytest.raises(ValueError, match="csgn.test_parts"):
        _vss(clips, resnet=False, test_parts=["local"])
    with pytest.raises(ValueError, match="csgn.test_neck"):
        _vss(clips, test_neck="middle")


def test_flip_averaging(clips):
    model = _vss(clips, test_flip=True).eval()
    x = torch.randn(2, 3, 128, 64)
    with torch.no_grad():
        flipped_avg = model(x)
        model.test_flip = False
        expected = 0.5 * (model(x) + model(torch.flip(x, dims=[3])))
    torch.testing.assert_close(flipped_avg, expected)


def test_wrong_input_size_is_refused(clips):
    model = _vss(clips, (256, 128)).eval()
    with pytest.raises(ValueError, match=r"built for \(256, 128\).*data.height"):
        model(torch.randn(1, 3, 128, 64))


@pytest.mark.parametrize("fusion", FUSION_MODES)
def test_fusion_init_std_lets_the_joint_feature_reach_the_resnet_from_the_first_step(clips, fusion):
    """With std 0 the joint feature starts exactly at CLIP's projected class token and a loss on
    it sends the ResNet no gradient; with a small std it does, and stays close to g @ P."""
    imgs = torch.randn(4, 3, 128, 64)
    for std in (0.0, 0.01):
        model = _vss(clips, fusion=fusion, fusion_init_std=std).train()
        parts = model.parts(imgs)
        start = model.vit.project(parts["global"])
        grads = torch.autograd.grad(
            parts["proj"].pow(2).sum(), list(model.resnet.parameters()), allow_unused=True
        )
        reached = any(g is not None and g.abs().sum() > 0 for g in grads)
        if std == 0.0:
            torch.testing.assert_close(parts["proj"], start)
            assert not reached
        else:
            assert reached
            gap = (parts["proj"] - start).norm() / start.norm()
            assert 0 < gap < 0.5


def test_part_norm_gives_every_part_unit_length(clips):
    model = _vss(clips, test_part_norm=True).eval()
    with torch.no_grad():
        feat = model(torch.randn(3, 3, 128, 64))
    blocks = torch.split(feat, [64, 256, 64], dim=1)  # global, local, proj
    for block in blocks:
        torch.testing.assert_close(block.norm(dim=1), torch.ones(3))
