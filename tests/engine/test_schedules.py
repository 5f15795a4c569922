"""Learning rates of every epoch of both stages, against the schedules' definitions written out
here independently: CLIP-ReID's (its WarmupMultiStepLR stepped before each stage-2 epoch, timm's
CosineLRScheduler stepped with the epoch number before each stage-1 epoch) and torchreid's."""

import bisect
import math
import os

import pytest
import torch

from csgn_plugin import builders
from csgn_plugin.config import load_config
from csgn_plugin.engine.schedules import (
    EpochSchedule,
    build_epoch_scheduler,
    build_prompt_scheduler,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def stage2_lrs(cfg, epochs):
    """Base-group and bias-group lr of each epoch, stepping the scheduler as the engine does
    (once at each epoch's end)."""
    weight = torch.nn.Parameter(torch.zeros(1))
    bias = torch.nn.Parameter(torch.zeros(1))
    groups = [
        {"params": [weight], "lr": cfg.train.lr},
        {"params": [bias], "lr": cfg.train.lr * cfg.train.bias_lr_factor},
    ]
    optimizer = torch.optim.Adam(groups, lr=cfg.train.lr)
    scheduler = builders.build_scheduler(cfg, optimizer)
    lrs = []
    for _ in range(epochs):
        lrs.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return lrs


def stage1_lrs(cfg, epochs):
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=cfg.stage1.lr)
    scheduler = build_prompt_scheduler(optimizer, builders.prompt_schedule(cfg))
    lrs = []
    for _ in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def clipreid_warmup_multistep(base, epoch, steps, gamma, warmup_factor, warmup_iters):
    """CLIP-ReID's WarmupMultiStepLR at last_epoch = ``epoch`` (linear warm-up)."""
    factor = 1.0
    if epoch < warmup_iters:
        alpha = epoch / warmup_iters
        factor = warmup_factor * (1 - alpha) + alpha
    return base * factor * gamma ** bisect.bisect_right(steps, epoch)


def timm_cosine(epoch, base, t_initial, lr_min, warmup_t, warmup_lr_init):
    """timm's CosineLRScheduler (cycle 1, no warm-up prefix) at ``epoch``."""
    if epoch < warmup_t:
        return warmup_lr_init + epoch * (base - warmup_lr_init) / warmup_t
    return lr_min + 0.5 * (base - lr_min) * (1 + math.cos(math.pi * epoch / t_initial))


@pytest.mark.parametrize(
    "config, base, factor, steps, epochs, stage1_epochs",
    [
        ("clipreid_vitb16_ltcc.yaml", 5e-6, 0.1, [30, 50], 60, 120),
        ("clipreid_rn50_ltcc.yaml", 3.5e-4, 0.01, [40, 70], 120, 60),
        ("csgn_ltcc.yaml", 5e-6, 0.1, [30, 50], 60, 120),
    ],
)
def test_ltcc_configs_follow_clipreid_schedules_in_both_stages(
    config, base, factor, steps, epochs, stage1_epochs
):
    cfg = load_config(os.path.join(ROOT, "configs", config))
    assert cfg.train.max_epoch == epochs and cfg.stage1.max_epoch == stage1_epochs
    # stage 2: CLIP-ReID calls scheduler.step() at the start of epoch e = 1..N
    expected = [
        clipreid_warmup_multistep(base, e, steps, 0.1, factor, 10) for e in range(1, epochs + 1)
    ]
    got = stage2_lrs(cfg, epochs)
    assert [g[0] for g in got] == pytest.approx(expected, rel=1e-9)
    assert [g[1] for g in got] == pytest.approx([2 * x for x in expected], rel=1e-9)
    # the first epoch runs one warm-up step in (0.19 x base for the ViT's factor 0.1)
    assert got[0][0] == pytest.approx((0.9 * factor + 0.1) * base)
    # stage 1: scheduler.step(epoch) at the start of epoch e = 1..N
    expected1 = [
        timm_cosine(e, 3.5e-4, stage1_epochs, 1e-6, 5, 1e-5) for e in range(1, stage1_epochs + 1)
    ]
    assert stage1_lrs(cfg, stage1_epochs) == pytest.approx(expected1, rel=1e-9)


def test_torchreid_convention_runs_epoch_e_at_index_e_minus_1():
    cfg = load_config(
        "",
        ["train.lr", "1.0", "train.warmup_epochs", "2", "train.warmup_factor", "0.1",
         "train.lr_scheduler", "multi_step", "train.stepsize", "[4, 6]", "train.gamma", "0.1"],
    )  # fmt: skip
    lrs = [g[0] for g in stage2_lrs(cfg, 8)]
    # index 0: 0.1; index 1: 0.55; then 1 until index 4 (x0.1) and 6 (x0.01)
    assert lrs == pytest.approx([0.1, 0.55, 1, 1, 0.1, 0.1, 0.01, 0.01])


def test_torchreid_single_step_decays_every_stepsize_epochs():
    cfg = load_config(
        "", ["train.lr", "1.0", "train.lr_scheduler", "single_step", "train.stepsize", "[2]"]
    )
    assert [g[0] for g in stage2_lrs(cfg, 6)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_cosine_after_warmup_reaches_zero_at_the_last_index():
    cfg = load_config(
        "",
        ["train.lr", "1.0", "train.lr_scheduler", "cosine", "train.max_epoch", "6",
         "train.warmup_epochs", "2", "train.warmup_factor", "0.5"],
    )  # fmt: skip
    expected = [0.5, 0.75] + [0.5 * (1 + math.cos(math.pi * t / 4)) for t in range(4)]
    assert [g[0] for g in stage2_lrs(cfg, 6)] == pytest.approx(expected)


def test_resumed_scheduler_continues_with_the_same_lrs():
    schedule = EpochSchedule("multi_step", 12, (3, 7), 0.5, 4, 0.2, "epoch_start")

    def make():
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        return optimizer, build_epoch_scheduler(optimizer, schedule)

    optimizer, scheduler = make()
    straight = []
    for _ in range(10):
        straight.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    optimizer, scheduler = make()
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    state = (optimizer.state_dict(), scheduler.state_dict())
    optimizer, scheduler = make()
    optimizer.load_state_dict(state[0])
    scheduler.load_state_dict(state[1])
    resumed = []
    for _ in range(5):
        resumed.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert resumed == pytest.approx(straight[5:], rel=1e-12)
