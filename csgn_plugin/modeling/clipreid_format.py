"""CLIP-ReID's released checkpoints (Li, Sun, Li; github.com/Syliz517/CLIP-ReID) in our names.

CLIP-ReID saves the ``state_dict()`` of its ReID model (keys possibly prefixed ``module.``):

=============================================  ============================================
CLIP-ReID key                                  ours (``clipreid_vitb16`` / ``clipreid_rn50``)
=============================================  ============================================
``image_encoder.<k>`` (ViT-B/16)               ``vss.vit.<k>``
``image_encoder.<k>`` (RN50)                   ``vss.resnet.<k>``
``cv_embed`` (cameras x 768, SIE)              ``vss.vit.camera_embedding``
``bottleneck.<k>``                             ``vss.necks.<p>.<k>``
``classifier.weight``                          ``vss.classifiers.<p>.weight``
``bottleneck_proj.<k>``                        ``vss.necks.proj.<k>``
``classifier_proj.weight``                     ``vss.classifiers.proj.weight``
``prompt_learner.cls_ctx`` (ids x 4 x 512)     ``prompt_learner.ctx.rgb``
``prompt_learner.token_prefix/token_suffix``   the same names
``text_encoder.<k>``                           the same names
=============================================  ============================================

``<p>`` is the part of the tower's own feature: ``global`` (ViT), ``local`` (RN50).

CLIP-ReID's image tower is CLIP's at the ReID input size, with its interpolated positional grid
stored in the file; our towers compute the same grid from CLIP's, so a converted file loads into
a model built (with random towers) from the architecture the file implies:

* the tower: ``image_encoder.proj`` exists for the ViT-B/16, ``image_encoder.attnpool.*`` for
  the RN50 (CLIP-ReID supports exactly these two; layer 4 of its RN50 has stride 1);
* the ViT stride: the positional grid holds ``((H-16)//s + 1) * ((W-16)//s + 1)`` tokens at
  input size H x W (16 for the plain models, 12 for the overlapping-patch ``12x12`` ones);
* the SIE cameras: the rows of ``cv_embed`` (camera x view rows if it was trained with views);
* the activation: CLIP-ReID's own CLIP code builds every transformer with QuickGELU;
* the SIE scale is not in the file: CLIP-ReID's default ``SIE_COE`` is 3.0 and its README trains
  the released SIE + overlapping-patch models with 1.0, so a stride-12 file with cameras gets 1.0
  and any other 3.0, unless told otherwise.

Its inference feature (``TEST.NECK_FEAT 'before'`` in its configs) is the concatenation of the
image feature and the projected feature before the BN necks: our ``test_neck 'before'`` with
every part. With SIE, CLIP-ReID also adds the camera vectors at test time (it passes the camera
ids). Its configs use 256x128 inputs, mean/std 0.5 for the ViT and ImageNet's for the RN50, and
resize test images with torchvision's default (bilinear).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Optional

import torch

from ..errors import ConfigError
from .clip_towers import resnet_grid, vit_grid
from .csgn import CONFIG_KEYS, CSGNConfig, architecture_of
from .spec import ModelSpec

__all__ = [
    "CLIPREID_INPUTS",
    "clipreid_facts",
    "clipreid_mismatches",
    "clipreid_model_spec",
    "convert_clipreid_state_dict",
    "is_clipreid_state_dict",
]

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
# CLIP-ReID's configs (configs/person/*_clipreid.yml): input size, normalisation, test resize
CLIPREID_INPUTS: dict[str, dict[str, Any]] = {
    "clipreid_vitb16": {
        "height": 256,
        "width": 128,
        "norm_mean": [0.5, 0.5, 0.5],
        "norm_std": [0.5, 0.5, 0.5],
        "interpolation": "bilinear",
    },
    "clipreid_rn50": {
        "height": 256,
        "width": 128,
        "norm_mean": IMAGENET_MEAN,
        "norm_std": IMAGENET_STD,
        "interpolation": "bilinear",
    },
}
_PATCH = 16  # ViT-B/16
_VIT_WIDTH, _VIT_LAYERS = 768, 12
_RN50_LAYERS = (3, 4, 6, 3)
_SIE_SCALE_DEFAULT, _SIE_SCALE_OVERLAP = 3.0, 1.0
# What CLIP-ReID's model code fixes for every released file (model/make_model_clipreid.py): its
# prompt ("A photo of a X X X X person.", 4 vectors initialised N(0, 0.02)), bilinear position
# grids, RN50 layer 4 at stride 1, the features before the BN necks at test time, no flip. The
# fusion fields of a one-tower model are never used.
_CLIPREID_FIXED: dict[str, Any] = {
    "vit_weights": "",
    "resnet_weights": "",
    "vit_stride": _PATCH,
    "resnet_last_stride": 1,
    "pos_interp": "bilinear",
    "prompt_template": "A photo of a {} person.",
    "prompt_n_ctx": 4,
    "prompt_init_std": 0.02,
    "fusion": "concat",
    "fusion_heads": 8,
    "fusion_init_std": 0.0,
    "test_neck": "before",
    "test_parts": ("auto",),
    "test_flip": False,
    "test_part_norm": False,
}


def _strip(state: Mapping[str, Any]) -> dict[str, Any]:
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}


def is_clipreid_state_dict(state: Mapping[str, Any]) -> bool:
    """Whether ``state`` has CLIP-ReID's naming (its image encoder, heads and prompt vectors)."""
    keys = set(_strip(state))
    return (
        "prompt_learner.cls_ctx" in keys
        and "bottleneck_proj.weight" in keys
        and any(k.startswith("image_encoder.") for k in keys)
    )


