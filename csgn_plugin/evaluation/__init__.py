"""Re-identification evaluation: distances, and CMC/mAP under the general, CC and SC protocols."""

from .distance import METRICS, PairwiseDistance, compute_distance_matrix
from .ranking import (
    MODES,
    RankResult,
    draw_single_shot_gallery,
    evaluate_features,
    evaluate_rank,
    evaluate_rank_detailed,
    evaluate_rank_modes,
    single_shot_evaluate,
)

__all__ = [
    "METRICS",
    "MODES",
    "PairwiseDistance",
    "RankResult",
    "compute_distance_matrix",
    "draw_single_shot_gallery",
    "evaluate_features",
    "evaluate_rank",
    "evaluate_rank_detailed",
    "evaluate_rank_modes",
    "single_shot_evaluate",
]
