"""CLIP towers, the MDG prompt learner, the VSS backbone, the assembled CSGN models, CAL's model
(``CAL_MODELS``: ``cal_resnet50``, ``cal_osnet_x0_25``), and how a trained model is described,
rebuilt and loaded.

``MODEL_PRESETS`` names the registered models (``csgn``, ``clipreid_vitb16``,
``clipreid_rn50``: one class, :class:`CSGN`, configured by a :class:`CSGNConfig`, which
``builders`` fills from the project config). :class:`ModelSpec` is what a checkpoint records to
rebuild its model (:func:`build_model_from_spec`);
:func:`load_weights_file` / :func:`load_model_weights` load weights under a strict or partial
policy (CLIP-ReID's released checkpoints included).
"""

from __future__ import annotations

from .cal import CAL_MODELS, CALModel, NormalizedClassifier
from .clip_towers import ReIDResNet, ReIDViT
from .clip_weights import load_clip, read_clip_checkpoint
from .csgn import CSGN, MODEL_PRESETS, CSGNConfig, config_from_architecture
from .grayscale import to_grayscale
from .mdg import PromptLearner, TextEncoder
from .spec import ModelSpec, build_model_from_spec, model_spec_for
from .tiny_archs import TINY_ARCHS
from .vss import FUSION_MODES, VSS
from .weights import CheckpointMismatchError, LoadReport, load_model_weights, load_weights_file

__all__ = [
    "CAL_MODELS",
    "CSGN",
    "FUSION_MODES",
    "MODEL_PRESETS",
    "TINY_ARCHS",
    "VSS",
    "CALModel",
    "CSGNConfig",
    "CheckpointMismatchError",
    "LoadReport",
    "ModelSpec",
    "NormalizedClassifier",
    "PromptLearner",
    "ReIDResNet",
    "ReIDViT",
    "TextEncoder",
    "build_model_from_spec",
    "config_from_architecture",
    "load_clip",
    "load_model_weights",
    "load_weights_file",
    "model_spec_for",
    "read_clip_checkpoint",
    "to_grayscale",
]
