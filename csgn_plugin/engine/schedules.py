"""Learning-rate schedules of both stages, on ``torch.optim.lr_scheduler``.

Both are stepped once per epoch. ``step_at`` says when, which decides which schedule value an
epoch runs with:

* ``'epoch_end'`` (torchreid): epoch e (1-based) runs with the value at index e - 1;
* ``'epoch_start'`` (CLIP-ReID, which calls ``scheduler.step()`` before each epoch): epoch e runs
  with the value at index e. The scheduler is stepped once when it is built.

Stage 2 (:func:`build_epoch_scheduler`, the ``train`` keys) is torchreid's decay with an
optional linear warm-up, composed from torch's schedulers:

* warm-up: ``LinearLR`` from ``warmup_factor`` to 1 over ``warmup_epochs``;
* ``multi_step`` (``MultiStepLR``) and ``single_step`` (``StepLR``, torchreid's meaning: x gamma
  every ``stepsize[0]`` epochs) multiply the warm-up factor (``ChainedScheduler``), which is
  CLIP-ReID's ``WarmupMultiStepLR``;
* ``cosine`` (``CosineAnnealingLR`` over the epochs after the warm-up, to 0) follows it
  (``SequentialLR``); torchreid's own cosine has no warm-up.

Stage 1 (:func:`build_prompt_scheduler`, the ``stage1`` keys) is CLIP-ReID's: timm's
``CosineLRScheduler`` with ``warmup_prefix`` False, i.e. at index e a linear warm-up
``warmup_lr + e (lr - warmup_lr) / warmup_epochs`` while e < ``warmup_epochs``, then
``lr_min + (lr - lr_min) (1 + cos(pi e / max_epoch)) / 2`` - the cosine counts from index 0, so
it does not restart after the warm-up, which no composition of torch's schedulers gives; it is a
``LambdaLR`` of that closed form.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch.optim import lr_scheduler

__all__ = [
    "EpochSchedule",
    "PromptSchedule",
    "build_epoch_scheduler",
    "build_prompt_scheduler",
    "SCHEDULERS",
    "STEP_AT",
    "prompt_lr_factor",
]

SCHEDULERS = ("single_step", "multi_step", "cosine")
STEP_AT = ("epoch_end", "epoch_start")


@dataclass(frozen=True)
class EpochSchedule:
    """Stage 2's schedule (the ``train`` keys)."""

    kind: str  # train.lr_scheduler
    max_epoch: int
    stepsize: tuple[int, ...]
    gamma: float
    warmup_epochs: int
    warmup_factor: float
    step_at: str  # train.step_scheduler_at


@dataclass(frozen=True)
class PromptSchedule:
    """Stage 1's schedule (the ``stage1`` keys)."""

    lr: float
    max_epoch: int
    warmup_epochs: int
    warmup_lr: float
    lr_min: float


def _check_step_at(step_at: str) -> None:
    if step_at not in STEP_AT:
        raise ValueError(f"train.step_scheduler_at must be one of {STEP_AT}, got '{step_at}'")


def _decay(optimizer: torch.optim.Optimizer, s: EpochSchedule) -> lr_scheduler.LRScheduler:
    if s.kind == "multi_step":
        return lr_scheduler.MultiStepLR(optimizer, milestones=list(s.stepsize), gamma=s.gamma)
    if s.kind == "single_step":
        return lr_scheduler.StepLR(optimizer, step_size=s.stepsize[0], gamma=s.gamma)
    if s.kind == "cosine":
        return lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(1, s.max_epoch - s.warmup_epochs)
        )
    raise ValueError(f"train.lr_scheduler must be one of {SCHEDULERS}, got '{s.kind}'")


def build_epoch_scheduler(
    optimizer: torch.optim.Optimizer, schedule: EpochSchedule
) -> lr_scheduler.LRScheduler:
    """Stage 2's per-epoch scheduler (see the module docstring)."""
    _check_step_at(schedule.step_at)
    if schedule.kind in ("multi_step", "single_step") and not schedule.stepsize:
        raise ValueError(f"train.lr_scheduler '{schedule.kind}' needs train.stepsize")
    decay = _decay(optimizer, schedule)
    if schedule.warmup_epochs > 0:
        warmup = lr_scheduler.LinearLR(
            optimizer,
            start_factor=schedule.warmup_factor,
            end_factor=1.0,
            total_iters=schedule.warmup_epochs,
        )
        if schedule.kind == "cosine":
            scheduler: lr_scheduler.LRScheduler = lr_scheduler.SequentialLR(
                optimizer, [warmup, decay], milestones=[schedule.warmup_epochs]
            )
        else:
            scheduler = lr_scheduler.ChainedScheduler([warmup, decay], optimizer=optimizer)
    else:
        scheduler = decay
    if schedule.step_at == "epoch_start":
        optimizer_step_then(scheduler)
    return scheduler


def prompt_lr_factor(schedule: PromptSchedule, index: int) -> float:
    """Stage 1's learning rate at schedule index ``index``, as a multiple of ``schedule.lr``."""
    s = schedule
    if index < s.warmup_epochs:
        lr = s.warmup_lr + index * (s.lr - s.warmup_lr) / s.warmup_epochs
    else:
        progress = index / max(1, s.max_epoch)  # max_epoch 0: no epoch runs at all
        lr = s.lr_min + 0.5 * (s.lr - s.lr_min) * (1.0 + math.cos(math.pi * progress))
    return lr / s.lr


def build_prompt_scheduler(
    optimizer: torch.optim.Optimizer, schedule: PromptSchedule
) -> lr_scheduler.LambdaLR:
    """Stage 1's scheduler, stepped at the start of each epoch as CLIP-ReID does (epoch e of
    1..max_epoch runs at index e)."""
    if not 0 <= schedule.lr_min <= schedule.lr:
        raise ValueError(
            f"stage1.lr_min = {schedule.lr_min}: expected a value in [0, stage1.lr = "
            f"{schedule.lr}] (where the stage-1 cosine ends)"
        )
    scheduler = lr_scheduler.LambdaLR(optimizer, lambda e: prompt_lr_factor(schedule, e))
    optimizer_step_then(scheduler)
    return scheduler


def optimizer_step_then(scheduler: lr_scheduler.LRScheduler) -> None:
    """Advance a freshly built scheduler by one index before any optimizer step (torch warns
    when a scheduler steps first; here that order is the point)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
        scheduler.step()
