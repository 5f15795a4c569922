"""Pooling of clip features into tracklet features (video datasets tested on clips)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def average_clip_features(
    features: torch.Tensor, clip_video_index: Sequence[int], num_videos: int
) -> torch.Tensor:
    """Mean of the clip features of each tracklet: (num_clips, d) -> (num_videos, d)."""
    index = torch.as_tensor(clip_video_index, dtype=torch.long, device=features.device)
    if index.numel() != features.shape[0]:
        raise ValueError(
            f"{features.shape[0]} clip features but {index.numel()} clip-to-video indices"
        )
    sums = features.new_zeros(num_videos, features.shape[1]).index_add_(0, index, features)
    counts = torch.bincount(index, minlength=num_videos).clamp_min(1).to(features.dtype)
    return sums / counts[:, None]
