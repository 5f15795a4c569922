"""CLIP image and text towers from open_clip, reshaped for person re-identification.

* :func:`load_clip` builds an open_clip ``CLIP`` at its native resolution and fills it with weights
  from an open_clip pretrained tag (``'openai'``: downloads), a local file (OpenAI TorchScript
  archive, OpenAI-style flat state dict, or open_clip training checkpoint) or nothing (random).
* :class:`ReIDViT` takes the ViT of such a model to any ReID input size: patch stride 16 or an
  overlapping stride (12 in CLIP-ReID), positional grid interpolated, optional camera embedding
  (SIE, added to the class token as in CLIP-ReID).
* :class:`ReIDResNet` takes the ModifiedResNet with layer-4 stride 1 (a 16x8 map at 256x128) and,
  if kept, its attention pool with the positional grid interpolated.
* :data:`TINY_ARCHS` are small architectures for tests and CPU demos; :func:`load_clip` accepts
  their names like open_clip's own.
"""

from __future__ import annotations

import math
import os
import warnings
import zipfile
from typing import Any, Optional

import open_clip
import torch
import torch.nn.functional as F
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import VisionTransformer
from torch import nn

__all__ = [
    "TINY_ARCHS",
    "ReIDResNet",
    "ReIDViT",
    "clip_text_parts",
    "load_clip",
    "read_clip_checkpoint",
    "resize_grid_embedding",
    "resnet_grid",
    "vit_grid",
]

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

# Entries of OpenAI's TorchScript state dicts that are metadata or non-persistent buffers.
_NON_WEIGHT_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask")


def _arch_config(arch: str) -> dict:
    if arch in TINY_ARCHS:
        cfg = {key: (dict(v) if isinstance(v, dict) else v) for key, v in TINY_ARCHS[arch].items()}
        return cfg
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


