"""A trained model from its checkpoint alone, and features from it.

Every checkpoint the plugin writes carries a ``model_spec`` (:mod:`csgn_plugin.modeling.spec`):
the model's name, classes, architecture (towers, stride, SIE, activation, fusion, inference
parts...) and the input it was trained with (size, normalisation, resize interpolation).
:func:`load_model` rebuilds exactly that model and fills it strictly; CLIP-ReID's released files
(no spec) are recognised and converted. :func:`load_extractor` wraps the model in an
:class:`Extractor` with the checkpoint's own preprocessing, called like torchreid's
``FeatureExtractor`` (whose defaults - 256x128, ImageNet mean/std, a model built from its name -
fit neither tiny models nor CLIP's 0.5/0.5 normalisation)::

    import csgn_plugin
    extractor = csgn_plugin.load_extractor("log/csgn_synthcc/checkpoints/best.pth", "cpu")
    features = extractor(["a.jpg", "b.jpg"])  # (2, D) on the device
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np
import torch
from PIL import Image
from torch import nn

from .compat import load_checkpoint
from .data.image_io import read_image, to_rgb
from .data.transforms import build_test_transform
from .errors import CheckpointNotFoundError
from .evaluation.evaluator import call_model
from .modeling.clipreid_format import clipreid_model_spec, is_clipreid_state_dict
from .modeling.spec import ModelSpec, build_model_from_spec
from .modeling.weights import extract_state_dict, load_weights_file

__all__ = [
    "CheckpointFacts",
    "Extractor",
    "load_extractor",
    "load_model",
    "read_checkpoint_facts",
    "read_model_spec",
]

ImageInput = Union[str, np.ndarray, Image.Image]


def _spec_of(checkpoint: Any, path: str) -> Optional[ModelSpec]:
    if isinstance(checkpoint, dict) and "model_spec" in checkpoint:
        return ModelSpec.from_dict(checkpoint["model_spec"], f"'{path}' model_spec")
    weights = extract_state_dict(checkpoint, path)
    if is_clipreid_state_dict(weights):
        return clipreid_model_spec(weights, where=f"'{path}'")
    return None


def read_model_spec(path: str) -> Optional[ModelSpec]:
    """The spec a checkpoint records, the one a CLIP-ReID file implies, or None (a file of plain
    weights: torchreid's, or a bare state dict)."""
    return _spec_of(load_checkpoint(path), path)


@dataclass(frozen=True)
class CheckpointFacts:
    """What evaluating a checkpoint needs to know of it, and what its results record."""

    path: str  # absolute
    sha256: str
    spec: Optional[ModelSpec]  # None: plain weights (torchreid's, a bare state dict)
    config: str  # the YAML dump of the config it was trained with; '' when not recorded
    epoch: Optional[int]  # the epochs it had finished, when recorded

    def record(self) -> dict:
        """The checkpoint as ``results.json`` records it."""
        return {
            "path": self.path,
            "sha256": self.sha256,
            "epoch": self.epoch,
            "model": self.spec.name if self.spec is not None else None,
        }


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_checkpoint_facts(path: str) -> CheckpointFacts:
    """The checkpoint at ``path`` read once: its spec, training config and epoch, and its hash
    (:class:`~csgn_plugin.errors.CheckpointReadError` when it cannot be read)."""
    checkpoint = load_checkpoint(path, mmap=True)  # the weights are read by the model's load
    recorded = checkpoint if isinstance(checkpoint, dict) else {}
    epoch = recorded.get("epoch")
    return CheckpointFacts(
        path=os.path.abspath(path),
        sha256=_sha256(path),
        spec=_spec_of(checkpoint, path),
        config=recorded.get("config") if isinstance(recorded.get("config"), str) else "",
        epoch=int(epoch) if isinstance(epoch, int) else None,
    )


def load_model(
    path: str, device: Union[str, torch.device] = "cpu", policy: str = "strict"
) -> tuple[nn.Module, ModelSpec]:
    """The model a checkpoint holds, rebuilt from its spec (random towers, nothing downloaded),
    every tensor loaded (``policy`` 'strict'), in eval mode on ``device``."""
    spec = read_model_spec(path)
    if spec is None:
        raise ValueError(
            f"'{path}' records no model_spec (a torchreid checkpoint or a bare state dict): "
            "build the model yourself and load it with csgn_plugin.modeling.weights."
            "load_weights_file, or use torchreid's FeatureExtractor with its model_name"
        )
    model = build_model_from_spec(spec)
    load_weights_file(model, path, policy)
    return model.to(device).eval(), spec


def test_transform(input_spec: dict[str, Any]) -> Any:
    """Evaluation's transform for a spec's ``input``."""
    return build_test_transform(
        input_spec["height"],
        input_spec["width"],
        input_spec["norm_mean"],
        input_spec["norm_std"],
        input_spec["interpolation"],
    )


class Extractor:
    """Features of images under a model, with the preprocessing its checkpoint records.

    Called like torchreid's ``FeatureExtractor``: a path, a list of paths, an image array
    (``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA ``uint8``, ``(H, W)`` 8- or 16-bit grayscale), a PIL
    image, a list of those, or an already preprocessed ``(B, 3, H, W)`` tensor. Files, arrays and
    PIL images become 8-bit RGB the same way (the data package's ``to_rgb``). ``camids`` (one
    per image) feed SIE camera embeddings when the model has them; without them no camera term is
    added. Returns float32 features ``(B, D)`` on the device, in eval mode, without gradients.
    """

    def __init__(
        self,
        model: nn.Module,
        spec: ModelSpec,
        device: Union[str, torch.device] = "cpu",
        batch_size: int = 64,
    ) -> None:
        self.model = model.to(device).eval()
        self.spec = spec
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.transform = test_transform(spec.input)

    def _image(self, item: ImageInput) -> torch.Tensor:
        # the conversion evaluation reads files with (alpha over black, 16 bits scaled to 8)
        if isinstance(item, str):
            image = read_image(item)
        elif isinstance(item, np.ndarray):
            image = to_rgb(Image.fromarray(item))
        elif isinstance(item, Image.Image):
            image = to_rgb(item)
        else:
            raise TypeError(f"expected an image path, array or PIL image, got {type(item)}")
        return self.transform(image)

    @torch.no_grad()
    def _forward(self, batch: torch.Tensor, camids: Optional[torch.Tensor]) -> torch.Tensor:
        cams = None if camids is None else camids.to(self.device)
        return call_model(self.model, batch.to(self.device), cams).float()

    def __call__(
        self,
        inputs: Union[ImageInput, Sequence[ImageInput], torch.Tensor],
        camids: Optional[Sequence[int]] = None,
    ) -> torch.Tensor:
        cams = None if camids is None else torch.as_tensor(list(camids), dtype=torch.long)
        if torch.is_tensor(inputs):
            return self._forward(inputs, cams)
        items = [inputs] if isinstance(inputs, (str, np.ndarray, Image.Image)) else list(inputs)
        if cams is not None and len(cams) != len(items):
            raise ValueError(f"{len(items)} images but {len(cams)} camera ids")
        chunks = []
        for start in range(0, len(items), self.batch_size):
            batch = torch.stack([self._image(x) for x in items[start : start + self.batch_size]])
            part = None if cams is None else cams[start : start + self.batch_size]
            chunks.append(self._forward(batch, part))
        return torch.cat(chunks)


def load_extractor(
    path: str, device: Union[str, torch.device] = "cpu", batch_size: int = 64
) -> Extractor:
    """An :class:`Extractor` for the model a checkpoint (or a CLIP-ReID file) holds."""
    if not os.path.isfile(path):
        raise CheckpointNotFoundError(f"checkpoint not found: '{path}'")
    model, spec = load_model(path, device)
    return Extractor(model, spec, device, batch_size)
