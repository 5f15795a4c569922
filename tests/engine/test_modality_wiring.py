"""Each of CSGN's per-modality and per-tower paths receives its own data.

Inputs are built so that the two modalities (or towers) give measurably different results, and
each expectation is computed here, not by the code under test: grayscale by the luma formula,
pictures whose colours differ but whose luma is the same (so only RGB may tell them apart),
orthogonal prompt banks per modality, one tower's weights perturbed while the other's stay.
Every test fails if its path is fed the other modality's or the other tower's data.

Tiny CSGN from the main job's config at 64x32 (random towers), through ``builders`` as
tools/train.py builds it; the prompt stage runs its real ``run``/``attach`` (stage_helpers).
"""

import copy

import torch
import torch.nn.functional as F
from stage_helpers import (
    SIZE,
    memory_data,
    normalise,
    run_prompt_stage,
    tiny_cfg,
    tiny_model,
)

from csgn_plugin import builders
from csgn_plugin.engine.stages import StageContext
from csgn_plugin.runtime import Runtime

LUMA = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)  # ITU-R BT.601
NUM_IDS = 4


def pictures(n, seed=0):
    """``n`` colourful pictures in [0.35, 0.65]: 4x2 blocks of random colours at 64x32."""
    g = torch.Generator().manual_seed(seed)
    blocks = 0.35 + 0.3 * torch.rand(n, 3, 4, 2, generator=g)
    return F.interpolate(blocks, size=SIZE, mode="nearest")


def luma(raw):
    return (raw * LUMA).sum(dim=1, keepdim=True)


def same_luma_other_colours(raw):
    """The colours reflected through their gray (chroma negated): the luma is unchanged."""
    return 2 * luma(raw) - raw


def grayscale_by_hand(raw):
    return luma(raw).expand(-1, 3, -1, -1)


def stage_cache(cfg, model, raw):
    """What the prompt stage caches for ``raw`` pictures (normalised as the loader gives them)."""
    data = memory_data(normalise(raw, cfg), torch.arange(len(raw)) % NUM_IDS)
    objective = builders.build_objective(cfg, model, data)
    stage = builders.build_stages(cfg, model, objective)[0]
    runtime = Runtime(torch.device("cpu"), "off", False, 0, 1, SIZE)
    context = StageContext(runtime, model, data, lambda: None, lambda *args: None, 0)
    cached, labels = stage.cache_features(context)
    assert torch.equal(labels, torch.arange(len(raw)) % NUM_IDS)
    return cached


def features(model, cfg, raw):
    """The CLIP image features the prompts learn against, of ``raw`` pictures."""
    with torch.no_grad():
        return model.prompt_image_features(normalise(raw, cfg))


def relative_difference(a, b):
    return float((a - b).norm() / b.norm())


def perturbed(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=g))


# ----------------------------------------------------------------- stage 1: the cached images
def test_stage_one_caches_rgb_pictures_for_rgb_and_their_grayscale_for_gray():
    cfg = tiny_cfg()
    model = tiny_model(cfg, NUM_IDS)
    raw = pictures(6)
    cached = stage_cache(cfg, model, raw)
    rgb, gray = features(model, cfg, raw), features(model, cfg, grayscale_by_hand(raw))
    assert relative_difference(gray, rgb) > 0.05  # the two modalities are told apart
    torch.testing.assert_close(cached["rgb"], rgb, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cached["gray"], gray, rtol=1e-5, atol=1e-5)


def test_stage_one_caches_the_vit_tower_and_not_the_resnet():
    """With the fusion letting the ResNet into the joint feature from the start, a cache of the
    fused feature would move with the ResNet too."""
    cfg = tiny_cfg("csgn.fusion_init_std", "0.05")
    model = tiny_model(cfg, NUM_IDS)
    raw = pictures(4)
    before = stage_cache(cfg, model, raw)
    perturbed(model.vss.resnet, seed=1)
    after_resnet = stage_cache(cfg, model, raw)
    perturbed(model.vss.vit, seed=2)
    after_vit = stage_cache(cfg, model, raw)
    for modality in ("rgb", "gray"):
        torch.testing.assert_close(after_resnet[modality], before[modality], rtol=0, atol=0)
        assert relative_difference(after_vit[modality], before[modality]) > 0.01


