"""SynthCC: a procedurally generated clothes-changing ReID dataset in LTCC's exact layout.

``ensure_synthcc(root, preset, seed)`` returns the folder of a tree (generated on first use) that
LTCC's parser reads unchanged. Identities keep their build, skin, hair, bag and head accessory
across outfits; outfits change colours and patterns (and are shared between some identities);
cameras change the scene, light, scale, blur and noise. Pure numpy and Pillow: no torch, no
torchreid.
"""

from __future__ import annotations

from .generator import (
    GENERATOR_VERSION,
    SynthCCError,
    ensure_synthcc,
    generate_synthcc,
    image_name,
    synthcc_dir,
)
from .presets import PRESETS, SynthSpec, get_preset
from .world import CameraSpec, IdentitySpec, OutfitSpec, Tracklet, World, build_world

__all__ = [
    "GENERATOR_VERSION",
    "PRESETS",
    "CameraSpec",
    "IdentitySpec",
    "OutfitSpec",
    "SynthCCError",
    "SynthSpec",
    "Tracklet",
    "World",
    "build_world",
    "ensure_synthcc",
    "generate_synthcc",
    "get_preset",
    "image_name",
    "synthcc_dir",
]
