"""How the engine wires the pieces: the configured values reach the objects it is built with, a
training step follows the gradient of the sum of the loss terms it reports, each term sends
gradient where it should, and HSF scores each modality against that modality's prompt bank.

Engines are built by ``builders`` from a config, as tools/train.py builds them (tiny CSGN at
64x32, a random batch; no data set)."""

import copy
import os
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from csgn_plugin import builders
from csgn_plugin.builders import build_clip_model as build_model_from_config
from csgn_plugin.compat import torchreid_api
from csgn_plugin.config import load_config
from csgn_plugin.engine.stages import StageContext
from csgn_plugin.losses.objective import Labels

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# random tiny towers instead of the main job's SynthCLIP (which pretrains for minutes)
TINY = [
    "model.pretrained", "False", "clip.vit_arch", "csgn-tiny-vit",
    "clip.resnet_arch", "csgn-tiny-rn",
]  # fmt: skip
NUM_IDS = 4


def csgn_cfg(*opts):
    return load_config(
        os.path.join(ROOT, "configs", "csgn_synthcc.yaml"),
        ["data.height", "64", "data.width", "32", "runtime.device", "cpu", *TINY, *opts],
    )


def build(cfg, model=None):
    if model is None:
        model = build_model_from_config(cfg, num_classes=NUM_IDS, num_cameras=2)
    data = SimpleNamespace(train_loader=SimpleNamespace(batch_size=8), test_loader={})
    runtime = builders.build_runtime(cfg, use_gpu=False)
    optimizer = builders.build_optimizer(cfg, model)
    engine = builders.build_engine(cfg, data, model, optimizer, None, runtime)
    if engine.stages:  # the prompt stage hands its bank over, as after stage 1
        context = StageContext(runtime, model, data, lambda: None, engine.record, 0)
        engine.stages[0].attach(context)
    model.train()
    return engine


def labels(data):
    return Labels(pid=data["pid"], camid=data["camid"])


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "img": torch.randn(8, 3, 64, 32, generator=g),
        "pid": torch.arange(8) // 2 % NUM_IDS,
        "camid": torch.arange(8) % 2,
    }


def test_configured_values_reach_the_built_objects():
    engine = build(
        csgn_cfg(
            "loss.softmax.label_smooth", "False", "loss.triplet.margin", "0.5",
            "loss.clip.id_weight", "0.7", "loss.clip.triplet_weight", "0.3",
            "loss.hsf.rgb_weight", "0.6", "loss.hsf.gray_weight", "0.2",
            "stage1.lr", "0.002", "stage1.cross_modal_weight", "0.4", "stage1.batch_size", "16",
            "cc_eval.chunk_size", "7", "test.normalize_feature", "False",
        )
    )  # fmt: skip
    objective = engine.objective
    assert objective.label_smoothing == 0.0 and objective.hsf.label_smoothing == 0.0
    assert objective.triplet.margin == 0.5
    assert (objective.id_weight, objective.triplet_weight) == (0.7, 0.3)
    assert objective.hsf.weights == {"rgb": 0.6, "gray": 0.2}
    stage = engine.stages[0].options
    assert (stage.schedule.lr, stage.cross_modal_weight, stage.batch_size) == (0.002, 0.4, 16)
    assert engine.evaluator.options.chunk_size == 7
    assert engine.evaluator.options.normalize_feature is False
    smooth = build(csgn_cfg()).objective
    assert smooth.label_smoothing == 0.1 and smooth.hsf.label_smoothing == 0.1


def test_configured_values_reach_a_torchreid_models_objective():
    cfg = load_config(
        "",
        ["model.name", "osnet_x0_25", "loss.name", "triplet", "loss.triplet.weight_x", "0.4",
         "loss.triplet.weight_t", "2.0", "loss.triplet.margin", "0.2",
         "sampler.train_sampler", "RandomIdentitySampler"],
    )  # fmt: skip
    model = torchreid_api().models.build_model(
        "osnet_x0_25", NUM_IDS, loss="triplet", pretrained=False
    )
    objective = build(cfg, model).objective
    assert (objective.name, objective.weight_x, objective.weight_t) == ("triplet", 0.4, 2.0)
    assert objective.triplet.margin == 0.2 and objective.label_smoothing == 0.1


