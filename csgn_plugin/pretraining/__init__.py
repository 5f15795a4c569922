"""SynthCLIP: small CLIPs pretrained here, on captions of the SynthCC world.

CSGN starts from a pretrained CLIP whose image-text space is organised by colour; no released
weights can be had offline, so this package pretrains tiny ones on the captioned corpus
(``data.synth.corpus``): one CLIP per image tower (``vit``, ``rn``), each with its own text
tower, as OpenAI released them.

* ``towers``: the architectures at the pretraining size, the export to the square layout that
  ``modeling.load_clip`` reads, and :class:`SynthCLIPEncoder` (embeddings the ReID way);
* ``train``: :func:`pretrain` (deterministic, resumable, scheduled by steps);
* ``cache``: :func:`ensure_synthclip` (a weight file under the data root, pretrained on first
  use), :func:`ensure_synthclip_towers` (both towers, side by side);
* ``probe``: zero-shot retrieval and the colour probe on the held-out images.
"""

from .cache import default_settings, ensure_synthclip, ensure_synthclip_towers, synthclip_dir
from .towers import TOWER_ARCHS, SynthCLIPEncoder
from .train import PretrainSettings, pretrain

__all__ = [
    "TOWER_ARCHS",
    "PretrainSettings",
    "SynthCLIPEncoder",
    "default_settings",
    "ensure_synthclip",
    "ensure_synthclip_towers",
    "pretrain",
    "synthclip_dir",
]
