"""Crash-safe checkpoints: the whole training state, written atomically, restored exactly.

A checkpoint is a dict whose ``state_dict`` holds the model weights (so torchreid's
``load_pretrained_weights`` reads it), whose ``model_spec`` says how to rebuild the model without
a config file, and whose other keys hold everything a resume needs: the optimizers (the model's,
and one per auxiliary loss of the objective), scheduler, gradient scaler, the objective's own
trained modules, stages, random generators and the loop's progress. :class:`Checkpointer` writes
and restores it; files are written with :func:`csgn_plugin.fileio.atomic_save`. Loading weights
into a model for any other purpose is :mod:`csgn_plugin.modeling.weights`.
"""

from __future__ import annotations

import os
import random
from typing import Any, Optional

import numpy as np
import torch
import yaml
from torch import nn

from ..compat import load_checkpoint
from ..fileio import atomic_save
from ..modeling.weights import CheckpointMismatchError, extract_state_dict, match_state_dict
from ..runtime import NonFiniteLossError, Runtime


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


def config_differences(saved: str, current: str, limit: int = 10) -> list[str]:
    """``key: saved -> current`` for the config values two YAML dumps disagree on."""

    def flat(node: Any, prefix: str = "") -> dict:
        if not isinstance(node, dict):
            return {prefix[:-1]: node}
        out: dict = {}
        for key, value in node.items():
            out.update(flat(value, f"{prefix}{key}."))
        return out

    a, b = flat(yaml.safe_load(saved) or {}), flat(yaml.safe_load(current) or {})
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys[:limit]]


class Checkpointer:
    """Writes ``save_dir/checkpoints/{name}.pth`` with the whole training state and restores it.

    ``components`` are the objects whose ``state_dict()`` a resume needs (optimizer, scheduler,
    scaler, the objective and the optimizers of its auxiliary losses; ``None`` entries are stored
    as ``None``); ``stages`` are saved under ``'stages'`` by
    name. The loop's own progress (epoch, batch, step, best, history, ...) is passed to
    :meth:`save` and stored at the top level, where :meth:`resume` returns it from.
    """

    def __init__(
        self,
        runtime: Runtime,
        model: nn.Module,
        model_spec: Optional[dict],
        config_dump: str,
        components: dict[str, Any],
        stages: list,
    ) -> None:
        self.runtime = runtime
        self.model = model
        self.model_spec = model_spec
        self.config_dump = config_dump
        self.components = components
        self.stages = stages

    def path(self, name: str) -> str:
        return os.path.join(self.runtime.save_dir, "checkpoints", f"{name}.pth")

    def state(self, progress: dict) -> dict:
        state = {
            "state_dict": self.model.state_dict(),
            "model_spec": self.model_spec,
            "config": self.config_dump,
            "rng": rng_state(),
            "stages": {s.name: s.state_dict() for s in self.stages},
            **{k: (c.state_dict() if c is not None else None) for k, c in self.components.items()},
        }
        overlap = set(state) & set(progress)
        if overlap:
            raise KeyError(f"checkpoint progress keys {sorted(overlap)} clash with the state keys")
        return {**state, **progress}

    def check_weights_finite(self, where: str) -> None:
        """Refuse to checkpoint NaN/Inf weights (a step can break them with a finite loss)."""
        tensors = {k: v for k, v in self.model.state_dict().items() if v.is_floating_point()}
        if not tensors or torch.stack([v.isfinite().all() for v in tensors.values()]).all():
            return
        bad = [k for k, v in tensors.items() if not v.isfinite().all()]
        raise NonFiniteLossError(
            f"non-finite weights after {where} ({', '.join(bad[:5])}"
            f"{', ...' if len(bad) > 5 else ''}); no checkpoint written: the last checkpoint in "
            f"'{self.runtime.save_dir}' is the last good state. Lower the learning rate or use "
            "runtime.amp 'bf16' or 'off'."
        )

    def save(self, name: str, progress: dict, where: str) -> None:
        """Write the checkpoint (main process), never from non-finite weights (every rank
        checks, so all stop together)."""
        self.check_weights_finite(where)
        if self.runtime.is_main:
            atomic_save(self.state(progress), self.path(name))
        self.runtime.barrier()

    def resume(self, path: str) -> dict:
        """Restore every component, stage, random generator and the weights from ``path``;
        returns the checkpoint (whose top-level progress keys the loop reads back)."""
        state = load_checkpoint(path, map_location=self.runtime.device)
        # a component without state (an objective that owns nothing) may be absent: checkpoints
        # written before it had a place resume as before
        needed = [k for k, c in self.components.items() if c is None or c.state_dict()]
        missing = [k for k in ("state_dict", "stages", "rng", *needed) if k not in state]
        if missing:
            raise RuntimeError(
                f"'{path}' is not a full training checkpoint of this plugin (missing "
                f"{missing}); to start from its weights use model.load_weights instead"
            )
        self._load_exact_weights(extract_state_dict(state, path), path, state.get("config", ""))
        for key, component in self.components.items():
            if component is not None and state.get(key) is not None:
                component.load_state_dict(state[key])
        for stage in self.stages:
            if stage.name in state["stages"]:
                stage.load_state_dict(state["stages"][stage.name])
        set_rng_state(state["rng"])
        return state

    def _load_exact_weights(self, weights: dict, path: str, saved_config: str) -> None:
        """A resume restores every weight or nothing: refuse, naming the keys and the config
        values that differ, when the checkpoint was written for another model."""
        matched, report = match_state_dict(self.model, weights)
        if not report.complete:
            changed = config_differences(saved_config, self.config_dump)
            reason = f"; config values that differ: {'; '.join(changed)}" if changed else ""
            raise CheckpointMismatchError(
                f"cannot resume from '{path}': its weights do not fit this model "
                f"({report.summary()}){reason}. Resume with the config it was written with, or "
                "start from its weights with model.load_weights"
            )
        self.model.load_state_dict(matched)
