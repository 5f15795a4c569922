"""CLIP architectures and weight files: an open_clip ``CLIP`` built and filled with weights.

* :func:`clip_arch_config` is the open_clip model config of an architecture name: open_clip's own
  names or the small ones of :data:`~csgn_plugin.modeling.tiny_archs.TINY_ARCHS`.
* :func:`read_clip_checkpoint` reads a weight file. Files go through open_clip's own reader
  (``open_clip.factory.load_state_dict``: safetensors, pickled state dicts, a ``state_dict``
  entry, a ``module.`` prefix); OpenAI's released ``.pt`` files are TorchScript archives, which
  that reader cannot open with ``weights_only``, so they are read here with ``torch.jit.load``.
* :func:`load_clip` builds a ``CLIP`` at its native resolution with random weights, the weights
  of a file, or those of an open_clip pretrained tag (``'openai'``: downloads).
* The activation of the transformers (``'quick_gelu'``, which OpenAI trained with, or
  ``'gelu'``, open_clip's own models) is part of the architecture, yet most weight files do not
  record it. ``activation='auto'`` decides from what is known, strongest evidence first: an
  architecture whose config names it (open_clip's ``*-quickgelu``), the pretrained tag's record,
  the ``open_clip_config.json`` that open_clip's hub format keeps beside its weights, and last the
  file's layout (TorchScript archives and flat state dicts are OpenAI's: QuickGELU; open_clip's
  training checkpoints: GELU). A safetensors file without that config says nothing, so ``auto``
  refuses it. Random towers use GELU. :func:`transformer_activation` reads back what a built
  model uses, which is what a trained model records in its architecture.
"""

from __future__ import annotations

import json
import os
import warnings
import zipfile
from typing import Optional

import open_clip
import torch
from open_clip.factory import load_state_dict as open_clip_load_state_dict
from open_clip.transformer import QuickGELU
from torch import nn

from ..errors import CheckpointNotFoundError, CheckpointReadError
from .tiny_archs import TINY_ARCHS

__all__ = [
    "ACTIVATIONS",
    "clip_arch_config",
    "load_clip",
    "read_clip_checkpoint",
    "recorded_activation",
    "transformer_activation",
]

ACTIVATIONS = ("auto", "quick_gelu", "gelu")

# Entries of OpenAI's TorchScript state dicts that are metadata or non-persistent buffers.
_NON_WEIGHT_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask")
# open_clip's hub format keeps the model config next to the weights under this name.
_HUB_CONFIG_NAME = "open_clip_config.json"


def clip_arch_config(arch: str) -> dict:
    """A fresh copy of the open_clip model config of ``arch`` (checked to be a plain CLIP)."""
    if arch in TINY_ARCHS:
        return json.loads(json.dumps(TINY_ARCHS[arch]))
    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        known = sorted(TINY_ARCHS) + open_clip.list_models()
        raise ValueError(f"unknown CLIP architecture '{arch}'; known: {', '.join(known)}")
    unsupported = [k for k in ("custom_text", "multimodal_cfg") if cfg.get(k)]
    unsupported += [k for k in ("timm_model_name",) if cfg["vision_cfg"].get(k)]
    unsupported += [k for k in ("hf_model_name",) if cfg["text_cfg"].get(k)]
    if unsupported:
        raise ValueError(
            f"CLIP architecture '{arch}' uses {unsupported}: only plain OpenAI-style CLIP "
            "models (ViT or ModifiedResNet image tower, CLIP text transformer) are supported"
        )
    return cfg


