"""CLIP towers, the MDG prompt learner, the VSS backbone and the assembled CSGN models.

``MODEL_FACTORIES`` maps torchreid model names to factory functions (the registry installs them
into torchreid's model factory); :func:`build_model_from_config` builds one of them from the
project config and returns ``None`` for names that are not ours.
"""

from __future__ import annotations

from .clip_towers import ReIDResNet, ReIDViT
from .clip_weights import load_clip, read_clip_checkpoint
from .csgn import (
    CSGN,
    MODEL_FACTORIES,
    MODEL_PRESETS,
    CSGNConfig,
    build_model_from_config,
    config_from_cfg,
    preset_config,
)
from .grayscale import to_grayscale
from .mdg import PromptLearner, TextEncoder
from .tiny_archs import TINY_ARCHS
from .vss import FUSION_MODES, VSS

__all__ = [
    "CSGN",
    "FUSION_MODES",
    "MODEL_FACTORIES",
    "MODEL_PRESETS",
    "TINY_ARCHS",
    "VSS",
    "CSGNConfig",
    "PromptLearner",
    "ReIDResNet",
    "ReIDViT",
    "TextEncoder",
    "build_model_from_config",
    "config_from_cfg",
    "load_clip",
    "preset_config",
    "read_clip_checkpoint",
    "to_grayscale",
]
