"""Resume restores the random generators: a model that uses them resumes exactly.

The models the other resume tests train draw no random numbers in their training step, so a
resume that forgot the generators (or restored them from another run) would still end with the
same weights. Here a tiny torchreid-style model with dropout is registered in torchreid's model
factory for the module's tests; its training forward also draws one number from Python's
``random``, numpy and torch and keeps them, so the draws of a resumed run can be compared with the
draws the uninterrupted run made at the same steps. The model itself stops the run (an exception
in its 7th training forward): the interruption needs no hook into the engine.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from run_helpers import assert_same_rng, assert_same_weights, checkpoint, opts
from torch import nn

from csgn_plugin.compat import model_factory
from csgn_plugin.launcher import main

MODEL = "test_dropout_probe"
STOP_AT_FORWARD = 7  # checkpoints every 3 steps: the resume starts after step 6
STEPS = 9  # tiny SynthCC, batch 16: two epochs of 4 and 5 steps


class SimulatedKill(KeyboardInterrupt):
    """Ends a run the way Ctrl-C would (the launcher does not catch it)."""


class DropoutProbeNet(nn.Module):
    """Pooled pixels -> linear -> ReLU -> dropout -> feature; a linear classifier on top.

    torchreid's contract: eval mode returns the feature, train mode the logits (softmax loss) or
    ``(logits, feature)`` (triplet loss). ``draws`` holds, per training forward, one draw of
    Python's ``random``, numpy and torch; with ``stop_at`` the ``stop_at``-th training forward
    raises :class:`SimulatedKill` before drawing anything.
    """

    def __init__(self, num_classes: int, loss: str, stop_at: int | None) -> None:
        super().__init__()
        self.embed = nn.Sequential(
            nn.AdaptiveAvgPool2d((4, 2)),
            nn.Flatten(),
            nn.Linear(3 * 4 * 2, 32),
            nn.ReLU(),
            nn.Dropout(0.5),
        )
        self.classifier = nn.Linear(32, num_classes)
        self.loss = loss
        self.stop_at = stop_at
        self.draws: list[tuple[float, float, float]] = []

    def forward(self, imgs: torch.Tensor):
        if not self.training:
            return self.embed(imgs)
        if self.stop_at is not None and len(self.draws) + 1 == self.stop_at:
            raise SimulatedKill(f"training forward {self.stop_at}")
        self.draws.append((random.random(), float(np.random.random()), torch.rand(()).item()))
        feature = self.embed(imgs)
        logits = self.classifier(feature)
        return logits if self.loss == "softmax" else (logits, feature)


STOP_AT: list[int | None] = [None]  # what the next model built stops at


def build_probe(num_classes, loss="softmax", pretrained=True, use_gpu=True, **kwargs):
    """torchreid's factory signature; ``pretrained`` and ``use_gpu`` mean nothing here."""
    return DropoutProbeNet(num_classes, loss, STOP_AT[0])


@pytest.fixture(scope="module")
def registered():
    factory = model_factory()
    assert MODEL not in factory
    factory[MODEL] = build_probe
    yield
    del factory[MODEL]


def probe_opts(root, save_dir, *extra):
    return opts(root / "data", save_dir, "osnet", "model.name", MODEL, *extra)


@pytest.fixture(scope="module")
def straight(registered, tmp_path_factory):
    """The uninterrupted run: (tmp root, its model's draws, its last checkpoint)."""
    root = tmp_path_factory.mktemp("probe")
    engine = main(probe_opts(root, root / "straight"))
    return root, engine.unwrapped_model.draws, checkpoint(root / "straight")


@pytest.fixture(scope="module")
def resumed(straight):
    """Stopped in its 7th training step (epoch 2), resumed: (its draws, its last checkpoint)."""
    root = straight[0]
    save = root / "resumed"
    args = probe_opts(root, save, "runtime.checkpoint_iters", "3", "model.resume", "auto")
    STOP_AT[0] = STOP_AT_FORWARD
    try:
        with pytest.raises(SimulatedKill):
            main(args)
    finally:
        STOP_AT[0] = None
    stopped = checkpoint(save)
    assert (stopped["epoch"], stopped["batch"], stopped["global_step"]) == (1, 2, 6)
    engine = main(args)
    return engine.unwrapped_model.draws, checkpoint(save)


def test_resumed_run_draws_what_the_uninterrupted_run_drew(straight, resumed):
    _, straight_draws, straight_end = straight
    resumed_draws, resumed_end = resumed
    assert len(straight_draws) == STEPS
    # steps 7-9: the same numbers from Python's random, numpy and torch
    assert resumed_draws == straight_draws[STOP_AT_FORWARD - 1 :]
    assert_same_rng(straight_end["rng"], resumed_end["rng"])


def test_model_with_dropout_resumes_to_the_same_weights(straight, resumed):
    assert_same_weights(straight[2]["state_dict"], resumed[1]["state_dict"])
