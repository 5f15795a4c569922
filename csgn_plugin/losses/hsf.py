"""HSF, the Heterogeneous Semantic Fusion loss, and the label-smoothed cross-entropy it uses.

HSF extends CLIP-ReID's stage-2 image-to-text loss: the joint-space image feature is scored
against the prompt features of *all* identities (raw dot products, no normalisation, no
temperature) and trained with label-smoothed cross-entropy (epsilon 0.1), once against the RGB
prompt bank and once against the grayscale bank, each with its weight.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

__all__ = ["HSFLoss", "label_smoothed_cross_entropy"]


def label_smoothed_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, epsilon: float
) -> torch.Tensor:
    """CLIP-ReID's / torchreid's ``CrossEntropyLabelSmooth``: targets ``(1 - eps) * onehot +
    eps / K``, loss ``mean_batch sum_k -target_k log softmax_k``."""
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"label smoothing must be in [0, 1), got {epsilon}")
    return F.cross_entropy(logits.float(), labels, label_smoothing=epsilon)


class HSFLoss:
    """``sum_m weights[m] * CE_ls(image_feature @ text_bank[m].T, labels)``.

    ``loss(image_feature, text_bank, labels)``: ``image_feature`` (B, E) from the model's train
    output, ``text_bank[m]`` (num_ids, E) the frozen prompt features of every identity for
    modality m. Modalities with weight 0, and weighted modalities the model has no prompts for
    (the CLIP-ReID baselines only have ``rgb``), are skipped; all weights 0 give a zero loss;
    weights > 0 without any matching bank are an error. Returns ``(total, terms)`` with
    detached, unweighted terms keyed by modality.
    """

    def __init__(self, weights: Mapping[str, float], label_smoothing: float) -> None:
        if any(w < 0 for w in weights.values()):
            raise ValueError(f"HSF weights must be >= 0, got {dict(weights)}")
        self.weights = {m: float(w) for m, w in weights.items() if w != 0}
        self.label_smoothing = float(label_smoothing)

    def __call__(
        self,
        image_feature: torch.Tensor,
        text_bank: Mapping[str, torch.Tensor],
        labels: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if not self.weights:  # all weights 0: the "no HSF" ablation
            return image_feature.new_zeros((), dtype=torch.float32), {}
        used = [m for m in self.weights if m in text_bank]
        if not used:
            raise ValueError(
                f"HSF has weights for {sorted(self.weights)} but prompt banks only for "
                f"{sorted(text_bank)}"
            )
        terms: dict[str, torch.Tensor] = {}
        total = None
        for m in used:
            logits = image_feature.float() @ text_bank[m].float().t()
            loss = label_smoothed_cross_entropy(logits, labels, self.label_smoothing)
            terms[m] = loss.detach()
            total = self.weights[m] * loss if total is None else total + self.weights[m] * loss
        return total, terms
