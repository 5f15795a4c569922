"""One training step of CAL through the engine equals Simple-CCReID's ``train_cal`` step
(guxinqian/Simple-CCReID, commit 88c5b0b, ``train.py:33-67``), written out here with its
optimizers (``main.py:68-73``: Adam, lr 3.5e-4, weight decay 5e-4, for the model + identity
classifier and for the clothes classifier) and the losses' formulas by hand:

1. the model's BN feature and identity logits (one forward, training mode);
2. the clothes classifier's CosFace loss (scale 16, margin 0) on the *detached* feature, its
   optimizer stepped - from ``START_EPOCH_CC`` on;
3. the clothes cosines again, with the *updated* classifier, on the live feature: the
   adversarial loss - in the sum from ``START_EPOCH_ADV`` on;
4. identity cross-entropy (label smoothing 0.1) + adversarial + pair weight x cosine triplet;
   the model optimizer's step.

Every parameter of the model and of the clothes classifier after the step, and every logged
loss, must equal the reference's. Epochs 0, 1, 2 with ``START_EPOCH_CC`` 1 and ``START_EPOCH_ADV``
2 cover the three gates. Plain SGD makes the weights depend on the gradients' sizes (Adam's first
step is lr x their signs)."""

import copy
import os
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from csgn_plugin import builders
from csgn_plugin.config import load_config
from csgn_plugin.losses.objective import Labels

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# 3 identities wearing 6 outfits: id 0 {0, 1}, id 1 {2}, id 2 {3, 4, 5}
OUTFITS = torch.tensor(
    [[1, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]], dtype=torch.bool
)
BATCH = {
    "pid": torch.tensor([0, 0, 1, 1, 2, 2, 2, 0]),
    "clothes_id": torch.tensor([0, 1, 2, 2, 3, 5, 4, 0]),
    "camid": torch.zeros(8, dtype=torch.long),
}
# the reference optimizers (main.py:68-73); SGD's values are this test's
OPTIMIZERS = {
    "adam": (["train.optim", "adam", "train.lr", "0.00035", "train.weight_decay", "0.0005"],
             lambda p: torch.optim.Adam(p, lr=3.5e-4, weight_decay=5e-4)),
    "sgd": (["train.optim", "sgd", "train.lr", "0.5", "sgd.momentum", "0.0",
             "train.weight_decay", "0.0"],
            lambda p: torch.optim.SGD(p, lr=0.5)),
}  # fmt: skip


def build(optim):
    cfg = load_config(
        os.path.join(ROOT, "configs", "synthcc_cal.yaml"),
        ["data.height", "64", "data.width", "32", "runtime.device", "cpu",
         "loss.cal.start_epoch_cc", "1", "loss.cal.start_epoch_adv", "2",
         "loss.cal.pair_weight", "0.7", "train.bias_lr_factor", "1.0", *OPTIMIZERS[optim][0]],
    )  # fmt: skip
    data = SimpleNamespace(
        train_loader=SimpleNamespace(batch_size=8),
        test_loader={},
        num_train_pids=3,
        identity_outfits=lambda: OUTFITS.clone(),
    )
    torch.manual_seed(0)
    model = builders.build_model(cfg, data, use_gpu=False)
    runtime = builders.build_runtime(cfg, use_gpu=False)
    optimizer = builders.build_optimizer(cfg, model)
    engine = builders.build_engine(cfg, data, model, optimizer, None, runtime)
    model.train()
    return engine


def clothes_cosines(feature, weight):
    """NormalizedClassifier (classifier.py:30-36): cosines of feature and class weights."""
    unit = feature / feature.norm(dim=1, keepdim=True)
    return unit @ (weight / weight.norm(dim=1, keepdim=True)).t()


