"""VSS, Visual Semantic Steering: the image side of CSGN (and of the CLIP-ReID baselines).

A ViT tower (global: its class token) and a ResNet tower (local: its layer-4 map, 16x8 at
256x128) run in parallel; a fusion module maps both into the joint image-text space (the
``proj`` feature, the one HSF compares with the prompt features). Each part has a BN neck and
an ID classifier, as CLIP-ReID's two bottlenecks and classifiers.

Parts (names used by config and outputs):

* ``global``: ViT class token after ``ln_post`` (768-d for ViT-B/16);
* ``local``: ResNet layer-4 map, average-pooled (2048-d for RN50);
* ``proj``: the joint-space feature (512-d with ViT-B/16's text tower): the fused feature in CSGN,
  the projected class token with a ViT alone, the attention pool with a ResNet alone.

Fusion modes (``csgn.fusion``), all initialised so that at the start ``proj`` is the ViT's own
projected class token (the feature the prompts were learned against in stage 1) plus the ResNet's
contribution through weights drawn N(0, ``csgn.fusion_init_std``): with std 0 ``proj`` starts
exactly at ``g @ P`` but no loss on ``proj`` reaches the ResNet in the first step; a small std
lets HSF steer the ResNet from the start (projects/CSGN/README.md, "CSGN's own choices"):

* ``concat``: ``Linear([g @ P ; l])`` with the weight initialised to ``[I, N(0, std)]``;
* ``sum``: ``g @ P + a * Linear(l)`` with ``a`` = 1 and the linear's weight N(0, std);
* ``cross_attn``: ``(g + MHA(g, LN(tokens), LN(tokens))) @ P`` with the ViT class token attending
  over the ResNet's spatial tokens; the attention's output projection starts N(0, std).

The inference feature concatenates ``csgn.test_parts`` (before or after their BN necks); with
``csgn.test_part_norm`` each part is L2-normalised first, so that every part weighs the same in
the distance whatever its size (2048-d ResNet, 768-d ViT, 512-d joint space) and scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .clip_towers import ReIDResNet, ReIDViT

__all__ = ["FUSION_MODES", "PARTS", "VSS", "build_fusion"]

FUSION_MODES = ("concat", "sum", "cross_attn")
PARTS = ("global", "local", "proj")
Projector = Callable[[torch.Tensor], torch.Tensor]


class ConcatFusion(nn.Module):
    def __init__(self, embed_dim: int, local_dim: int, init_std: float) -> None:
        super().__init__()
        self.linear = nn.Linear(embed_dim + local_dim, embed_dim)
        with torch.no_grad():
            self.linear.weight.zero_()
            self.linear.weight[:, :embed_dim].copy_(torch.eye(embed_dim))
            self.linear.weight[:, embed_dim:].normal_(std=init_std)
            self.linear.bias.zero_()

    def forward(
        self, g: torch.Tensor, local: torch.Tensor, local_map: torch.Tensor, project: Projector
    ) -> torch.Tensor:
        return self.linear(torch.cat([project(g), local], dim=1))


class SumFusion(nn.Module):
    def __init__(self, embed_dim: int, local_dim: int, init_std: float) -> None:
        super().__init__()
        self.local_proj = nn.Linear(local_dim, embed_dim)
        self.gate = nn.Parameter(torch.ones(()))
        with torch.no_grad():
            self.local_proj.weight.normal_(std=init_std)
            self.local_proj.bias.zero_()

    def forward(
        self, g: torch.Tensor, local: torch.Tensor, local_map: torch.Tensor, project: Projector
    ) -> torch.Tensor:
        return project(g) + self.gate * self.local_proj(local)


class CrossAttentionFusion(nn.Module):
    def __init__(self, global_dim: int, local_dim: int, heads: int, init_std: float) -> None:
        super().__init__()
        if global_dim % heads:
            raise ValueError(f"csgn.fusion_heads={heads} must divide the ViT width {global_dim}")
        self.norm_kv = nn.LayerNorm(local_dim)
        self.attn = nn.MultiheadAttention(
            global_dim, heads, kdim=local_dim, vdim=local_dim, batch_first=True
        )
        with torch.no_grad():
            self.attn.out_proj.weight.normal_(std=init_std)
            self.attn.out_proj.bias.zero_()

    def forward(
        self, g: torch.Tensor, local: torch.Tensor, local_map: torch.Tensor, project: Projector
    ) -> torch.Tensor:
        tokens = self.norm_kv(local_map.flatten(2).transpose(1, 2))  # (B, h*w, local_dim)
        attended, _ = self.attn(g.unsqueeze(1), tokens, tokens, need_weights=False)
        return project(g + attended[:, 0])


def build_fusion(
    mode: str, global_dim: int, local_dim: int, embed_dim: int, heads: int, init_std: float
) -> nn.Module:
    """The fusion module of ``mode``; ``init_std``: std of the initial weights that bring the
    ResNet into ``proj`` (0: ``proj`` starts exactly at CLIP's projected class token)."""
    if init_std < 0:
        raise ValueError(f"csgn.fusion_init_std must be >= 0, got {init_std}")
    if mode == "concat":
        return ConcatFusion(embed_dim, local_dim, init_std)
    if mode == "sum":
        return SumFusion(embed_dim, local_dim, init_std)
    if mode == "cross_attn":
        return CrossAttentionFusion(global_dim, local_dim, heads, init_std)
    raise ValueError(f"csgn.fusion must be one of {FUSION_MODES}, got '{mode}'")


def _bn_neck(dim: int) -> nn.BatchNorm1d:
    neck = nn.BatchNorm1d(dim)
    nn.init.ones_(neck.weight)
    nn.init.zeros_(neck.bias)
    return neck


def _classifier(dim: int, num_classes: int) -> nn.Linear:
    classifier = nn.Linear(dim, num_classes, bias=False)
    nn.init.normal_(classifier.weight, std=0.001)  # CLIP-ReID's classifier init
    return classifier


class VSS(nn.Module):
    """Image towers, fusion, BN necks and ID classifiers.

    ``forward(imgs, camids)`` in train mode returns ``{'logits', 'features', 'image_feature'}``
    (see :class:`~csgn_plugin.modeling.csgn.CSGN`); in eval mode the inference feature.
    """

    def __init__(
        self,
        vit: Optional[ReIDViT],
        resnet: Optional[ReIDResNet],
        num_classes: int,
        fusion: str,
        fusion_heads: int,
        fusion_init_std: float,
        test_neck: str,
        test_parts: Sequence[str],
        test_flip: bool,
        test_part_norm: bool,
    ) -> None:
        super().__init__()
        if vit is None and resnet is None:
            raise ValueError("VSS needs at least one image tower")
        if vit is None and resnet.attnpool is None:
            raise ValueError("a ResNet-only model needs the attention pool for its proj feature")
        self.vit = vit
        self.resnet = resnet
        dims: dict[str, int] = {}
        if vit is not None:
            dims["global"] = vit.width
        if resnet is not None:
            dims["local"] = resnet.out_channels
        dims["proj"] = vit.output_dim if vit is not None else resnet.output_dim
        self.fusion = (
            build_fusion(
                fusion,
                vit.width,
                resnet.out_channels,
                vit.output_dim,
                fusion_heads,
                fusion_init_std,
            )
            if vit is not None and resnet is not None
            else None
        )
        self.fusion_mode = fusion if self.fusion is not None else None
        self.part_dims = dims
        self.necks = nn.ModuleDict({p: _bn_neck(d) for p, d in dims.items()})
        self.classifiers = nn.ModuleDict({p: _classifier(d, num_classes) for p, d in dims.items()})
        if test_neck not in ("before", "after"):
            raise ValueError(f"csgn.test_neck must be 'before' or 'after', got '{test_neck}'")
        self.test_neck = test_neck
        self.test_parts = self._check_parts(test_parts)
        self.test_flip = bool(test_flip)
        self.test_part_norm = bool(test_part_norm)
        self.embed_dim = dims["proj"]
        self.feature_dim = sum(dims[p] for p in self.test_parts)
        self.image_size = vit.image_size if vit is not None else resnet.image_size

    def _check_parts(self, parts: Sequence[str]) -> tuple[str, ...]:
        parts = tuple(parts)
        if parts == ("auto",):
            return tuple(self.part_dims)
        unknown = [p for p in parts if p not in self.part_dims]
        if not parts or unknown or len(set(parts)) != len(parts):
            raise ValueError(
                f"csgn.test_parts must be ['auto'] or distinct parts of {list(self.part_dims)} "
                f"(this model's parts), got {list(parts)}"
            )
        return parts

    def check_input(self, imgs: torch.Tensor) -> None:
        if imgs.dim() != 4 or tuple(imgs.shape[-2:]) != tuple(self.image_size):
            raise ValueError(
                f"the model was built for {tuple(self.image_size)} inputs (data.height, "
                f"data.width); got a batch of shape {tuple(imgs.shape)}"
            )

    def parts(self, imgs: torch.Tensor, camids: Optional[torch.Tensor] = None) -> dict:
        """Every part, plus ``'triplet'``: the features the triplet loss applies to."""
        out: dict = {}
        triplet: list[torch.Tensor] = []
        if self.vit is not None:
            penultimate, g = self.vit(imgs, camids)
            out["global"] = g
            triplet += [penultimate, g]
        if self.resnet is not None:
            layer3, layer4 = self.resnet(imgs)
            out["local"] = layer4.mean(dim=(2, 3))
            if self.vit is None:
                triplet.append(layer3.mean(dim=(2, 3)))  # CLIP-ReID RN50's layer-3 feature
            triplet.append(out["local"])
        if self.fusion is not None:
            out["proj"] = self.fusion(out["global"], out["local"], layer4, self.vit.project)
        elif self.vit is not None:
            out["proj"] = self.vit.project(out["global"])
        else:
            out["proj"] = self.resnet.attnpool(layer4)
        triplet.append(out["proj"])
        out["triplet"] = triplet
        return out

    def _inference_feature(
        self, imgs: torch.Tensor, camids: Optional[torch.Tensor]
    ) -> torch.Tensor:
        parts = self.parts(imgs, camids)
        if self.test_neck == "after":
            feats = [self.necks[p](parts[p]) for p in self.test_parts]
        else:
            feats = [parts[p] for p in self.test_parts]
        if self.test_part_norm:
            feats = [F.normalize(f.float(), dim=1).to(f.dtype) for f in feats]
        return torch.cat(feats, dim=1)

    def forward(self, imgs: torch.Tensor, camids: Optional[torch.Tensor] = None):  # noqa: ANN201
        self.check_input(imgs)
        if not self.training:
            feat = self._inference_feature(imgs, camids)
            if self.test_flip:
                feat = 0.5 * (feat + self._inference_feature(imgs.flip(-1), camids))
            return feat
        parts = self.parts(imgs, camids)
        logits = [self.classifiers[p](self.necks[p](parts[p])) for p in self.part_dims]
        return {"logits": logits, "features": parts["triplet"], "image_feature": parts["proj"]}
