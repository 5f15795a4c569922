"""The grayscale view of a batch, shared by the prompt stage and the image stage.

Grayscale is ITU-R BT.601 luma (0.299 R + 0.587 G + 0.114 B) of the *un-normalised* image, copied
to three channels. Batches reach the model already normalised, so the transform undoes the
normalisation, takes the luma and normalises again with the same per-channel mean and std.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["LUMA_WEIGHTS", "to_grayscale"]

LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def to_grayscale(
    imgs: torch.Tensor,
    mean: Sequence[float] | torch.Tensor,
    std: Sequence[float] | torch.Tensor,
) -> torch.Tensor:
    """Normalised ``(B, 3, H, W)`` RGB batch -> normalised 3-channel grayscale batch."""
    if imgs.dim() != 4 or imgs.shape[1] != 3:
        raise ValueError(f"to_grayscale expects a (B, 3, H, W) batch, got {tuple(imgs.shape)}")
    mean = torch.as_tensor(mean, dtype=imgs.dtype, device=imgs.device).view(1, 3, 1, 1)
    std = torch.as_tensor(std, dtype=imgs.dtype, device=imgs.device).view(1, 3, 1, 1)
    weights = torch.tensor(LUMA_WEIGHTS, dtype=imgs.dtype, device=imgs.device).view(1, 3, 1, 1)
    raw = imgs * std + mean
    luma = (raw * weights).sum(dim=1, keepdim=True)
    return (luma - mean) / std