def identity_and_pair(feature, logits, pids):
    """CrossEntropyWithLabelSmooth (epsilon 0.1) and the cosine batch-hard triplet (margin
    0.3), by their formulas."""
    k = logits.shape[1]
    targets = 0.9 * F.one_hot(pids, k) + 0.1 / k
    identity = -(targets * F.log_softmax(logits, dim=1)).sum(1).mean()
    unit = feature / feature.norm(dim=1, keepdim=True)
    dist = 1 - unit @ unit.t()
    same = pids[:, None] == pids[None, :]
    ap = torch.stack([dist[i][same[i]].max() for i in range(len(pids))])
    an = torch.stack([dist[i][~same[i]].min() for i in range(len(pids))])
    return identity, torch.clamp(ap - an + 0.3, min=0).mean()


def adversarial(cos, clothes, positive):
    logits = 16 * cos
    e = logits.exp()
    log_prob = logits - torch.log((e * ~positive).sum(1, keepdim=True) + e)
    mask = 0.9 * F.one_hot(clothes, 6) + 0.1 * positive / positive.sum(1, keepdim=True)
    return -(mask * log_prob).sum(1).mean()


def clothes_cosface(cos, clothes):
    return F.cross_entropy(16 * cos, clothes)


def reference_step(engine, imgs, epoch, optim):
    """train_cal's step on copies of the engine's model and clothes classifier."""
    model = copy.deepcopy(engine.unwrapped_model)
    model.before = {n: p.detach().clone() for n, p in model.named_parameters()}
    weight = engine.objective.clothes_classifier.weight.detach().clone().requires_grad_(True)
    opt, opt_cc = OPTIMIZERS[optim][1](list(model.parameters())), OPTIMIZERS[optim][1]([weight])
    pids, clothes = BATCH["pid"], BATCH["clothes_id"]
    # the feature: max + average pooling, BatchNorm1d in training mode, then the classifier
    maps = model.backbone(imgs)
    pooled = torch.cat([maps.amax(dim=(2, 3)), maps.mean(dim=(2, 3))], dim=1)
    bn = model.bn
    feature = F.batch_norm(pooled, bn.running_mean, bn.running_var, bn.weight, bn.bias, True)
    bn.num_batches_tracked += 1
    logits = feature @ model.classifier.weight.t() + model.classifier.bias
    # clothes classifier on the detached feature, stepped from START_EPOCH_CC
    clothes_loss = clothes_cosface(clothes_cosines(feature.detach(), weight), clothes)
    if epoch >= 1:
        opt_cc.zero_grad()
        clothes_loss.backward()
        opt_cc.step()
    # the updated classifier on the live feature
    identity, pair = identity_and_pair(feature, logits, pids)
    adv = adversarial(clothes_cosines(feature, weight), clothes, OUTFITS[pids])
    loss = identity + 0.7 * pair + (adv if epoch >= 2 else 0)
    opt.zero_grad()
    loss.backward()
    opt.step()
    logged = {"id": identity, "pair": 0.7 * pair, "adversarial": adv, "clothes": clothes_loss}
    return model, weight, {k: v.detach() for k, v in logged.items()}


@pytest.mark.parametrize("optim, epoch", [("adam", 2), ("sgd", 0), ("sgd", 1), ("sgd", 2)])
def test_one_step_of_both_optimizers_is_train_cals(optim, epoch):
    engine = build(optim)
    imgs = torch.randn(8, 3, 64, 32, generator=torch.Generator().manual_seed(1))
    model, weight, logged = reference_step(engine, imgs, epoch, optim)
    before = engine.objective.clothes_classifier.weight.detach().clone()
    engine.objective.set_epoch(epoch)
    reported = engine.forward_backward({**BATCH, "img": imgs})
    assert set(reported) == set(logged)
    for key, value in logged.items():
        torch.testing.assert_close(reported[key], value, msg=key)
    after = dict(engine.unwrapped_model.named_parameters())
    unsettled = 0
    for name, param in model.named_parameters():
        settled = torch.ones_like(param, dtype=torch.bool)
        if optim == "adam":
            # Adam's first step is lr x sign(grad + decay x weight): where that sum is zero to
            # within rounding its sign is noise, in either computation
            settled = (param.grad + 5e-4 * model.before[name]).abs() > 1e-7
            unsettled += int((~settled).sum())
        torch.testing.assert_close(after[name][settled], param[settled], msg=name)
    assert unsettled <= 1e-3 * sum(p.numel() for p in model.parameters())
    for name, buffer in model.named_buffers():  # BN running statistics: one forward
        torch.testing.assert_close(dict(engine.unwrapped_model.named_buffers())[name], buffer)
    clothes_weight = engine.objective.clothes_classifier.weight
    torch.testing.assert_close(clothes_weight, weight)
    assert torch.equal(clothes_weight, before) == (epoch < 1)  # stepped from START_EPOCH_CC