def _count_blocks(keys: set[str], prefix: str) -> int:
    return len({k[len(prefix) :].split(".")[0] for k in keys if k.startswith(prefix)})


def infer_vit_stride(tokens: int, image_size: tuple[int, int], where: str = "the file") -> int:
    """The stride whose token grid at ``image_size`` has ``tokens`` tokens."""
    fits = [s for s in range(1, _PATCH + 1) if _grid_tokens(image_size, s) == tokens]
    if len(fits) != 1:
        known = {s: _grid_tokens(image_size, s) for s in (16, 12)}
        raise ConfigError(
            f"{where}: its ViT positional grid holds {tokens} tokens, which "
            f"{'no' if not fits else 'more than one'} patch stride gives at input size "
            f"{tuple(image_size)} (stride 16: {known[16]}, stride 12: {known[12]} tokens): "
            "set data.height / data.width to the size it was trained at"
        )
    return fits[0]


def _grid_tokens(image_size: tuple[int, int], stride: int) -> int:
    h, w = vit_grid(image_size, _PATCH, stride)
    return h * w


def clipreid_facts(
    state: Mapping[str, Any], image_size: tuple[int, int], where: str = "the file"
) -> dict[str, Any]:
    """What a CLIP-ReID state dict fixes about the model, for input size ``image_size``.

    Keys: ``name`` (``clipreid_vitb16`` / ``clipreid_rn50``), ``num_classes``, and the
    architecture fields ``vit_arch``, ``resnet_arch``, ``activation``, ``modalities``,
    ``image_size``, ``num_cameras``, ``vit_stride`` (ViT) or ``resnet_last_stride`` (RN50).
    """
    state = _strip(state)
    if not is_clipreid_state_dict(state):
        raise ValueError(f"{where} is not a CLIP-ReID state dict (no prompt_learner.cls_ctx)")
    keys = set(state)
    size = tuple(int(v) for v in image_size)
    facts: dict[str, Any] = {
        "num_classes": int(state["classifier_proj.weight"].shape[0]),
        "activation": "quick_gelu",
        "modalities": ["rgb"],
        "image_size": list(size),
    }
    if "image_encoder.proj" in keys:
        width = state["image_encoder.conv1.weight"].shape[0]
        layers = _count_blocks(keys, "image_encoder.transformer.resblocks.")
        if (width, layers) != (_VIT_WIDTH, _VIT_LAYERS):
            raise ValueError(
                f"{where}: a ViT of width {width} with {layers} blocks is not CLIP-ReID's "
                "ViT-B/16 (width 768, 12 blocks)"
            )
        tokens = state["image_encoder.positional_embedding"].shape[0] - 1
        cameras = state["cv_embed"].shape[0] if "cv_embed" in keys else 0
        facts.update(
            name="clipreid_vitb16",
            vit_arch="ViT-B-16",
            resnet_arch="",
            vit_stride=infer_vit_stride(tokens, size, where),
            num_cameras=int(cameras),
        )
    elif "image_encoder.attnpool.positional_embedding" in keys:
        layers = tuple(_count_blocks(keys, f"image_encoder.layer{i}.") for i in (1, 2, 3, 4))
        if layers != _RN50_LAYERS:
            raise ValueError(f"{where}: a ResNet with blocks {layers} is not CLIP-ReID's RN50")
        tokens = state["image_encoder.attnpool.positional_embedding"].shape[0] - 1
        grid = resnet_grid(size, 1)
        if grid[0] * grid[1] != tokens:
            raise ConfigError(
                f"{where}: its RN50 attention-pool grid holds {tokens} tokens, but input size "
                f"{size} gives a {grid[0]}x{grid[1]} layer-4 map: set data.height / data.width "
                "to the size it was trained at"
            )
        facts.update(
            name="clipreid_rn50",
            vit_arch="",
            resnet_arch="RN50",
            resnet_last_stride=1,
            num_cameras=0,
        )
    else:
        raise ValueError(f"{where}: CLIP-ReID image encoder of unknown kind (neither ViT nor RN50)")
    return facts