def _is_torchscript(path: str) -> bool:
    """TorchScript archives are zip files holding ``<name>/code/`` and ``constants.pkl``."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def _pickle_layout(path: str) -> str:
    """``'open_clip'`` (a dict with ``state_dict``) or ``'openai-state-dict'`` (flat tensors).

    The file is memory-mapped, so looking costs the pickle, not the tensors; files in torch's
    legacy (pre-zip) format cannot be mapped and are read whole.
    """
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointReadError(
            f"'{path}' is not a readable CLIP weight file (expected an OpenAI TorchScript "
            f"archive, a state dict, an open_clip checkpoint or a safetensors file): {exc}"
        ) from exc
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict) and obj["state_dict"]:
        return "open_clip"
    if isinstance(obj, dict) and obj and all(torch.is_tensor(v) for v in obj.values()):
        return "openai-state-dict"
    raise ValueError(
        f"'{path}' holds a {type(obj).__name__} that is neither a state dict nor an "
        "open_clip checkpoint (a dict with 'state_dict')"
    )


def read_clip_checkpoint(path: str) -> tuple[dict[str, torch.Tensor], str]:
    """Read a CLIP weight file; returns ``(state_dict, format)``.

    ``format`` is ``'openai-torchscript'`` (OpenAI's released ``.pt`` archives),
    ``'openai-state-dict'`` (a flat dict of CLIP's parameter names, as OpenAI's ``clip`` package
    and open_clip's pickled hub files store them), ``'open_clip'`` (open_clip's training
    checkpoint: a dict with ``'state_dict'``, keys possibly prefixed ``module.``) or
    ``'safetensors'`` (open_clip's hub format ``open_clip_model.safetensors``).
    """
    if not os.path.isfile(path):
        raise CheckpointNotFoundError(f"CLIP weight file not found: '{path}'")
    if _is_torchscript(path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.load is deprecated in favour of export
            try:
                module = torch.jit.load(path, map_location="cpu")
            except RuntimeError as exc:
                raise CheckpointReadError(f"'{path}': damaged TorchScript archive: {exc}") from exc
        state, fmt = dict(module.state_dict()), "openai-torchscript"
        if all(k.startswith("module.") for k in state):
            state = {k[len("module.") :]: v for k, v in state.items()}
    else:
        fmt = "safetensors" if path.endswith(".safetensors") else _pickle_layout(path)
        try:
            state = open_clip_load_state_dict(path, device="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointReadError(
                f"'{path}' is not a readable {fmt} CLIP weight file: {exc}"
            ) from exc
        if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
            raise ValueError(f"'{path}' holds no CLIP state dict (expected tensors by name)")
    state = {k: v for k, v in state.items() if k not in _NON_WEIGHT_KEYS}
    return state, fmt


def recorded_activation(path: str) -> Optional[str]:
    """The activation that open_clip's hub config beside ``path`` records, if there is one."""
    config_path = os.path.join(os.path.dirname(os.path.abspath(path)), _HUB_CONFIG_NAME)
    if not os.path.isfile(config_path):
        return None
    try:
        with open(config_path, encoding="utf-8") as f:
            model_cfg = json.load(f)["model_cfg"]
        quick = bool(model_cfg.get("quick_gelu", False))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(
            f"'{config_path}' (open_clip's hub config beside '{path}') is not readable: expected "
            f"JSON with a 'model_cfg' object ({type(exc).__name__}: {exc})"
        ) from exc
    return "quick_gelu" if quick else "gelu"


def _file_activation(path: str, fmt: str) -> str:
    """What ``activation='auto'`` uses for a weight file (see the module docstring)."""
    if fmt == "openai-torchscript":
        return "quick_gelu"
    recorded = recorded_activation(path)
    if recorded is not None:
        return recorded
    if fmt == "safetensors":
        raise ValueError(
            f"'{path}' does not say whether its model uses QuickGELU or GELU (open_clip's hub "
            f"config '{_HUB_CONFIG_NAME}' is not beside it): set clip.quick_gelu 'on' (OpenAI's "
            "weights) or 'off' (open_clip's own models)"
        )
    return "quick_gelu" if fmt == "openai-state-dict" else "gelu"


def load_clip(arch: str, weights: str, activation: str) -> nn.Module:
    """An open_clip ``CLIP`` of architecture ``arch`` at its native resolution, weights loaded.

    ``weights``: ``''`` (random), an open_clip pretrained tag of ``arch`` such as ``'openai'``
    (downloaded by open_clip: needs network), or a path to a local file (see
    :func:`read_clip_checkpoint`). ``activation``: ``'quick_gelu'`` or ``'gelu'``, or ``'auto'``
    to decide from the architecture, the tag or the file (see the module docstring).
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got '{activation}'")
    cfg = clip_arch_config(arch)
    arch_quick = cfg.pop("quick_gelu", None)  # open_clip's '*-quickgelu' configs carry it
    if activation == "auto" and arch_quick is not None:
        activation = "quick_gelu" if arch_quick else "gelu"
    if weights and not os.path.isfile(weights):
        tag_cfg = open_clip.get_pretrained_cfg(arch, weights)
        if not tag_cfg:
            raise ValueError(
                f"CLIP weights '{weights}' for '{arch}' are neither an existing file nor a "
                f"pretrained tag; tags: {open_clip.list_pretrained_tags_by_model(arch)}"
            )
        if activation == "auto":
            activation = "quick_gelu" if tag_cfg.get("quick_gelu", False) else "gelu"
        return open_clip.create_model(
            arch, pretrained=weights, force_quick_gelu=activation == "quick_gelu"
        )
    state, fmt = read_clip_checkpoint(weights) if weights else (None, None)
    if activation == "auto":
        activation = _file_activation(weights, fmt) if weights else "gelu"
    model = open_clip.CLIP(**cfg, quick_gelu=activation == "quick_gelu")
    if state is not None:
        own = model.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        shapes = [
            f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}"
            for k, v in state.items()
            if k in own and v.shape != own[k].shape
        ]
        if missing or unexpected or shapes:
            raise ValueError(
                f"'{weights}' ({fmt}) does not fit CLIP architecture '{arch}': "
                f"missing {missing[:5]}, unexpected {unexpected[:5]}, shape mismatches {shapes[:5]}"
            )
        model.load_state_dict(state)
    return model


def transformer_activation(transformer: nn.Module) -> str:
    """``'quick_gelu'`` or ``'gelu'``: the MLP activation of an open_clip ``Transformer``."""
    act = transformer.resblocks[0].mlp.gelu
    if isinstance(act, QuickGELU):
        return "quick_gelu"
    if isinstance(act, nn.GELU):
        return "gelu"
    raise TypeError(f"unknown transformer activation {type(act).__name__}")