def read_clip_checkpoint(path: str) -> tuple[dict[str, torch.Tensor], str]:
    """Read a CLIP weight file; returns ``(state_dict, format)``.

    ``format`` is ``'openai-torchscript'`` (OpenAI's released ``.pt`` archives),
    ``'openai-state-dict'`` (a flat dict of CLIP's parameter names, as OpenAI's ``clip`` package
    and open_clip's hub files store them) or ``'open_clip'`` (open_clip's training checkpoint:
    a dict with ``'state_dict'``, keys possibly prefixed ``module.``).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CLIP weight file not found: '{path}'")
    if _is_torchscript(path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.load is deprecated in favour of export
            try:
                module = torch.jit.load(path, map_location="cpu")
            except RuntimeError as exc:
                raise RuntimeError(f"'{path}': damaged TorchScript archive: {exc}") from exc
        state, fmt = dict(module.state_dict()), "openai-torchscript"
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise RuntimeError(
                f"'{path}' is not a readable CLIP weight file (expected an OpenAI TorchScript "
                f"archive, a state dict or an open_clip checkpoint): {exc}"
            ) from exc
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            state, fmt = obj["state_dict"], "open_clip"
        elif isinstance(obj, dict) and obj and all(torch.is_tensor(v) for v in obj.values()):
            state, fmt = obj, "openai-state-dict"
        else:
            raise ValueError(
                f"'{path}' holds a {type(obj).__name__} that is neither a state dict nor an "
                "open_clip checkpoint (a dict with 'state_dict')"
            )
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    state = {k: v for k, v in state.items() if k not in _NON_WEIGHT_KEYS}
    return state, fmt


def _resolve_quick_gelu(quick_gelu: str, weights_format: Optional[str]) -> bool:
    if quick_gelu in ("on", "off"):
        return quick_gelu == "on"
    if quick_gelu != "auto":
        raise ValueError(f"clip.quick_gelu must be 'auto', 'on' or 'off', got '{quick_gelu}'")
    # OpenAI trained with QuickGELU; open_clip's own models use nn.GELU.
    return weights_format in ("openai-torchscript", "openai-state-dict")


def load_clip(arch: str, weights: str = "", quick_gelu: str = "auto") -> nn.Module:
    """An open_clip ``CLIP`` of architecture ``arch`` at its native resolution, weights loaded.

    ``weights``: ``''`` (random), an open_clip pretrained tag of ``arch`` such as ``'openai'``
    (downloaded by open_clip: needs network), or a path to a local file (see
    :func:`read_clip_checkpoint`). ``quick_gelu``: ``'auto'`` uses QuickGELU for OpenAI weights
    (the ``openai`` tag, TorchScript archives and flat state dicts) and nn.GELU otherwise;
    ``'on'``/``'off'`` force it (needed for open_clip hub files of GELU models, which are flat).
    """
    cfg = _arch_config(arch)
    if weights and not os.path.isfile(weights):
        tag_cfg = open_clip.get_pretrained_cfg(arch, weights)
        if not tag_cfg:
            raise ValueError(
                f"CLIP weights '{weights}' for '{arch}' are neither an existing file nor a "
                f"pretrained tag; tags: {open_clip.list_pretrained_tags_by_model(arch)}"
            )
        use_quick = (
            bool(tag_cfg.get("quick_gelu", False))
            if quick_gelu == "auto"
            else _resolve_quick_gelu(quick_gelu, None)
        )
        return open_clip.create_model(arch, pretrained=weights, force_quick_gelu=use_quick)
    state, fmt = read_clip_checkpoint(weights) if weights else (None, None)
    model = open_clip.CLIP(**cfg, quick_gelu=_resolve_quick_gelu(quick_gelu, fmt))
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


def resize_grid_embedding(
    embedding: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int], mode: str
) -> torch.Tensor:
    """Interpolate a ``(1 + h*w, D)`` positional embedding (first row: class/pooled token)."""
    old_h, old_w = old_grid
    if embedding.shape[0] != 1 + old_h * old_w:
        raise ValueError(
            f"positional embedding has {embedding.shape[0]} rows, expected 1 + {old_h}x{old_w}"
        )
    if tuple(new_grid) == tuple(old_grid):
        return embedding.clone()
    token, grid = embedding[:1], embedding[1:]
    grid = grid.reshape(1, old_h, old_w, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=tuple(new_grid), mode=mode, align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], -1).to(embedding.dtype)
    return torch.cat([token, grid], dim=0)


def vit_grid(image_size: tuple[int, int], patch: int, stride: int) -> tuple[int, int]:
    """Token grid of a patch convolution without padding."""
    height, width = image_size
    if height < patch or width < patch:
        raise ValueError(f"image size {image_size} is smaller than the patch size {patch}")
    return (height - patch) // stride + 1, (width - patch) // stride + 1


def resnet_grid(image_size: tuple[int, int], last_stride: int) -> tuple[int, int]:
    """Layer-4 map size of CLIP's ModifiedResNet (stem /4, layers 2-3 /2 each, layer 4 /s)."""

    def reduce(size: int) -> int:
        size = (size - 1) // 2 + 1  # conv1: kernel 3, stride 2, padding 1
        size //= 2  # stem average pool
        size //= 2  # layer 2
        size //= 2  # layer 3
        return size // last_stride

    grid = (reduce(image_size[0]), reduce(image_size[1]))
    if min(grid) < 1:
        raise ValueError(f"image size {image_size} is too small for the ResNet tower")
    return grid


def _square_grid(rows: int) -> tuple[int, int]:
    side = math.isqrt(rows - 1)
    if side * side != rows - 1:
        raise ValueError(f"a positional embedding of {rows} rows is not 1 + a square grid")
    return side, side


class ReIDViT(nn.Module):
    """CLIP's vision transformer at a ReID input size.

    ``forward(x, camids)`` returns ``(cls_penultimate, cls_final)``: the class token after the
    second-to-last block (no norm; CLIP-ReID's layer-11 feature) and after the last block and
    ``ln_post`` (CLIP-ReID's layer-12 feature). :meth:`project` maps the latter into the joint
    image-text space with CLIP's ``proj``.
    """

    def __init__(
        self,
        visual: VisionTransformer,
        image_size: tuple[int, int],
        stride: int = 16,
        pos_interp: str = "bilinear",
        num_cameras: int = 0,
        sie_scale: float = 3.0,
    ) -> None:
        super().__init__()
        if not isinstance(visual, VisionTransformer):
            raise TypeError(f"ReIDViT needs an open_clip VisionTransformer, got {type(visual)}")
        if visual.attn_pool is not None or visual.pool_type != "tok" or visual.proj is None:
            raise ValueError("ReIDViT supports CLIP ViTs with class-token pooling and a projection")
        if visual.final_ln_after_pool or not isinstance(visual.patch_dropout, nn.Identity):
            raise ValueError("ReIDViT does not support final_ln_after_pool or patch dropout")
        patch = visual.conv1.kernel_size[0]
        if stride < 1 or stride > patch:
            raise ValueError(f"ViT stride must be in 1..{patch} (patch size), got {stride}")
        self.image_size = tuple(image_size)
        self.grid = vit_grid(self.image_size, patch, stride)
        self.conv1 = visual.conv1
        self.conv1.stride = (stride, stride)
        self.class_embedding = visual.class_embedding
        old_grid = _square_grid(visual.positional_embedding.shape[0])
        self.positional_embedding = nn.Parameter(
            resize_grid_embedding(visual.positional_embedding.data, old_grid, self.grid, pos_interp)
        )
        self.ln_pre = visual.ln_pre
        self.transformer = visual.transformer
        self.ln_post = visual.ln_post
        self.proj = visual.proj
        self.width = visual.conv1.out_channels
        self.output_dim = visual.proj.shape[1]
        self.sie_scale = float(sie_scale)
        if num_cameras > 0:
            self.camera_embedding = nn.Parameter(torch.zeros(num_cameras, self.width))
            nn.init.trunc_normal_(self.camera_embedding, std=0.02)
        else:
            self.camera_embedding = None

    def forward(
        self, x: torch.Tensor, camids: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv1(x)
        x = x.flatten(2).transpose(1, 2)  # (B, N, width)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        if camids is not None and self.camera_embedding is not None:
            cls = cls + self.sie_scale * self.camera_embedding[camids].unsqueeze(1).to(x.dtype)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x)
        blocks = self.transformer.resblocks
        for block in blocks[:-1]:
            x = block(x)
        penultimate = x[:, 0]
        x = blocks[-1](x)
        return penultimate, self.ln_post(x[:, 0])

    def project(self, cls_final: torch.Tensor) -> torch.Tensor:
        return cls_final @ self.proj


