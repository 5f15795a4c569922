"""CAL's losses (Gu et al., "Clothes-Changing Person Re-identification with RGB Modality Only",
CVPR 2022), as its authors' code, Simple-CCReID, computes them.

All of them act on cosines of L2-normalised features: the clothes classifier and (with 'cosface')
the identity classifier are normalised linear layers whose outputs are cosines in [-1, 1].

* :func:`cosface_loss` - CosFace: cross-entropy of ``scale * (cos - margin * onehot)``. With
  margin 0 it trains CAL's clothes classifier (``losses/__init__.py``: ``CosFaceLoss(scale, 0)``).
* :func:`clothes_adversarial_loss` - the clothes-based adversarial loss: each sample's own outfit,
  and (share ``epsilon``) every outfit of its identity, against the outfits of other identities.
* :func:`cosine_triplet_loss` - batch-hard triplet on cosine distances, over the whole global batch
  under DDP (Simple-CCReID's ``TripletLoss`` with its ``GatherLayer``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

__all__ = [
    "clothes_adversarial_loss",
    "cosface_loss",
    "cosine_triplet_loss",
    "gallery_over_ranks",
]


def cosface_loss(
    cosines: torch.Tensor, labels: torch.Tensor, scale: float, margin: float
) -> torch.Tensor:
    """``mean_i CE(scale * (cos_i - margin * onehot(y_i)), y_i)`` (Wang et al., CVPR 2018)."""
    cosines = cosines.float()
    onehot = F.one_hot(labels, cosines.shape[1]).to(cosines.dtype)
    return F.cross_entropy(scale * (cosines - margin * onehot), labels)


def clothes_adversarial_loss(
    cosines: torch.Tensor,
    clothes_ids: torch.Tensor,
    positive_outfits: torch.Tensor,
    scale: float,
    epsilon: float,
) -> torch.Tensor:
    """CAL's clothes-based adversarial loss (paper Eq. 4).

    ``cosines`` (B, C): the clothes classifier's cosines; ``positive_outfits`` (B, C): True for the
    outfits of each sample's identity (its own outfit included). With ``l = scale * cos``, for a
    positive outfit j of sample i::

        log p_ij = l_ij - log(exp(l_ij) + sum_{k not positive for i} exp(l_ik))

    each positive competes with the other identities' outfits only, never with its identity's
    other outfits. The target puts ``1 - epsilon`` on the sample's own outfit and spreads
    ``epsilon`` evenly over all its identity's outfits; loss = mean_i -sum_j target_ij log p_ij.
    Minimising it makes the feature score every outfit of the identity alike: it removes what
    tells one's outfits apart.
    """
    logits = scale * cosines.float()
    positive = positive_outfits.bool()
    negatives = torch.logsumexp(logits.masked_fill(positive, float("-inf")), dim=1, keepdim=True)
    log_prob = logits - torch.logaddexp(logits, negatives)
    share = positive.float() / positive.sum(dim=1, keepdim=True)
    target = (1.0 - epsilon) * F.one_hot(clothes_ids, logits.shape[1]) + epsilon * share
    # only positive outfits carry target mass; elsewhere log_prob is finite and weighted 0
    return -(target * log_prob).sum(dim=1).mean()


def gallery_over_ranks(
    features: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The features and labels of every rank's share of the batch, concatenated in rank order
    (this rank's alone without DDP). Only this rank's own share carries gradient: the other
    ranks' features are constants here (Simple-CCReID's ``GatherLayer`` keeps only the local
    slice of the gradient, ``losses/gather.py``). Every rank's share has the same size."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return features, labels
    world, rank = dist.get_world_size(), dist.get_rank()
    gathered = [torch.empty_like(features) for _ in range(world)]
    dist.all_gather(gathered, features.detach().contiguous())
    gathered[rank] = features
    gathered_labels = [torch.empty_like(labels) for _ in range(world)]
    dist.all_gather(gathered_labels, labels.contiguous())
    return torch.cat(gathered), torch.cat(gathered_labels)


def cosine_triplet_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    gallery: torch.Tensor,
    gallery_labels: torch.Tensor,
    margin: float,
) -> torch.Tensor:
    """Batch-hard triplet on cosine distances ``1 - cos``: for each anchor of ``features``, the
    farthest positive and the closest negative in ``gallery`` (which holds the anchors too);
    ``mean(max(0, d_ap - d_an + margin))``. An anchor without a negative contributes 0."""
    anchors = F.normalize(features.float(), p=2, dim=1)
    others = F.normalize(gallery.float(), p=2, dim=1)
    distance = 1.0 - anchors @ others.t()
    same = labels[:, None] == gallery_labels[None, :]
    hardest_positive = distance.masked_fill(~same, float("-inf")).amax(dim=1)
    hardest_negative = distance.masked_fill(same, float("inf")).amin(dim=1)
    return F.relu(hardest_positive - hardest_negative + margin).mean()
