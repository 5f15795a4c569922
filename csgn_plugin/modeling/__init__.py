"""CLIP towers, the MDG prompt learner, the VSS backbone and the assembled CSGN models."""

from __future__ import annotations

MODEL_FACTORIES: dict = {}