class ReIDResNet(nn.Module):
    """CLIP's ModifiedResNet at a ReID input size.

    ``forward(x)`` returns ``(layer3_map, layer4_map)``. With ``keep_attnpool``, :meth:`attnpool`
    (CLIP's attention pool, positional grid interpolated to the layer-4 map) maps a layer-4 map
    into the model's joint space; without it the module holds no attention-pool parameters.
    """

    def __init__(
        self,
        visual: ModifiedResNet,
        image_size: tuple[int, int],
        last_stride: int = 1,
        pos_interp: str = "bilinear",
        keep_attnpool: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(visual, ModifiedResNet):
            raise TypeError(f"ReIDResNet needs an open_clip ModifiedResNet, got {type(visual)}")
        if last_stride not in (1, 2):
            raise ValueError(f"ResNet last stride must be 1 or 2, got {last_stride}")
        self.image_size = tuple(image_size)
        self.grid = resnet_grid(self.image_size, last_stride)
        for name in (
            "conv1",
            "bn1",
            "act1",
            "conv2",
            "bn2",
            "act2",
            "conv3",
            "bn3",
            "act3",
            "avgpool",
            "layer1",
            "layer2",
            "layer3",
            "layer4",
        ):
            setattr(self, name, getattr(visual, name))
        if last_stride == 1:
            # CLIP's Bottleneck downsamples with average pools (after conv2 and before the
            # shortcut conv); removing them keeps every weight and halves nothing.
            first = self.layer4[0]
            first.avgpool = nn.Identity()
            first.downsample._modules["-1"] = nn.Identity()
            first.stride = 1
        self.out_channels = self.layer4[-1].conv3.out_channels
        self.layer3_channels = self.layer3[-1].conv3.out_channels
        if keep_attnpool:
            pool = visual.attnpool
            old_grid = _square_grid(pool.positional_embedding.shape[0])
            pool.positional_embedding = nn.Parameter(
                resize_grid_embedding(
                    pool.positional_embedding.data, old_grid, self.grid, pos_interp
                )
            )
            self.attnpool = pool
            self.output_dim = pool.c_proj.out_features
        else:
            self.attnpool = None
            self.output_dim = None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.act3(self.bn3(self.conv3(x)))
        x = self.avgpool(x)
        x = self.layer2(self.layer1(x))
        layer3 = self.layer3(x)
        return layer3, self.layer4(layer3)


def clip_text_parts(model: nn.Module) -> dict[str, Any]:
    """The text-tower pieces of an open_clip ``CLIP`` (checked to be CLIP's argmax pooling)."""
    if not hasattr(model, "token_embedding") or getattr(model, "text_pool_type", "") != "argmax":
        raise ValueError("the text tower must be a CLIP text transformer with argmax (EOT) pooling")
    return {
        "token_embedding": model.token_embedding,
        "positional_embedding": model.positional_embedding,
        "transformer": model.transformer,
        "ln_final": model.ln_final,
        "text_projection": model.text_projection,
        "attn_mask": model.attn_mask,
    }
