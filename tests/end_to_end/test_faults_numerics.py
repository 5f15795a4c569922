"""Numerics: a NaN/Inf loss stops the run within one logging window with the step and the loss
terms, and no checkpoint is ever written from non-finite weights; ``runtime.nan_policy 'skip'``
skips the step instead; fp16 overflow is absorbed by the gradient scaler.

Tiny OSNet run: epoch 1 has 4 steps, epoch 2 has 5; losses are read every 2 steps."""

import functools
import math

import pytest
import torch
from run_helpers import checkpoint, opts

from csgn_plugin import builders, checks
from csgn_plugin.engine.engine import CCEngine
from csgn_plugin.launcher import main
from csgn_plugin.losses.objective import LossTerms, Objective
from csgn_plugin.runtime import NonFiniteLossError


class Poisoned(Objective):
    """``objective``, whose loss of training step ``step`` (1-based) becomes NaN."""

    def __init__(self, objective, step):
        self.objective, self.step, self.calls = objective, step, 0

    def __call__(self, outputs, labels):
        self.calls += 1
        losses = self.objective(outputs, labels)
        if self.calls == self.step:
            return LossTerms({k: v * math.nan for k, v in losses.terms.items()}, {})
        return losses

    def describe(self):
        return self.objective.describe()


def poison_loss_at(monkeypatch, step):
    """The loss of training step ``step`` (1-based) becomes NaN, as after an overflow: the
    objective the engine is built with is wrapped (one call per step)."""
    original = builders.build_objective

    def build_objective(*args):
        return Poisoned(original(*args), step)

    monkeypatch.setattr(builders, "build_objective", build_objective)


def adam_steps(optimizer):
    return int(next(iter(optimizer.state.values()))["step"])


def test_a_nan_loss_stops_within_the_logging_window_and_keeps_the_last_good_checkpoint(
    tmp_path, monkeypatch
):
    poison_loss_at(monkeypatch, 5)  # first step of epoch 2
    save = tmp_path / "run"
    with pytest.raises(NonFiniteLossError) as err:
        main(opts(tmp_path / "data", save, "osnet"))
    message = str(err.value)
    assert "epoch 2 batches 1-2 (steps 5-6)" in message  # the window that holds step 5
    assert "softmax=nan" in message and "triplet=nan" in message  # the loss terms
    assert "runtime.nan_policy 'skip'" in message  # what to change
    state = checkpoint(save)
    assert (state["epoch"], state["global_step"]) == (1, 4)  # end of epoch 1: the last good one
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values())


@pytest.mark.slow
def test_no_checkpoint_is_written_after_a_nan_even_inside_a_window(tmp_path, monkeypatch):
    poison_loss_at(monkeypatch, 6)
    save = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"steps 5-6"):
        main(opts(tmp_path / "data", save, "osnet", "runtime.checkpoint_iters", "1"))
    assert checkpoint(save)["global_step"] == 5  # written before the NaN; step 6's refused


def test_weights_broken_by_a_step_with_a_finite_loss_are_not_checkpointed(tmp_path, monkeypatch):
    original = CCEngine._step

    def step(self, data):
        terms = original(self, data)
        if self.global_step + 1 == 3:  # after the 3rd update: its loss was finite
            with torch.no_grad():
                next(self.unwrapped_model.parameters()).fill_(math.inf)
        return terms

    monkeypatch.setattr(CCEngine, "_step", step)
    save = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match="non-finite weights after step 3.*no checkpoint"):
        main(opts(tmp_path / "data", save, "osnet", "runtime.checkpoint_iters", "1"))
    assert checkpoint(save)["global_step"] == 2


def test_skip_policy_skips_the_bad_step_and_finishes(tmp_path, monkeypatch, capsys):
    poison_loss_at(monkeypatch, 5)
    engine = main(opts(tmp_path / "data", tmp_path / "run", "osnet", "runtime.nan_policy", "skip"))
    out = capsys.readouterr().out
    assert "Warning: skipped step 5 (epoch 2 batch 1) with a non-finite loss (softmax=nan" in out
    assert engine.skipped_steps == 1 and engine.global_step == 9
    assert adam_steps(engine.optimizer) == 8  # 9 steps, one not applied
    final = checkpoint(tmp_path / "run")["state_dict"]
    assert all(torch.isfinite(v).all() for v in final.values())


@pytest.mark.slow
def test_fp16_overflow_is_absorbed_by_the_gradient_scaler(tmp_path, monkeypatch):
    """fp16 with its scaler on the CPU (refused by the config checks, which want CUDA; forced
    here), scale 1 so only the injected overflow counts: an Inf gradient at step 3."""
    monkeypatch.setattr(checks, "resolve_amp", lambda cfg, use_gpu: "fp16")
    monkeypatch.setattr(builders, "resolve_amp", lambda cfg, use_gpu: "fp16")
    monkeypatch.setattr(
        torch.amp, "GradScaler", functools.partial(torch.amp.GradScaler, init_scale=1.0)
    )
    original = CCEngine._step

    def step(self, data):
        if not hasattr(self, "_hooked"):
            self._hooked = True
            first = next(self.unwrapped_model.parameters())
            first.register_hook(lambda g: g * math.inf if self.global_step + 1 == 3 else g)
        return original(self, data)

    monkeypatch.setattr(CCEngine, "_step", step)
    engine = main(opts(tmp_path / "data", tmp_path / "run", "osnet"))
    assert engine.runtime.amp == "fp16" and engine.scaler.get_scale() == 0.5  # halved once
    assert adam_steps(engine.optimizer) == engine.global_step - 1 == 8  # step 3 not applied
    assert engine.skipped_steps == 0  # the loss stayed finite: nothing for nan_policy to do
    final = checkpoint(tmp_path / "run")["state_dict"]
    assert all(torch.isfinite(v).all() for v in final.values())