def test_the_adversarial_term_sees_the_clothes_classifier_after_its_step():
    """The order of train.py:35-56: with the classifier's *initial* weights the adversarial
    value differs, and the engine reports the one of the updated weights."""
    engine = build("sgd")
    imgs = torch.randn(8, 3, 64, 32, generator=torch.Generator().manual_seed(2))
    _, _, logged = reference_step(engine, imgs, 2, "sgd")
    model = copy.deepcopy(engine.unwrapped_model)
    stale_weight = engine.objective.clothes_classifier.weight.detach().clone()
    with torch.no_grad():
        stale = clothes_cosines(model(imgs)["features"], stale_weight)
        stale_adv = adversarial(stale, BATCH["clothes_id"], OUTFITS[BATCH["pid"]])
    engine.objective.set_epoch(2)
    reported = engine.forward_backward({**BATCH, "img": imgs})
    torch.testing.assert_close(reported["adversarial"], logged["adversarial"])
    assert abs(float(reported["adversarial"] - stale_adv)) > 1e-3


def test_the_gates_decide_what_trains():
    """Before START_EPOCH_CC the clothes loss is logged only; before START_EPOCH_ADV the
    adversarial loss is; from them on they are the auxiliary and the main loss's terms."""
    objective = build("sgd").objective
    outputs = {"features": torch.randn(8, 256), "logits": torch.randn(8, 3)}
    labels = Labels(BATCH["pid"], BATCH["camid"], BATCH["clothes_id"])
    gates = ((0, False, False), (1, True, False), (2, True, True), (9, True, True))
    for epoch, clothes_trains, adversarial_trains in gates:
        objective.set_epoch(epoch)
        auxiliary, main = objective.auxiliary_losses(outputs, labels), objective(outputs, labels)
        assert ("clothes" in auxiliary.terms) == clothes_trains
        assert ("clothes" in auxiliary.details) != clothes_trains
        assert ("adversarial" in main.terms) == adversarial_trains
        assert ("adversarial" in main.details) != adversarial_trains


def test_one_gradient_scaler_serves_both_optimizers():
    """fp16's recipe for several optimizers: each loss scaled, each optimizer stepped through
    the scaler, one update per step. In fp32 a power-of-two scale is exact, so two scaled steps
    must give the unscaled steps' weights (a loss left unscaled, or an update missing - the
    second step would then refuse - or doubled, breaks this)."""
    imgs = torch.randn(8, 3, 64, 32, generator=torch.Generator().manual_seed(3))
    ends = []
    for scaled in (False, True):
        engine = build("sgd")
        if scaled:
            engine.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1)
        engine.objective.set_epoch(2)
        for _ in range(2):
            engine.forward_backward({**BATCH, "img": imgs})
        ends.append((engine.unwrapped_model.state_dict(), engine.objective.state_dict()))
    assert engine.scaler.get_scale() == 2.0**12  # grown once per step: one update a step
    for unscaled, scaled in zip(*ends):
        flat_a = {k: v for k, v in unscaled.items() if not isinstance(v, dict)}
        flat_b = {k: v for k, v in scaled.items() if not isinstance(v, dict)}
        for key in flat_a:
            torch.testing.assert_close(flat_b[key], flat_a[key], msg=key)
    torch.testing.assert_close(
        ends[1][1]["clothes_classifier"]["weight"], ends[0][1]["clothes_classifier"]["weight"]
    )
