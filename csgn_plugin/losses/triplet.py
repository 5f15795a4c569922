"""Batch-hard triplet loss, vectorised (torchreid's loops over the batch and syncs per sample)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class HardTripletLoss(nn.Module):
    """Hermans et al.'s batch-hard triplet loss on euclidean distances.

    For each anchor: the farthest positive and the closest negative of the batch;
    loss = mean(max(0, d(a, p) - d(a, n) + margin)). Same value as torchreid's ``TripletLoss``;
    an anchor without negatives contributes 0 instead of failing.
    """

    def __init__(self, margin: float) -> None:
        super().__init__()
        self.margin = margin

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        features = features.float()
        squared = features.pow(2).sum(dim=1)
        dist = squared[:, None] + squared[None, :] - 2.0 * features @ features.t()
        dist = dist.clamp(min=1e-12).sqrt()  # (B, B)
        same = labels[:, None] == labels[None, :]
        hardest_positive = dist.masked_fill(~same, float("-inf")).amax(dim=1)
        hardest_negative = dist.masked_fill(same, float("inf")).amin(dim=1)
        return F.relu(hardest_positive - hardest_negative + self.margin).mean()
