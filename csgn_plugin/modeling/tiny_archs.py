"""Small CLIP architectures for tests, CPU demos and CLIPs pretrained here.

Each entry is an open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``) under a
name that :func:`~csgn_plugin.modeling.clip_weights.load_clip` accepts like open_clip's own
architecture names (open_clip's ``create_model`` does not know them). A new small architecture
is one more entry here; nothing else needs to change.
"""

from __future__ import annotations

__all__ = ["TINY_ARCHS"]

# 16 tokens hold the template with its 4 learned tokens; CLIP's 77 would cost 5x on a CPU
_TINY_TEXT = {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}

# Small enough that a CPU forward+backward of a 16-image 128x64 batch takes well under a second.
TINY_ARCHS: dict[str, dict] = {
    "csgn-tiny-vit": {
        "embed_dim": 64,
        "vision_cfg": {
            "image_size": 224,
            "layers": 2,
            "width": 64,
            "patch_size": 16,
            "head_width": 32,
        },
        "text_cfg": dict(_TINY_TEXT),
    },
    "csgn-tiny-rn": {
        "embed_dim": 64,
        "vision_cfg": {
            "image_size": 224,
            "layers": [1, 1, 1, 1],
            "width": 8,
            "patch_size": None,
            "head_width": 64,
        },
        "text_cfg": dict(_TINY_TEXT),
    },
}

# SynthCLIP (csgn_plugin.pretraining pretrains them on the captioned SynthCC corpus). Native size
# 128 square (an 8x8 patch grid, a 4x4 attention-pool grid) as OpenAI's CLIPs are square: the
# pretraining runs at 128x64 with the grids' columns paired, so ReID at 128x64 samples exactly the
# pretrained grids. Text context 24: the corpus captions (<= 24 tokens) and the ReID prompt (10).
# QuickGELU, as OpenAI trained: named here, so 'auto' picks it for every weight format.
_SYNTHCLIP_TEXT = {"context_length": 24, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}
TINY_ARCHS["synthclip-vit"] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 128, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": dict(_SYNTHCLIP_TEXT),
    "quick_gelu": True,
}
TINY_ARCHS["synthclip-rn"] = {
    "embed_dim": 64,
    "vision_cfg": {
        "image_size": 128,
        "layers": [1, 1, 1, 1],
        "width": 8,
        "patch_size": None,
        "head_width": 64,
    },
    "text_cfg": dict(_SYNTHCLIP_TEXT),
    "quick_gelu": True,
}
