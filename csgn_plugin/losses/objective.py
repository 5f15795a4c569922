"""The stage-2 loss recipe of a model family, as one object the engine calls.

The engine knows no loss and no model family. Each step it calls, in this order (every method but
``__call__`` and ``describe`` has a default that does nothing):

1. ``objective.auxiliary_losses(outputs, labels) -> LossTerms``: losses that train parameters the
   objective owns (:meth:`Objective.auxiliary_parameters`); each term is backpropagated and
   stepped by the optimizer of its name, before the main loss exists;
2. ``objective(outputs, labels) -> LossTerms``: the main loss, whose terms' sum the model's
   optimizer minimises;

with ``outputs`` whatever the model returned in train mode and ``labels`` the batch's
:class:`Labels` on the device; and ``objective.set_epoch(epoch)`` at the start of every epoch the
loop runs (a resumed run included). An objective's trainable state (``state_dict``) goes into
every checkpoint. A recipe is chosen by the model's ``loss_recipe`` attribute (torchreid's models
have none: ``'torchreid'``):

* :class:`TorchreidObjective` - torchreid's image engines: ``softmax`` (label-smoothed
  cross-entropy on the logits) or ``triplet`` (``weight_x`` x cross-entropy + ``weight_t`` x
  batch-hard triplet on the features; the model returns ``(logits, features)``).
* :class:`CLIPReIDObjective` - CLIP-ReID's stage 2, which CSGN extends: ``id_weight`` x the
  label-smoothed cross-entropy of every BN-neck classifier + ``triplet_weight`` x the batch-hard
  triplet loss of every triplet feature + HSF (:class:`~csgn_plugin.losses.HSFLoss`) of the
  joint-space feature against the prompt features of every identity. It owns that text bank,
  which the prompt stage hands over (:meth:`CLIPReIDObjective.set_text_bank`).
* :class:`CALObjective` - CAL (Simple-CCReID's ``train_cal``): identity loss, optional cosine
  triplet, and the clothes-based adversarial loss; it owns the clothes classifier, which its
  auxiliary loss trains with an optimizer of its own before the adversarial term is computed.

Adding a loss term to a family touches its objective only; adding a family adds a class here and
a name in :data:`OBJECTIVES`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .cal import clothes_adversarial_loss, cosface_loss, cosine_triplet_loss, gallery_over_ranks
from .hsf import HSFLoss
from .triplet import HardTripletLoss

__all__ = [
    "OBJECTIVES",
    "CALObjective",
    "CLIPReIDObjective",
    "Labels",
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


@dataclass(frozen=True)
class Labels:
    """A training batch's labels on the device: identity, camera and (clothes-changing datasets)
    outfit of every sample."""

    pid: torch.Tensor
    camid: torch.Tensor
    clothes_id: Optional[torch.Tensor] = None


class Objective:
    """The interface the loop calls (the module docstring gives the order)."""

    def __call__(self, outputs: Any, labels: Labels) -> LossTerms:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """The 0-based index of the epoch about to run (epoch-dependent terms)."""

    def auxiliary_parameters(self) -> dict[str, list[nn.Parameter]]:
        """``{name: parameters}``: what each auxiliary loss trains, one optimizer per name."""
        return {}

    def auxiliary_losses(self, outputs: Any, labels: Labels) -> LossTerms:
        """Each term is stepped by the optimizer of its name before :meth:`__call__`."""
        return LossTerms({}, {})

    def to(self, device: torch.device) -> Objective:
        """The objective's tensors and modules on ``device``."""
        return self

    def state_dict(self) -> dict:
        """What a resume needs (trained modules the objective owns)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} has no state, got keys {sorted(state)}")


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

    def __call__(self, outputs: Any, labels: Labels) -> LossTerms:
        pids = labels.pid
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

    def __call__(self, outputs: Any, labels: Labels) -> LossTerms:
        pids = labels.pid
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


# the identity losses of CAL's recipes (Simple-CCReID's LOSS.CLA_LOSS): cross-entropy on a linear
# classifier ('crossentropy', 'crossentropylabelsmooth'), CosFace on a normalised one
CAL_ID_LOSSES = ("cross_entropy", "cosface")


class CALObjective(Objective):
    """CAL as Simple-CCReID's ``train_cal`` computes it, on the dict a CAL model returns in train
    mode (``features``: the BN feature, ``logits``: the identity classifier's output).

    * auxiliary ``clothes``: the clothes classifier (``clothes_classifier``: features -> cosines
      over the training split's outfits) on the *detached* features, CosFace with ``scale`` and
      margin 0; stepped by its own optimizer from epoch ``start_epoch_cc`` (before that it is
      logged only, and the classifier keeps its initial weights);
    * ``id``: ``cross_entropy`` with ``label_smoothing`` (Simple-CCReID's
      ``CrossEntropyWithLabelSmooth`` is torch's: targets ``(1 - eps) onehot + eps / K``) or
      ``cosface`` (``scale``, ``id_margin``) on the identity logits;
    * ``pair`` (when ``pair_weight`` > 0): ``pair_weight`` x the cosine batch-hard triplet over the
      global batch (margin ``pair_margin``);
    * ``adversarial``: the clothes-based adversarial loss (``scale``, ``epsilon``) of the clothes
      classifier's cosines - with the weights its auxiliary step has just updated - on the live
      features, each sample's positive outfits being its identity's (``positive_outfits``: (ids,
      outfits) True where the training split has that outfit of that identity); in the sum from
      epoch ``start_epoch_adv``, logged only before. Its gradient reaches the backbone only: the
      classifier's weights enter as constants (the reference's backward also fills their
      gradients, which its next clothes step discards).
    """

    def __init__(
        self,
        clothes_classifier: nn.Module,
        positive_outfits: torch.Tensor,
        id_loss: str,
        label_smoothing: float,
        scale: float,
        id_margin: float,
        pair_weight: float,
        pair_margin: float,
        epsilon: float,
        start_epoch_cc: int,
        start_epoch_adv: int,
    ) -> None:
        if id_loss not in CAL_ID_LOSSES:
            raise ValueError(f"loss.cal.id_loss must be one of {CAL_ID_LOSSES}, got '{id_loss}'")
        if positive_outfits.dim() != 2 or not positive_outfits.any(dim=1).all():
            raise ValueError("positive_outfits must be (ids, outfits) with an outfit for every id")
        self.clothes_classifier = clothes_classifier
        self.positive_outfits = positive_outfits.bool()
        self.id_loss = id_loss
        self.label_smoothing = float(label_smoothing)
        self.scale = float(scale)
        self.id_margin = float(id_margin)
        self.pair_weight = float(pair_weight)
        self.pair_margin = float(pair_margin)
        self.epsilon = float(epsilon)
        self.start_epoch_cc = int(start_epoch_cc)
        self.start_epoch_adv = int(start_epoch_adv)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def auxiliary_parameters(self) -> dict[str, list[nn.Parameter]]:
        return {"clothes": list(self.clothes_classifier.parameters())}

    @staticmethod
    def _clothes_ids(labels: Labels) -> torch.Tensor:
        if labels.clothes_id is None:
            raise ValueError(
                "CAL needs the clothes id of every training image (a clothes-changing dataset)"
            )
        return labels.clothes_id

    def auxiliary_losses(self, outputs: Any, labels: Labels) -> LossTerms:
        cosines = self.clothes_classifier(outputs["features"].detach().float())
        clothes = cosface_loss(cosines, self._clothes_ids(labels), self.scale, 0.0)
        if self.epoch >= self.start_epoch_cc:
            return LossTerms({"clothes": clothes}, {})
        return LossTerms({}, {"clothes": clothes.detach()})

    def __call__(self, outputs: Any, labels: Labels) -> LossTerms:
        if not isinstance(outputs, dict):
            raise TypeError(
                "the CAL objective needs the dict a CAL model returns in train mode, got "
                f"{type(outputs).__name__}"
            )
        features, logits = outputs["features"].float(), outputs["logits"].float()
        if self.id_loss == "cosface":
            identity = cosface_loss(logits, labels.pid, self.scale, self.id_margin)
        else:
            identity = F.cross_entropy(logits, labels.pid, label_smoothing=self.label_smoothing)
        terms = {"id": identity}
        if self.pair_weight > 0:
            gallery, gallery_pids = gallery_over_ranks(features, labels.pid)
            pair = cosine_triplet_loss(
                features, labels.pid, gallery, gallery_pids, self.pair_margin
            )
            terms["pair"] = self.pair_weight * pair
        constant = {n: p.detach() for n, p in self.clothes_classifier.named_parameters()}
        cosines = torch.func.functional_call(self.clothes_classifier, constant, (features,))
        adversarial = clothes_adversarial_loss(
            cosines,
            self._clothes_ids(labels),
            self.positive_outfits[labels.pid],
            self.scale,
            self.epsilon,
        )
        if self.epoch >= self.start_epoch_adv:
            terms["adversarial"] = adversarial
            return LossTerms(terms, {})
        return LossTerms(terms, {"adversarial": adversarial.detach()})

    def to(self, device: torch.device) -> CALObjective:
        self.clothes_classifier.to(device)
        self.positive_outfits = self.positive_outfits.to(device)
        return self

    def state_dict(self) -> dict:
        return {"clothes_classifier": self.clothes_classifier.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.clothes_classifier.load_state_dict(state["clothes_classifier"])

    def describe(self) -> str:
        if self.id_loss == "cosface":
            identity = f"CosFace (scale {self.scale}, margin {self.id_margin})"
        else:
            identity = f"cross-entropy (label smoothing {self.label_smoothing})"
        pair = (
            f" + {self.pair_weight} x cosine batch-hard triplet (margin {self.pair_margin})"
            if self.pair_weight > 0
            else ""
        )
        return (
            f"CAL: {identity}{pair} + clothes-based adversarial loss (scale {self.scale}, "
            f"epsilon {self.epsilon}) from epoch {self.start_epoch_adv + 1}; the clothes "
            f"classifier (CosFace, scale {self.scale}, margin 0, detached features) trained by its "
            f"own optimizer from epoch {self.start_epoch_cc + 1}"
        )


OBJECTIVES = {"torchreid": TorchreidObjective, "clip_reid": CLIPReIDObjective, "cal": CALObjective}


def recipe_of(model: Any) -> str:
    """The loss recipe a model asks for (its ``loss_recipe``; torchreid's models: 'torchreid')."""
    recipe = getattr(model, "loss_recipe", "torchreid")
    if recipe not in OBJECTIVES:
        raise ValueError(f"model asks for loss recipe '{recipe}'; known: {sorted(OBJECTIVES)}")
    return recipe
