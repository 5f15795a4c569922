"""SynthCLIP's two CLIPs at the pretraining size, their export, and an encoder built the ReID way.

Each image tower comes with its own text tower, as OpenAI released CLIP: ``vit`` is the
``synthclip-vit`` architecture, ``rn`` the ``synthclip-rn`` one (``modeling.clip_towers.
TINY_ARCHS``). Their native size is square, like OpenAI's, but they pretrain on the corpus's tall
128x64 images:

* the ViT is built by open_clip with the tall size (an 8x4 patch grid, its own 8x4 positional
  grid); the ModifiedResNet, which open_clip builds square only, gets an attention-pool grid of
  its tall layer-4 map (4x2) in place of the square one;
* the export repeats each column of a tall grid (8x4 -> 8x8, 4x2 -> 4x4), giving the square
  architecture's shapes. ReID interpolates a square grid to its own (bilinearly, as for OpenAI's
  14x14 -> 16x8); at the pretraining size each output column is the mean of two equal columns, so
  a ReID tower at 128x64 computes exactly the pretrained function, and other sizes sample the
  same grid stretched over the image.

The exported state dict has CLIP's own key names (open_clip kept OpenAI's), so it is OpenAI's flat
format as it stands; open_clip's checkpoint format wraps it in ``{"state_dict": ...}``. SynthCLIP
trains with QuickGELU as OpenAI did; the architectures say so (``"quick_gelu": True``), so
``load_clip``'s ``activation='auto'`` (``clip.quick_gelu auto``) picks it for either file.

:class:`SynthCLIPEncoder` embeds images and texts through the real loading path (``load_clip`` and
the ReID towers), i.e. exactly what a ReID model built from the weights sees.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Union

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from ..modeling.clip_towers import ReIDResNet, ReIDViT, resize_grid_embedding, resnet_grid
from ..modeling.clip_weights import load_clip
from ..modeling.tiny_archs import TINY_ARCHS

#: tower name -> architecture (a TINY_ARCHS entry)
TOWER_ARCHS = {"vit": "synthclip-vit", "rn": "synthclip-rn"}


def check_tower(tower: str) -> str:
    """The architecture of ``tower``, or a clear error."""
    if tower not in TOWER_ARCHS:
        raise ValueError(f"SynthCLIP tower must be one of {sorted(TOWER_ARCHS)}, got '{tower}'")
    return TOWER_ARCHS[tower]


def arch_config(tower: str) -> dict:
    """A deep copy of the tower's architecture config (TINY_ARCHS entry)."""
    return copy.deepcopy(TINY_ARCHS[check_tower(tower)])


def _square_side(tower: str) -> int:
    """Side of the square grid the architecture stores (patch grid or attention-pool grid)."""
    vision = arch_config(tower)["vision_cfg"]
    return vision["image_size"] // (vision["patch_size"] or 32)


def tall_grid(tower: str, image_size: tuple[int, int]) -> tuple[int, int]:
    """The grid a tower sees at ``image_size`` during pretraining (patches or layer-4 cells)."""
    vision = arch_config(tower)["vision_cfg"]
    if vision["patch_size"]:
        return image_size[0] // vision["patch_size"], image_size[1] // vision["patch_size"]
    return resnet_grid(image_size, last_stride=2)


def _check_geometry(tower: str, image_size: tuple[int, int]) -> tuple[tuple[int, int], int]:
    grid, side = tall_grid(tower, image_size), _square_side(tower)
    if grid[0] != side or side % grid[1]:
        raise ValueError(
            f"SynthCLIP '{tower}' pretrains at {image_size}, a {grid[0]}x{grid[1]} grid, which "
            f"does not stretch to the architecture's square {side}x{side} grid by repeating "
            f"columns: use an image height of {arch_config(tower)['vision_cfg']['image_size']} "
            "and a width that divides it"
        )
    return grid, side


def build_training_clip(tower: str, image_size: tuple[int, int]) -> nn.Module:
    """A randomly initialised CLIP of the tower's architecture (QuickGELU, as the architecture
    says) that takes ``image_size`` (tall) images; draws from torch's global generator (seed it
    first)."""
    grid, side = _check_geometry(tower, image_size)
    cfg = arch_config(tower)
    quick_gelu = cfg.pop("quick_gelu")
    if cfg["vision_cfg"]["patch_size"]:
        cfg["vision_cfg"]["image_size"] = tuple(image_size)
        return open_clip.CLIP(**cfg, quick_gelu=quick_gelu)
    model = open_clip.CLIP(**cfg, quick_gelu=quick_gelu)
    pool = model.visual.attnpool
    pool.positional_embedding = nn.Parameter(
        resize_grid_embedding(pool.positional_embedding.data, (side, side), grid, "bilinear")
    )
    return model


def _grid_key(tower: str) -> str:
    return (
        "visual.positional_embedding"
        if arch_config(tower)["vision_cfg"]["patch_size"]
        else "visual.attnpool.positional_embedding"
    )


