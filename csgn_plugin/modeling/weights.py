"""Loading weights into a model, under a policy, with a report of every tensor.

* ``strict`` (``model.strict_load True``, the config's default; callers name the policy): every
  tensor of the model must come from the source, with its shape, and the source may hold nothing
  else; otherwise :class:`CheckpointMismatchError` names the tensors and nothing is loaded.
* ``partial`` (an explicit opt-in, e.g. a backbone trained for another task): what fits by name
  and shape is loaded; :meth:`LoadReport.warning_block` lists what kept its initial values and
  what was skipped. A source none of whose tensors fit is refused either way.

A model that records its architecture (:class:`~csgn_plugin.modeling.csgn.CSGN`, in its extra
state and in a checkpoint's ``model_spec``) is compared with that record: strict loading refuses
a model built differently, naming the fields and their config keys; partial loading reports the
differences. Files without the record (written before models kept it) load as before.

:func:`load_weights_file` reads our checkpoints (``{"state_dict", "model_spec", ...}``),
torchreid's, bare state dicts and CLIP-ReID's released checkpoints (recognised by their key
names, checked against the model and converted: :mod:`~csgn_plugin.modeling.clipreid_format`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from ..compat import load_checkpoint
from ..errors import CheckpointMismatchError
from .architecture import architecture_differences, decode_architecture
from .clipreid_format import (
    clipreid_facts,
    clipreid_mismatches,
    convert_clipreid_state_dict,
    is_clipreid_state_dict,
)
from .csgn import CONFIG_KEYS, CSGN, MODEL_PRESETS
from .spec import ModelSpec

__all__ = [
    "POLICIES",
    "CheckpointMismatchError",
    "LoadReport",
    "extract_state_dict",
    "load_model_weights",
    "load_weights_file",
    "match_state_dict",
]

POLICIES = ("strict", "partial")


@dataclass
class LoadReport:
    """What a weight load did, key by key."""

    loaded: list[str] = field(default_factory=list)
    shape_mismatch: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    # fields of the recorded architecture that differ from the model's ('field (key): a -> b')
    architecture_differences: list[str] = field(default_factory=list)
    source: str = ""  # the file (or description) the weights came from
    converted_from: str = ""  # the foreign format the weights were converted from, if any

    def _sections(self) -> list[tuple[str, list[str]]]:
        return [
            ("missing from the checkpoint", self.missing),
            ("skipped (shape differs)", self.shape_mismatch),
            ("unexpected (not in the model)", self.unexpected),
            ("architecture differs (checkpoint -> model)", self.architecture_differences),
        ]

    def summary(self, limit: int = 20) -> str:
        """Counts, and the names of up to ``limit`` keys of every kind that did not load."""

        def some(keys: list[str]) -> str:
            more = f", ... ({len(keys)} in all)" if len(keys) > limit else ""
            return ", ".join(keys[:limit]) + more

        converted = f" (converted from {self.converted_from})" if self.converted_from else ""
        lines = [f"loaded {len(self.loaded)} tensors{converted}"]
        lines += [f"{name}: {some(keys)}" for name, keys in self._sections() if keys]
        return "; ".join(lines)

    @property
    def complete(self) -> bool:
        return not any(keys for _, keys in self._sections())

    def warning_block(self, limit: int = 50) -> str:
        """A multi-line warning listing what stayed as initialised and what was skipped; empty
        when the load was complete."""
        if self.complete:
            return ""
        source = f" of '{self.source}'" if self.source else ""
        titles = {
            "missing from the checkpoint": "kept their initial (random or pretrained) values, "
            "not in the checkpoint",
            "skipped (shape differs)": "kept their initial values, the checkpoint's shape differs",
            "unexpected (not in the model)": "in the checkpoint but not in the model, ignored",
            "architecture differs (checkpoint -> model)": "architecture fields that differ "
            "(checkpoint -> model)",
        }
        rule = "=" * 78
        lines = [rule, f"WARNING: partial load{source}: {len(self.loaded)} tensors loaded"]
        for name, keys in self._sections():
            if keys:
                lines.append(f"  {len(keys)} {titles[name]}:")
                lines += [f"    - {k}" for k in keys[:limit]]
                if len(keys) > limit:
                    lines.append(f"    ... and {len(keys) - limit} more")
        lines.append(rule)
        return "\n".join(lines)


def _is_extra_state(key: str) -> bool:
    return key == "_extra_state" or key.endswith("._extra_state")


def extract_state_dict(checkpoint: Any, path: str = "") -> OrderedDict:
    """The model weights of a checkpoint (ours, torchreid's, or a bare state dict), without a
    ``module.`` prefix."""
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise RuntimeError(f"'{path}' holds no model state dict (expected tensors by name)")
    return OrderedDict((k[7:] if k.startswith("module.") else k, v) for k, v in state.items())


def match_state_dict(model: nn.Module, source: Mapping[str, Any]) -> tuple[OrderedDict, LoadReport]:
    """The tensors of ``source`` that fit ``model`` by name and shape, and the full report.

    Extra-state entries (a model's record of its architecture, not weights) are never reported:
    the source's is kept where it has one (the model's ``set_extra_state`` then checks it), the
    model's own stands in where it has none, so ``matched`` always loads with ``strict=True`` as
    far as they go.
    """
    target = model.state_dict()
    report = LoadReport()
    matched = OrderedDict()
    for key, value in source.items():
        if key not in target:
            report.unexpected.append(key)
        elif _is_extra_state(key):
            matched[key] = value
        elif target[key].shape != value.shape:
            report.shape_mismatch.append(
                f"{key} {tuple(value.shape)} vs model {tuple(target[key].shape)}"
            )
        else:
            matched[key] = value
            report.loaded.append(key)
    for key in target:
        if key not in source:
            if _is_extra_state(key):
                matched[key] = target[key]
            else:
                report.missing.append(key)
    return matched, report


def load_model_weights(
    model: nn.Module,
    source: Mapping[str, Any],
    policy: str,
    path: str = "",
    recorded_architecture: Optional[Mapping[str, Any]] = None,
) -> LoadReport:
    """Load ``source`` (a state dict, or a checkpoint dict holding one) into ``model``.

    ``policy`` is ``'strict'`` or ``'partial'`` (module docstring). ``recorded_architecture`` is
    the architecture a file's ``model_spec`` records; the source's own extra state takes
    precedence. ``path`` names the source in messages. Nothing is loaded when the load is
    refused.
    """
    if policy not in POLICIES:
        raise ValueError(f"weight loading policy must be one of {POLICIES}, got '{policy}'")
    where = f"'{path}'" if path else "the state dict"
    weights = extract_state_dict(source, path)
    target = model.state_dict()
    record = recorded_architecture
    if isinstance(model, CSGN) and "_extra_state" in weights and "_extra_state" in target:
        record = decode_architecture(weights["_extra_state"], where)
    matched, report = match_state_dict(model, weights)
    report.source = path
    if isinstance(model, CSGN) and record is not None:
        report.architecture_differences = architecture_differences(
            record, model.architecture(), CONFIG_KEYS
        )
    if policy == "strict" and not report.complete:
        hint = (
            "; build the model from the checkpoint's model_spec (modeling.build_model_from_spec) "
            "or set the config keys named above"
            if report.architecture_differences
            else ""
        )
        raise CheckpointMismatchError(
            f"strict loading of {where} refused: {report.summary()}{hint}. Partial loading "
            "(what fits by name and shape) is an explicit opt-in"
        )
    if not report.loaded:
        raise CheckpointMismatchError(f"no tensor of {where} fits the model: {report.summary()}")
    # the comparison above stands in for set_extra_state's, which would refuse a partial load
    for key in matched:
        if _is_extra_state(key):
            matched[key] = target[key]
    model.load_state_dict(matched, strict=False)
    return report


def load_weights_file(model: nn.Module, path: str, policy: str) -> LoadReport:
    """Load the weights stored in ``path`` into ``model`` (see :func:`load_model_weights`).

    Reads plugin checkpoints (their ``model_spec`` is compared with the model), torchreid
    checkpoints, bare state dicts and CLIP-ReID's released checkpoints: those are refused
    unless ``model`` is the ``clipreid_*`` model they imply (stride, cameras, activation at the
    model's input size; the message names the config keys to set), then converted.
    """
    checkpoint = load_checkpoint(path)
    weights = extract_state_dict(checkpoint, path)
    recorded = None
    if isinstance(checkpoint, dict) and "model_spec" in checkpoint:
        spec = ModelSpec.from_dict(checkpoint["model_spec"], f"'{path}' model_spec")
        recorded = spec.architecture if spec.name in MODEL_PRESETS else None
    converted_from = ""
    if is_clipreid_state_dict(weights):
        weights = _clipreid_weights_for(model, weights, path)
        converted_from = "CLIP-ReID"
    report = load_model_weights(model, weights, policy, path, recorded)
    report.converted_from = converted_from
    return report


def _clipreid_weights_for(model: nn.Module, weights: Mapping[str, Any], path: str) -> OrderedDict:
    if not isinstance(model, CSGN):
        raise CheckpointMismatchError(
            f"'{path}' is a CLIP-ReID checkpoint: load it into model clipreid_vitb16 or "
            f"clipreid_rn50, not {type(model).__name__}"
        )
    architecture = model.architecture()
    facts = clipreid_facts(weights, tuple(architecture["image_size"]), f"'{path}'")
    mismatches = clipreid_mismatches(facts, architecture)
    if mismatches:
        raise CheckpointMismatchError(
            f"'{path}' is a CLIP-ReID checkpoint of model {facts['name']} that does not fit this "
            f"model: {'; '.join(mismatches)}. Set these config keys (model.name "
            f"{facts['name']}), or convert it with tools/convert_clipreid.py and load the result"
        )
    return convert_clipreid_state_dict(weights, f"'{path}'")
