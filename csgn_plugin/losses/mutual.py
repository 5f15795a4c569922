"""MDG's stage-1 loss: supervised contrastive image<->text terms per modality (CLIP-ReID).

CLIP-ReID's SupConLoss (temperature 1, raw dot products of *unnormalised* features, positives =
every contrast sample with the anchor's identity, mean log-probability over positives, averaged
over anchors) applied both ways: i2t (image anchors, prompt features as contrast) and t2i.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

__all__ = ["MutualLoss", "supcon_loss"]


def supcon_loss(
    anchors: torch.Tensor,
    contrast: torch.Tensor,
    anchor_labels: torch.Tensor,
    contrast_labels: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Supervised contrastive loss of ``anchors`` (N, E) against ``contrast`` (M, E).

    ``loss = -mean_i [ mean_{j: y_j = y_i} log softmax_j(a_i . c_j / T) ]``. Anchors without any
    positive in ``contrast`` are left out of the mean (CLIP-ReID never has such anchors: it
    contrasts a batch with the same batch's prompts); if no anchor has one, it is an error.
    """
    if anchors.dim() != 2 or contrast.dim() != 2 or anchors.shape[1] != contrast.shape[1]:
        raise ValueError(
            f"supcon_loss needs (N, E) and (M, E) features, got {tuple(anchors.shape)} and "
            f"{tuple(contrast.shape)}"
        )
    if anchor_labels.shape != (anchors.shape[0],) or contrast_labels.shape != (contrast.shape[0],):
        raise ValueError("supcon_loss: one label per anchor and per contrast sample")
    logits = anchors.float() @ contrast.float().t() / temperature
    log_prob = torch.log_softmax(logits, dim=1)
    positives = (anchor_labels.view(-1, 1) == contrast_labels.view(1, -1)).float()
    counts = positives.sum(dim=1)
    has_positive = counts > 0
    if not bool(has_positive.any()):
        raise ValueError("supcon_loss: no anchor has a positive (same-label) contrast sample")
    mean_log_prob = (positives * log_prob).sum(dim=1)[has_positive] / counts[has_positive]
    return -mean_log_prob.mean()


class MutualLoss:
    """Sum over modalities m of ``supcon(img_m -> txt_m) + supcon(txt_m -> img_m)``, plus
    ``cross_modal_weight`` x the cross terms (rgb images <-> gray prompts and gray images <->
    rgb prompts, both directions) when both modalities are given.

    ``loss(image_feats, text_feats, labels)``: ``image_feats[m]`` (B, E) are the cached CLIP image
    features of the batch's images of modality m, ``text_feats[m]`` (B, E) the prompt features of
    the batch's labels; returns ``(total, terms)`` with detached terms ``'<m>_i2t'``,
    ``'<m>_t2i'`` and, when computed, ``'cross'`` (unweighted).
    """

    def __init__(self, cross_modal_weight: float) -> None:
        if cross_modal_weight < 0:
            raise ValueError(f"cross_modal_weight must be >= 0, got {cross_modal_weight}")
        self.cross_modal_weight = float(cross_modal_weight)

    def __call__(
        self,
        image_feats: Mapping[str, torch.Tensor],
        text_feats: Mapping[str, torch.Tensor],
        labels: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if set(image_feats) != set(text_feats) or not image_feats:
            raise ValueError(
                f"MutualLoss needs image and text features of the same modalities, got "
                f"{sorted(image_feats)} and {sorted(text_feats)}"
            )
        terms: dict[str, torch.Tensor] = {}
        total = None
        for m in image_feats:
            i2t = supcon_loss(image_feats[m], text_feats[m], labels, labels)
            t2i = supcon_loss(text_feats[m], image_feats[m], labels, labels)
            terms[f"{m}_i2t"], terms[f"{m}_t2i"] = i2t.detach(), t2i.detach()
            total = i2t + t2i if total is None else total + i2t + t2i
        if self.cross_modal_weight > 0 and {"rgb", "gray"} <= set(image_feats):
            cross = 0.0
            for img_m, txt_m in (("rgb", "gray"), ("gray", "rgb")):
                cross = cross + supcon_loss(image_feats[img_m], text_feats[txt_m], labels, labels)
                cross = cross + supcon_loss(text_feats[txt_m], image_feats[img_m], labels, labels)
            terms["cross"] = cross.detach()
            total = total + self.cross_modal_weight * cross
        return total, terms
