"""A model's architecture as plain data, and the fixed-size tensor that carries it in a state dict.

A model that can say what it is (``architecture() -> dict`` of JSON values) stores that dict in
its state dict as torch's *extra state*: :func:`encode_architecture` turns it into a uint8
tensor of :data:`ARCHITECTURE_STATE_BYTES` bytes (JSON, zero-padded). The size never changes, so
loaders that keep "same name, same shape" tensors (torchreid's ``load_pretrained_weights``) keep
this one too, and the model's ``set_extra_state`` sees the architecture the weights were trained
with and can refuse a model built differently, instead of running with random weights.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import torch

__all__ = [
    "ARCHITECTURE_STATE_BYTES",
    "architecture_differences",
    "decode_architecture",
    "encode_architecture",
]

ARCHITECTURE_STATE_BYTES = 4096
_FORMAT = "csgn-architecture/1"


def encode_architecture(architecture: Mapping[str, Any]) -> torch.Tensor:
    """``architecture`` as JSON in a zero-padded uint8 tensor of ARCHITECTURE_STATE_BYTES."""
    text = json.dumps({"format": _FORMAT, "architecture": dict(architecture)}, sort_keys=True)
    data = text.encode("utf-8")
    if len(data) > ARCHITECTURE_STATE_BYTES:
        raise ValueError(
            f"the architecture takes {len(data)} bytes as JSON, more than the "
            f"{ARCHITECTURE_STATE_BYTES} a state dict reserves for it (a very long prompt "
            "template?)"
        )
    out = torch.zeros(ARCHITECTURE_STATE_BYTES, dtype=torch.uint8)
    out[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return out


def decode_architecture(state: Any, where: str = "the state dict") -> dict:
    """The architecture dict stored by :func:`encode_architecture`; ``where`` names the source
    in errors."""
    if not torch.is_tensor(state) or state.dtype != torch.uint8 or state.dim() != 1:
        raise ValueError(
            f"the architecture record in {where} is not a 1-d uint8 tensor "
            f"(got {type(state).__name__})"
        )
    data = bytes(state.detach().cpu().tolist()).rstrip(b"\0")
    try:
        record = json.loads(data.decode("utf-8"))
        if record["format"] != _FORMAT:
            raise ValueError(f"format '{record['format']}', expected '{_FORMAT}'")
        architecture = record["architecture"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise ValueError(f"the architecture record in {where} is unreadable: {exc}") from exc
    if not isinstance(architecture, dict):
        raise ValueError(f"the architecture record in {where} holds no dict")
    return architecture


def architecture_differences(
    saved: Mapping[str, Any],
    current: Mapping[str, Any],
    config_keys: Mapping[str, str] | None = None,
) -> list[str]:
    """``field (config key): saved -> current`` for every field the two architectures disagree
    on (a field only one of them has counts as a difference)."""
    config_keys = config_keys or {}
    missing = object()
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, missing), current.get(key, missing)
        if a != b:
            name = f"{key} ({config_keys[key]})" if key in config_keys else key
            shown = ["(absent)" if v is missing else repr(v) for v in (a, b)]
            out.append(f"{name}: {shown[0]} -> {shown[1]}")
    return out