def stretch_columns(embedding: torch.Tensor, grid: tuple[int, int], side: int) -> torch.Tensor:
    """A ``(1 + h*w, D)`` positional embedding as ``(1 + side*side, D)``: each of the ``w``
    columns repeated ``side // w`` times (``h == side``); the first row (class token) kept."""
    height, width = grid
    if embedding.shape[0] != 1 + height * width or height != side or side % width:
        raise ValueError(
            f"cannot stretch a {tuple(embedding.shape)} embedding of a {height}x{width} grid to "
            f"{side}x{side}"
        )
    cells = embedding[1:].reshape(height, width, -1).repeat_interleave(side // width, dim=1)
    return torch.cat([embedding[:1], cells.reshape(side * side, -1)], dim=0)


def export_state_dict(model: nn.Module, tower: str, image_size: tuple[int, int]) -> dict:
    """The trained model's weights in the square architecture's shapes (OpenAI's key names),
    detached copies on the CPU."""
    grid, side = _check_geometry(tower, image_size)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    key = _grid_key(tower)
    state[key] = stretch_columns(state[key], grid, side)
    state.pop("attn_mask", None)  # a buffer open_clip rebuilds, not a weight
    return state


ImageBatch = Union[np.ndarray, torch.Tensor]


class SynthCLIPEncoder(nn.Module):
    """Image and text embeddings of a CLIP weight file, built the way ReID models build them.

    ``weights``: a SynthCLIP file (either format; ``activation`` as for ``load_clip``). The image
    tower is ``ReIDViT`` (stride = patch) or ``ReIDResNet`` (last stride 2, attention pool kept)
    at ``image_size``: the features CSGN's prompt stage learns against (``CSGN.
    prompt_image_features``). Images are uint8 (N, H, W, 3) arrays or tensors, normalised here
    with ``norm_mean`` / ``norm_std`` (as the ReID data config normalises them).
    """

    def __init__(
        self,
        tower: str,
        weights: str,
        image_size: tuple[int, int] = (128, 64),
        norm_mean: Sequence[float] = (0.5, 0.5, 0.5),
        norm_std: Sequence[float] = (0.5, 0.5, 0.5),
        activation: str = "auto",
    ) -> None:
        super().__init__()
        arch = check_tower(tower)
        clip = load_clip(arch, weights, activation)
        vision = TINY_ARCHS[arch]["vision_cfg"]
        # the geometry the tower was pretrained in: patch stride, layer-4 stride 2, bilinear grids
        # (the exported square grids are the training grids stretched), no camera embedding
        if vision["patch_size"]:
            self.image_tower: nn.Module = ReIDViT(
                clip.visual, image_size, vision["patch_size"], "bilinear", 0, 1.0
            )
        else:
            self.image_tower = ReIDResNet(clip.visual, image_size, 2, "bilinear")
        self.clip = clip  # the text tower (and the image tower's original modules)
        self.image_size = tuple(image_size)
        self.register_buffer("mean", torch.tensor(norm_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(norm_std).view(1, 3, 1, 1), persistent=False)
        self.context_length = int(clip.positional_embedding.shape[0])
        self.eval()

    def preprocess(self, images: ImageBatch) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> normalised float (N, 3, H, W)."""
        x = images if torch.is_tensor(images) else torch.from_numpy(np.array(images))
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"images must be uint8 (N, H, W, 3), got {x.dtype} {tuple(x.shape)}")
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        return (x - self.mean) / self.std

    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        """Joint-space features (unnormalised) of a preprocessed batch."""
        if isinstance(self.image_tower, ReIDViT):
            return self.image_tower.project(self.image_tower(x)[1])
        return self.image_tower.attnpool(self.image_tower(x)[1])

    @torch.no_grad()
    def encode_images(self, images: ImageBatch, batch_size: int = 256) -> torch.Tensor:
        """L2-normalised image embeddings (N, E)."""
        out = [
            self.image_features(self.preprocess(images[i : i + batch_size]))
            for i in range(0, len(images), batch_size)
        ]
        return F.normalize(torch.cat(out), dim=-1)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 512) -> torch.Tensor:
        """L2-normalised text embeddings (N, E); texts longer than the context are refused."""
        tokens = tokenize(list(texts), self.context_length)
        out = [
            self.clip.encode_text(tokens[i : i + batch_size])
            for i in range(0, len(tokens), batch_size)
        ]
        return F.normalize(torch.cat(out), dim=-1)


def tokenize(texts: Sequence[str], context_length: int) -> torch.Tensor:
    """open_clip's tokens of ``texts`` (N, context_length); an error naming the first text that
    would be truncated."""
    tokens = open_clip.tokenize(list(texts), context_length=context_length + 1)
    # with one spare position, a text that fits leaves it empty
    too_long = torch.nonzero(tokens[:, -1]).flatten()
    if len(too_long):
        first = int(too_long[0])
        raise ValueError(
            f"{len(too_long)} text(s) do not fit the text context of {context_length} tokens, "
            f"e.g. '{texts[first]}'"
        )
    return tokens[:, :-1].contiguous()
