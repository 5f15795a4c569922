"""Losses of CSGN: MDG's mutual supervised-contrastive loss (stage 1), HSF, ID and triplet."""

from __future__ import annotations

from .hsf import HSFLoss, label_smoothed_cross_entropy
from .mutual import MutualLoss, supcon_loss
from .triplet import HardTripletLoss

__all__ = [
    "HSFLoss",
    "HardTripletLoss",
    "MutualLoss",
    "label_smoothed_cross_entropy",
    "supcon_loss",
]