@pytest.mark.parametrize("fusion", ["concat", "sum", "cross_attn"])
def test_a_step_follows_the_gradient_of_the_sum_of_the_reported_terms(fusion):
    """Plain SGD (lr 0.5, no momentum or decay): every trainable weight must move by exactly
    -lr x the gradient of the sum of the terms, computed here on a copy of the model."""
    cfg = csgn_cfg(
        "csgn.fusion", fusion, "train.optim", "sgd", "train.lr", "0.5", "sgd.momentum", "0.0",
        "train.weight_decay", "0.0", "train.bias_lr_factor", "1.0",
    )  # fmt: skip
    engine = build(cfg)
    model, data = engine.unwrapped_model, batch()
    reference = copy.deepcopy(model)
    params = [(n, p) for n, p in reference.named_parameters() if p.requires_grad]
    terms = engine.objective(reference(data["img"], data["camid"]), labels(data))
    assert set(terms.terms) == {"id", "triplet", "hsf"}
    total = terms.terms["id"] + terms.terms["triplet"] + terms.terms["hsf"]
    grads = torch.autograd.grad(total, [p for _, p in params], allow_unused=True)
    reported = engine.forward_backward(data)
    for key in ("id", "triplet", "hsf", "hsf_rgb", "hsf_gray"):
        torch.testing.assert_close(reported[key], terms.logged()[key])
    after = dict(model.named_parameters())
    moved = 0
    for (name, before), grad in zip(params, grads):
        expected = before.detach() - 0.5 * (grad if grad is not None else 0)
        torch.testing.assert_close(after[name].detach(), expected, msg=name)
        moved += grad is not None and bool(grad.abs().sum() > 0)
    assert moved > len(params) // 2


def _grads(model, loss):
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return {n: g for n, g in zip(names, grads) if g is not None and g.abs().sum() > 0}


def _touches(grads, prefix):
    return any(name.startswith(prefix) for name in grads)


def test_each_term_sends_gradient_where_it_should():
    engine = build(csgn_cfg())
    model, data = engine.unwrapped_model, batch()
    with torch.no_grad():  # once the fusion lets the ResNet reach the joint space
        model.vss.fusion.linear.weight[:, 64:].normal_(std=0.05)
    terms = engine.objective(model(data["img"], data["camid"]), labels(data)).terms
    hsf = _grads(model, terms["hsf"])
    for prefix in ("vss.fusion.", "vss.vit.", "vss.resnet."):
        assert _touches(hsf, prefix), f"HSF sends no gradient to {prefix}"
    assert not _touches(hsf, "vss.classifiers.") and not _touches(hsf, "vss.necks.")
    ident = _grads(model, terms["id"])
    for prefix in ("vss.classifiers.global", "vss.classifiers.local", "vss.classifiers.proj"):
        assert _touches(ident, prefix), f"the ID loss sends no gradient to {prefix}"
    assert _touches(ident, "vss.necks.") and _touches(ident, "vss.vit.")
    triplet = _grads(model, terms["triplet"])
    for prefix in ("vss.vit.", "vss.resnet.", "vss.fusion."):
        assert _touches(triplet, prefix), f"the triplet loss sends no gradient to {prefix}"
    assert not _touches(triplet, "vss.classifiers.") and not _touches(triplet, "vss.necks.")
    for grads in (hsf, ident, triplet):  # stage 2 never reaches the prompts or the text tower
        assert not _touches(grads, "prompt_learner.") and not _touches(grads, "text_encoder.")


def test_hsf_scores_each_modality_against_its_own_prompt_bank():
    engine = build(csgn_cfg("loss.hsf.rgb_weight", "0.6", "loss.hsf.gray_weight", "0.2"))
    model, data = engine.unwrapped_model, batch()
    bank = engine.objective.text_bank
    assert not torch.allclose(bank["rgb"], bank["gray"])  # two different banks
    outputs = model(data["img"], data["camid"])
    losses = engine.objective(outputs, labels(data))
    feature = outputs["image_feature"].float()
    for modality in ("rgb", "gray"):
        logits = feature @ bank[modality].t()
        targets = torch.full_like(logits, 0.1 / NUM_IDS)
        targets[torch.arange(8), data["pid"]] += 0.9
        by_hand = -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
        torch.testing.assert_close(losses.details[f"hsf_{modality}"], by_hand)
    weighted = 0.6 * losses.details["hsf_rgb"] + 0.2 * losses.details["hsf_gray"]
    torch.testing.assert_close(losses.terms["hsf"].detach(), weighted)