def clipreid_mismatches(facts: Mapping[str, Any], architecture: Mapping[str, Any]) -> list[str]:
    """``field (config key): file X, model Y`` for every fact the model's architecture breaks."""
    out = []
    for key, value in facts.items():
        if key in ("name", "num_classes") or architecture.get(key) == value:
            continue
        out.append(f"{key} ({CONFIG_KEYS[key]}): file {value!r}, model {architecture.get(key)!r}")
    return out


def convert_clipreid_state_dict(
    state: Mapping[str, torch.Tensor], where: str = "the file"
) -> OrderedDict:
    """CLIP-ReID's keys renamed to ours (see the module table); unknown keys are refused."""
    state = _strip(state)
    if not is_clipreid_state_dict(state):
        raise ValueError(f"{where} is not a CLIP-ReID state dict (no prompt_learner.cls_ctx)")
    vit = "image_encoder.proj" in state
    tower, part = ("vss.vit", "global") if vit else ("vss.resnet", "local")
    renames = {
        "image_encoder.": f"{tower}.",
        "bottleneck_proj.": "vss.necks.proj.",
        "bottleneck.": f"vss.necks.{part}.",
        "classifier_proj.": "vss.classifiers.proj.",
        "classifier.": f"vss.classifiers.{part}.",
        "text_encoder.": "text_encoder.",
    }
    exact = {
        "cv_embed": "vss.vit.camera_embedding",
        "prompt_learner.cls_ctx": "prompt_learner.ctx.rgb",
        "prompt_learner.token_prefix": "prompt_learner.token_prefix",
        "prompt_learner.token_suffix": "prompt_learner.token_suffix",
    }
    out: OrderedDict = OrderedDict()
    unknown = []
    for key, value in state.items():
        if key in exact and (vit or key != "cv_embed"):
            new = exact[key]
        else:
            prefix = next((p for p in renames if key.startswith(p)), None)
            if prefix is None:
                unknown.append(key)
                continue
            new = renames[prefix] + key[len(prefix) :]
        out[new] = value.float() if value.is_floating_point() else value
    if unknown:
        raise ValueError(f"{where}: keys CLIP-ReID's model does not have: {unknown[:10]}")
    return out


def clipreid_model_spec(
    state: Mapping[str, Any],
    input: Optional[dict[str, Any]] = None,
    sie_scale: Optional[float] = None,
    where: str = "the file",
) -> ModelSpec:
    """The spec of the plugin model a CLIP-ReID file becomes.

    ``input`` holds overrides of CLIP-ReID's own input for the file's tower
    (:data:`CLIPREID_INPUTS`); ``sie_scale`` defaults to 1.0 for stride-12 files with cameras
    and 3.0 otherwise (module docstring). The inference feature is CLIP-ReID's: every part,
    before the BN necks, no flip.
    """
    stripped = _strip(state)
    kind = "clipreid_vitb16" if "image_encoder.proj" in stripped else "clipreid_rn50"
    input = {**CLIPREID_INPUTS[kind], **(input or {})}
    facts = clipreid_facts(stripped, (input["height"], input["width"]), where)
    if sie_scale is None:
        overlapping = facts.get("vit_stride", _PATCH) < _PATCH and facts["num_cameras"] > 0
        sie_scale = _SIE_SCALE_OVERLAP if overlapping else _SIE_SCALE_DEFAULT
    fields = {k: v for k, v in facts.items() if k not in ("name", "num_classes")}
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    config = CSGNConfig(
        **{**_CLIPREID_FIXED, **fields},
        pixel_mean=tuple(input["norm_mean"]),
        pixel_std=tuple(input["norm_std"]),
        sie_scale=float(sie_scale),
    )
    return ModelSpec(
        facts["name"], facts["num_classes"], architecture_of(config, facts["activation"]), input
    )