def test_the_ablations_keep_the_modality_and_tower_they_name():
    """``csgn.modalities [gray]`` keeps the grayscale path (not "the first modality"), ``[rgb]``
    the RGB one; ``csgn.use_resnet False`` drops the ResNet and keeps the ViT: the same cache
    as the full model, whose ViT it shares (same seed)."""
    raw = pictures(4)
    full_cfg = tiny_cfg()
    full = stage_cache(full_cfg, tiny_model(full_cfg, NUM_IDS), raw)
    for opts, kept in (
        (["csgn.modalities", "['gray']"], ("gray",)),
        (["csgn.modalities", "['rgb']"], ("rgb",)),
        (["csgn.use_resnet", "False"], ("rgb", "gray")),
    ):
        cfg = tiny_cfg(*opts)
        model = tiny_model(cfg, NUM_IDS)
        assert model.modalities == kept and set(model.prompt_learner.ctx) == set(kept)
        assert (model.vss.resnet is None) == ("csgn.use_resnet" in opts)
        assert model.vss.vit is not None
        cached = stage_cache(cfg, model, raw)
        assert set(cached) == set(kept)
        for modality in kept:
            torch.testing.assert_close(cached[modality], full[modality], rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------- stage 1: what each set learns
def _learn(cfg, raw, pids):
    model = tiny_model(cfg, NUM_IDS)
    start = {m: model.prompt_learner.ctx[m].detach().clone() for m in model.modalities}
    _, objective, _ = run_prompt_stage(cfg, model, memory_data(normalise(raw, cfg), pids))
    learned = {m: model.prompt_learner.ctx[m].detach().clone() for m in model.modalities}
    return model, start, learned, objective.text_bank


def _text_features_by_hand(model, ctx):
    """The text tower on the template with ``ctx`` in place of its X tokens."""
    learner = model.prompt_learner
    batch = ctx.shape[0]
    prompts = torch.cat(
        [
            learner.token_prefix.expand(batch, -1, -1),
            ctx,
            learner.token_suffix.expand(batch, -1, -1),
        ],
        dim=1,
    )
    with torch.no_grad():
        return model.text_encoder(prompts, learner.eot_index)


def test_each_prompt_set_learns_from_its_own_modality_and_banks_its_own_prompts():
    """Two runs on pictures with the same luma and other colours: the gray prompts (and the gray
    bank handed to the objective) come out the same, the RGB ones differ. With the cross-modal
    term on, the gray prompts see the RGB pictures too and differ as well."""
    raw = pictures(16)
    other = same_luma_other_colours(raw)
    pids = torch.arange(16) % NUM_IDS
    base = ["stage1.max_epoch", "2", "stage1.warmup_epochs", "1", "stage1.batch_size", "8"]
    cfg = tiny_cfg(*base, "stage1.cross_modal_weight", "0.0")
    model, start, first, bank = _learn(cfg, raw, pids)
    _, _, second, other_bank = _learn(cfg, other, pids)

    for modality in ("rgb", "gray"):
        moved = (first[modality] - start[modality]).abs().max()
        assert moved > 1e-4, f"the {modality} prompts did not learn"
        by_hand = _text_features_by_hand(model, first[modality])
        torch.testing.assert_close(bank[modality], by_hand, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(second["gray"], first["gray"], rtol=0, atol=1e-6)
    torch.testing.assert_close(other_bank["gray"], bank["gray"], rtol=1e-4, atol=1e-4)
    assert (second["rgb"] - first["rgb"]).abs().max() > 1e-4
    assert relative_difference(other_bank["rgb"], bank["rgb"]) > 1e-3

    crossed = tiny_cfg(*base, "stage1.cross_modal_weight", "0.5")
    _, _, first, _ = _learn(crossed, raw, pids)
    _, _, second, _ = _learn(crossed, other, pids)
    assert (second["gray"] - first["gray"]).abs().max() > 1e-4


# ----------------------------------------------------------------- stage 2: VSS's parts
def test_each_vss_part_comes_from_its_own_tower():
    """Perturbing the ResNet changes ``local`` and the fused ``proj`` but not the ViT's
    ``global`` nor its triplet features; perturbing the ViT changes ``global`` and ``proj`` but
    not ``local``. The inference feature is ``global | local | proj`` in that order, the HSF
    input is ``proj``."""
    cfg = tiny_cfg("csgn.fusion_init_std", "0.05")
    model = tiny_model(cfg, NUM_IDS).eval()
    imgs = normalise(pictures(4), cfg)

    def outputs():
        """Eval-mode parts and inference feature; train-mode outputs and parts of a copy (a
        train pass updates the BN statistics the eval outputs use)."""
        with torch.no_grad():
            parts, inference = model.vss.parts(imgs), model(imgs)
            training = copy.deepcopy(model).train()
            train, train_parts = training(imgs), training.vss.parts(imgs)
        assert torch.equal(train["image_feature"], train_parts["proj"])  # HSF's input
        return parts, inference, train

    parts, inference, train = outputs()
    dims = [parts[p].shape[1] for p in ("global", "local", "proj")]
    assert dims == [model.vss.vit.width, model.vss.resnet.out_channels, model.embed_dim]
    # the main job's inference feature: every part, before the necks, unflipped, unnormalised
    assert (model.vss.test_neck, model.vss.test_flip, model.vss.test_part_norm) == (
        "before",
        False,
        False,
    )
    expected = torch.cat([parts["global"], parts["local"], parts["proj"]], dim=1)
    torch.testing.assert_close(inference, expected, rtol=1e-5, atol=1e-5)

    perturbed(model.vss.resnet, seed=3)
    resnet_parts, _, resnet_train = outputs()
    torch.testing.assert_close(resnet_parts["global"], parts["global"], rtol=0, atol=0)
    for vit_feature in range(2):  # the ViT's layer-11 and layer-12 class tokens
        torch.testing.assert_close(
            resnet_train["features"][vit_feature], train["features"][vit_feature], rtol=0, atol=0
        )
    assert relative_difference(resnet_parts["local"], parts["local"]) > 0.01
    assert relative_difference(resnet_parts["proj"], parts["proj"]) > 1e-4

    perturbed(model.vss.vit, seed=4)
    vit_parts, _, _ = outputs()
    torch.testing.assert_close(vit_parts["local"], resnet_parts["local"], rtol=0, atol=0)
    assert relative_difference(vit_parts["global"], resnet_parts["global"]) > 0.01
    assert relative_difference(vit_parts["proj"], resnet_parts["proj"]) > 0.01


# ----------------------------------------------------------------- stage 2: HSF's terms
def test_hsf_weights_switch_off_the_modality_they_name():
    """Orthogonal banks (rgb: e_0..e_3, gray: e_4..e_7) and an image feature on e_0 + 2 e_5:
    against the rgb bank the logits are (1, 0, 0, 0), against the gray bank (0, 2, 0, 0); each
    config keeps exactly the term of its non-zero weight, by the label-smoothed CE formula."""
    feature = torch.zeros(1, 8)
    feature[0, 0], feature[0, 5] = 1.0, 2.0
    eye = torch.eye(8)
    bank = {"rgb": eye[:4], "gray": eye[4:]}
    labels = torch.tensor([0])

    def smoothed_ce(logits):  # eps 0.1 over K = 4: target 0.925 on label 0, 0.025 elsewhere
        log_p = torch.log_softmax(torch.tensor(logits), dim=0)
        return float(-(0.925 * log_p[0] + 0.025 * log_p[1:].sum()))

    rgb_term, gray_term = smoothed_ce([1.0, 0, 0, 0]), smoothed_ce([0, 2.0, 0, 0])
    assert abs(rgb_term - gray_term) > 1.0
    cases = {
        ("1.0", "1.0"): {"rgb": rgb_term, "gray": gray_term},
        ("1.0", "0.0"): {"rgb": rgb_term},
        ("0.0", "1.0"): {"gray": gray_term},
    }
    for (rgb_weight, gray_weight), expected in cases.items():
        cfg = tiny_cfg("loss.hsf.rgb_weight", rgb_weight, "loss.hsf.gray_weight", gray_weight)
        objective = builders.build_objective(cfg, tiny_model(cfg, NUM_IDS), None)
        total, terms = objective.hsf(feature, bank, labels)
        assert {m: round(float(v), 5) for m, v in terms.items()} == {
            m: round(v, 5) for m, v in expected.items()
        }
        assert abs(float(total) - sum(expected.values())) < 1e-5
