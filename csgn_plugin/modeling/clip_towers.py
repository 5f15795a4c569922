"""CLIP's image towers reshaped for person re-identification, and the text-tower parts.

* :class:`ReIDViT` takes the ViT of an open_clip ``CLIP`` to any ReID input size: patch stride
  16 or an overlapping stride (12 in CLIP-ReID), positional grid interpolated from the source
  grid (``visual.grid_size``, square or not), optional camera embedding (SIE, added to the class
  token as in CLIP-ReID).
* :class:`ReIDResNet` takes the ModifiedResNet with layer-4 stride 1 (a 16x8 map at 256x128) and,
  if kept, its attention pool with the positional grid interpolated. It runs open_clip's own
  ``ModifiedResNet.stem`` and residual layers.
* :func:`clip_text_parts` hands the text tower's pieces to the prompt learner and text encoder.

Building a ``CLIP`` and reading weight files is :mod:`~csgn_plugin.modeling.clip_weights`.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import VisionTransformer
from torch import nn

__all__ = [
    "ReIDResNet",
    "ReIDViT",
    "clip_text_parts",
    "resize_grid_embedding",
    "resnet_grid",
    "vit_grid",
]


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
        stride: int,
        pos_interp: str,
        num_cameras: int,
        sie_scale: float,
    ) -> None:
        super().__init__()
        if not isinstance(visual, VisionTransformer):
            raise TypeError(f"ReIDViT needs an open_clip VisionTransformer, got {type(visual)}")
        if visual.attn_pool is not None or visual.pool_type != "tok" or visual.proj is None:
            raise ValueError("ReIDViT supports CLIP ViTs with class-token pooling and a projection")
        if visual.final_ln_after_pool or not isinstance(visual.patch_dropout, nn.Identity):
            raise ValueError("ReIDViT does not support final_ln_after_pool or patch dropout")
        patch_h, patch = visual.conv1.kernel_size
        if patch_h != patch:
            raise ValueError(f"ReIDViT needs square patches, got {visual.conv1.kernel_size}")
        if stride < 1 or stride > patch:
            raise ValueError(f"ViT stride must be in 1..{patch} (patch size), got {stride}")
        self.image_size = tuple(image_size)
        self.grid = vit_grid(self.image_size, patch, stride)
        self.conv1 = visual.conv1
        self.conv1.stride = (stride, stride)
        self.class_embedding = visual.class_embedding
        # the grid the source was trained at: square for CLIP's 224x224, not for a CLIP built
        # with a (height, width) image size
        old_grid = tuple(visual.grid_size)
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

    ``forward(x)`` returns ``(layer3_map, layer4_map)``, computed by open_clip's own
    ``ModifiedResNet.stem`` and residual layers. With ``keep_attnpool``, :meth:`attnpool`
    (CLIP's attention pool, positional grid interpolated to the layer-4 map) maps a layer-4 map
    into the model's joint space; without it the module holds no attention-pool parameters.

    The ModifiedResNet's sub-modules are registered on this module directly, not under a child
    of their own, so that state-dict keys stay CLIP's (``conv1.weight``, ``layer1.0.bn1.weight``,
    ``attnpool.c_proj.weight``: ``vss.resnet.conv1.weight`` in CSGN); ``ModifiedResNet.stem`` is
    then called with this module, which has every attribute the stem reads.
    """

    def __init__(
        self,
        visual: ModifiedResNet,
        image_size: tuple[int, int],
        last_stride: int,
        pos_interp: str,
        keep_attnpool: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(visual, ModifiedResNet):
            raise TypeError(f"ReIDResNet needs an open_clip ModifiedResNet, got {type(visual)}")
        if last_stride not in (1, 2):
            raise ValueError(f"ResNet last stride must be 1 or 2, got {last_stride}")
        self.image_size = tuple(image_size)
        self.grid = resnet_grid(self.image_size, last_stride)
        for name, child in visual.named_children():
            if name != "attnpool":
                self.add_module(name, child)
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
        x = ModifiedResNet.stem(self, x)
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
