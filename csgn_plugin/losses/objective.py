"""The stage-2 loss recipe of a model family, as one object the engine calls.

The engine knows no loss and no model family: it calls ``objective(outputs, pids)`` with whatever
the model returned in train mode and optimises the sum of the returned ``terms``. A recipe is
chosen by the model's ``loss_recipe`` attribute (torchreid's models have none: ``'torchreid'``):

* :class:`TorchreidObjective` - torchreid's image engines: ``softmax`` (label-smoothed
  cross-entropy on the logits) or ``triplet`` (``weight_x`` x cross-entropy + ``weight_t`` x
  batch-hard triplet on the features; the model returns ``(logits, features)``).
* :class:`CLIPReIDObjective` - CLIP-ReID's stage 2, which CSGN extends: ``id_weight`` x the
  label-smoothed cross-entropy of every BN-neck classifier + ``triplet_weight`` x the batch-hard
  triplet loss of every triplet feature + HSF (:class:`~csgn_plugin.losses.HSFLoss`) of the
  joint-space feature against the prompt features of every identity. It owns that text bank,
  which the prompt stage hands over (:meth:`CLIPReIDObjective.set_text_bank`).

Adding a loss term to a family touches its objective only; adding a family adds a class here and
a name in :data:`OBJECTIVES`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F

from .hsf import HSFLoss
from .triplet import HardTripletLoss

__all__ = [
    "OBJECTIVES",
    "CLIPReIDObjective",
    "LossTerms",
    "Objective",
    "TorchreidObjective",
    "recipe_of",
]


@dataclass
class LossTerms:
    """``terms``: the weighted terms whose sum is optimised; ``details``: values logged only
    (detached, e.g. HSF's unweighted per-modality losses)."""

    terms: dict[str, torch.Tensor]
    details: dict[str, torch.Tensor]

    @property
    def total(self) -> torch.Tensor:
        return sum(self.terms.values())  # type: ignore[return-value]

    def logged(self) -> dict[str, torch.Tensor]:
        """Every value to log, detached: the terms, then the details."""
        return {k: v.detach() for k, v in {**self.terms, **self.details}.items()}


class Objective:
    """The interface: ``objective(outputs, pids) -> LossTerms`` and a one-line description."""

    def __call__(self, outputs: Any, pids: torch.Tensor) -> LossTerms:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


class TorchreidObjective(Objective):
    """torchreid's softmax / triplet recipes on a torchreid model's train-mode outputs."""

    def __init__(
        self, name: str, label_smoothing: float, margin: float, weight_x: float, weight_t: float
    ) -> None:
        if name not in ("softmax", "triplet"):
            raise ValueError(f"loss.name must be 'softmax' or 'triplet', got '{name}'")
        self.name = name
        self.label_smoothing = float(label_smoothing)
        self.weight_x = float(weight_x)
        self.weight_t = float(weight_t)
        self.triplet = HardTripletLoss(margin)

    def __call__(self, outputs: Any, pids: torch.Tensor) -> LossTerms:
        logits, features = outputs if isinstance(outputs, (tuple, list)) else (outputs, None)
        ce = F.cross_entropy(logits.float(), pids, label_smoothing=self.label_smoothing)
        if self.name == "softmax":
            return LossTerms({"softmax": ce}, {})
        if features is None:
            raise ValueError(
                "loss.name 'triplet' needs the model's (logits, features) in train mode; this "
                "model returned logits only (was it built with loss 'softmax'?)"
            )
        terms = {
            "softmax": self.weight_x * ce,
            "triplet": self.weight_t * self.triplet(features, pids),
        }
        return LossTerms(terms, {})

    def describe(self) -> str:
        ce = f"cross-entropy (label smoothing {self.label_smoothing})"
        if self.name == "softmax":
            return f"torchreid softmax: {ce}"
        return (
            f"torchreid triplet: {self.weight_x} x {ce} + {self.weight_t} x batch-hard triplet "
            f"(margin {self.triplet.margin})"
        )


class CLIPReIDObjective(Objective):
    """ID + triplet + HSF on the dict a CLIP-ReID / CSGN model returns in train mode
    (``logits``: one tensor per classifier, ``features``: the triplet features,
    ``image_feature``: the joint-space feature)."""

    def __init__(
        self,
        id_weight: float,
        triplet_weight: float,
        label_smoothing: float,
        margin: float,
        hsf_weights: Mapping[str, float],
    ) -> None:
        self.id_weight = float(id_weight)
        self.triplet_weight = float(triplet_weight)
        self.label_smoothing = float(label_smoothing)
        self.triplet = HardTripletLoss(margin)
        self.hsf = HSFLoss(weights=dict(hsf_weights), label_smoothing=label_smoothing)
        self.text_bank: Optional[dict[str, torch.Tensor]] = None

    def set_text_bank(self, bank: Mapping[str, torch.Tensor]) -> None:
        """The frozen prompt features of every identity, per modality (from the prompt stage)."""
        self.text_bank = {m: t.detach() for m, t in bank.items()}

    def __call__(self, outputs: Any, pids: torch.Tensor) -> LossTerms:
        if not isinstance(outputs, dict):
            raise TypeError(
                "the CLIP-ReID objective needs the dict a CLIP-ReID/CSGN model returns in train "
                f"mode, got {type(outputs).__name__}"
            )
        terms = {
            "id": self.id_weight
            * sum(
                F.cross_entropy(logits.float(), pids, label_smoothing=self.label_smoothing)
                for logits in outputs["logits"]
            ),
            "triplet": self.triplet_weight
            * sum(self.triplet(feat, pids) for feat in outputs["features"]),
        }
        details: dict[str, torch.Tensor] = {}
        if self.text_bank is not None and self.hsf.weights:
            hsf, parts = self.hsf(outputs["image_feature"].float(), self.text_bank, pids)
            terms["hsf"] = hsf
            details = {f"hsf_{m}": v for m, v in parts.items()}
        return LossTerms(terms, details)

    def describe(self) -> str:
        hsf = " + ".join(f"{w} x i2t({m} prompts)" for m, w in self.hsf.weights.items()) or "none"
        return (
            f"CLIP-ReID stage 2: {self.id_weight} x cross-entropy per classifier (label smoothing "
            f"{self.label_smoothing}) + {self.triplet_weight} x batch-hard triplet per feature "
            f"(margin {self.triplet.margin}) + HSF: {hsf} (label smoothing "
            f"{self.hsf.label_smoothing})"
        )


OBJECTIVES = {"torchreid": TorchreidObjective, "clip_reid": CLIPReIDObjective}


def recipe_of(model: Any) -> str:
    """The loss recipe a model asks for (its ``loss_recipe``; torchreid's models: 'torchreid')."""
    recipe = getattr(model, "loss_recipe", "torchreid")
    if recipe not in OBJECTIVES:
        raise ValueError(f"model asks for loss recipe '{recipe}'; known: {sorted(OBJECTIVES)}")
    return recipe
