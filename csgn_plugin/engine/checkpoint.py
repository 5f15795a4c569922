"""Crash-safe checkpoints: atomic writes, full training state, reported weight loading.

A checkpoint is a dict whose ``state_dict`` holds the model weights (so torchreid's
``load_pretrained_weights`` reads it) and whose other keys hold everything a resume needs.
Files are written to a temporary sibling, fsynced, then renamed over the target: a crash or a full
disk at any moment leaves either the old complete file or the new complete file, never half.
"""

from __future__ import annotations

import os
import random
import tempfile
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..compat import load_checkpoint


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save`` to ``path`` atomically (temporary file + fsync + rename)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(exc, OSError):
            raise OSError(
                exc.errno,
                f"could not write checkpoint '{path}' ({exc.strerror}); the previous "
                "checkpoint, if any, is intact",
            ) from exc
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def rng_state() -> dict:
    """Every random generator a training step can touch."""
    state = {
        "python": random.getstate(),
        "numpy": _numpy_state_to_plain(np.random.get_state()),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_as_python_state(state["python"]))
    np.random.set_state(_numpy_state_from_plain(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_state_to_plain(state: tuple) -> list:
    # plain ints and a tensor, so that weights_only loading needs no numpy types
    name, keys, pos, has_gauss, gauss = state
    return [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]


def _numpy_state_from_plain(state: list) -> tuple:
    name, keys, pos, has_gauss, gauss = state
    return (name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss)


def _as_python_state(state: Any) -> tuple:
    # weights_only loading turns the inner tuple into a list; random.setstate wants tuples
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


@dataclass
class LoadReport:
    """What a weight load did, key by key."""

    loaded: list[str] = field(default_factory=list)
    shape_mismatch: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def summary(self) -> str:
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f", ... ({len(keys)} in all)" if len(keys) > 5 else "")

        lines = [f"loaded {len(self.loaded)} tensors"]
        for name, keys in (
            ("skipped (shape differs)", self.shape_mismatch),
            ("missing from the checkpoint", self.missing),
            ("unexpected (not in the model)", self.unexpected),
        ):
            if keys:
                lines.append(f"{name}: {few(keys)}")
        return "; ".join(lines)

    @property
    def complete(self) -> bool:
        return not (self.shape_mismatch or self.missing or self.unexpected)


def extract_state_dict(checkpoint: Any, path: str = "") -> dict:
    """The model weights of a checkpoint (ours, torchreid's, or a bare state dict)."""
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise RuntimeError(f"'{path}' holds no model state dict (expected tensors by name)")
    return OrderedDict((k[7:] if k.startswith("module.") else k, v) for k, v in state.items())


def load_weights(model: nn.Module, path: str, strict: bool = False) -> LoadReport:
    """Load the weights stored in ``path`` into ``model`` and say exactly what happened.

    Tensors whose names and shapes match are loaded; the rest are reported. With ``strict``,
    anything short of a complete match raises before the model is touched.
    """
    source = extract_state_dict(load_checkpoint(path), path)
    target = model.state_dict()
    report = LoadReport()
    matched = OrderedDict()
    for key, value in source.items():
        if key not in target:
            report.unexpected.append(key)
        elif target[key].shape != value.shape:
            report.shape_mismatch.append(
                f"{key} {tuple(value.shape)} vs model {tuple(target[key].shape)}"
            )
        else:
            matched[key] = value
            report.loaded.append(key)
    report.missing = [key for key in target if key not in source]
    if strict and not report.complete:
        raise RuntimeError(f"strict loading of '{path}' refused: {report.summary()}")
    if not matched:
        raise RuntimeError(f"no tensor of '{path}' fits the model: {report.summary()}")
    model.load_state_dict(matched, strict=False)
    return report
