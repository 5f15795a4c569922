"""SynthCC: a procedurally generated clothes-changing ReID dataset in LTCC's exact layout.

``ensure_synthcc(root, preset, seed)`` returns the folder of a tree (generated on first use) that
LTCC's parser reads unchanged. Identities keep their build, skin, hair, bag and head accessory
across outfits; outfits change colours and patterns (and are shared between some identities);
cameras change the scene, light, scale, blur and noise. Pure numpy and Pillow: no torch, no
torchreid.

The same world also renders the captioned corpus SynthCLIP pretrains on (``corpus``:
``ensure_corpus``, ``load_corpus``; captions in ``captions``), with people of its own.
"""

from __future__ import annotations

from .corpus import CORPUS_PRESETS, Corpus, CorpusError, CorpusSpec, ensure_corpus, load_corpus
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
    "CORPUS_PRESETS",
    "GENERATOR_VERSION",
    "PRESETS",
    "CameraSpec",
    "Corpus",
    "CorpusError",
    "CorpusSpec",
    "IdentitySpec",
    "OutfitSpec",
    "SynthCCError",
    "SynthSpec",
    "Tracklet",
    "World",
    "build_world",
    "ensure_corpus",
    "ensure_synthcc",
    "generate_synthcc",
    "get_preset",
    "image_name",
    "load_corpus",
    "synthcc_dir",
]
