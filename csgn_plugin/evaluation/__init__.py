"""Re-identification evaluation: distances, CMC/mAP under the general, CC and SC protocols, and
the evaluator that extracts features of a model and tabulates every protocol."""

from .distance import METRICS, PairwiseDistance, compute_distance_matrix
from .evaluator import EvaluationOptions, Evaluator, format_results, results_to_dict
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
    "EvaluationOptions",
    "Evaluator",
    "PairwiseDistance",
    "RankResult",
    "compute_distance_matrix",
    "draw_single_shot_gallery",
    "evaluate_features",
    "evaluate_rank",
    "evaluate_rank_detailed",
    "evaluate_rank_modes",
    "format_results",
    "results_to_dict",
    "single_shot_evaluate",
]
