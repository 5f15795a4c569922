"""What a checkpoint needs to rebuild its model with no config file: :class:`ModelSpec`.

A plugin checkpoint is ``{"state_dict": ..., "model_spec": ModelSpec.to_dict(), ...}`` (training
state optional). The spec names the model, its number of classes, its architecture and the
input it expects::

    {"name": "csgn", "num_classes": 77,
     "architecture": {...},       # CSGN names: CSGN.architecture(); CAL names:
                                  # CALModel.architecture(); others: {"loss": "softmax"}
     "input": {"height": 256, "width": 128, "norm_mean": [...], "norm_std": [...],
               "interpolation": "bilinear"}}

:func:`build_model_from_spec` builds that model with random weights and downloads nothing: a
CSGN name becomes ``CSGN(config_from_architecture(architecture), num_classes)`` (tower
architectures, stride, SIE, activation all from the spec), a CAL name ``CALModel(name,
num_classes, identity_classifier, pretrained=False)``, any other name torchreid's
``build_model(name, num_classes, loss, pretrained=False)``. The checkpoint's ``state_dict`` then
fills it (:func:`~csgn_plugin.modeling.weights.load_model_weights`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

from torch import nn

from ..compat import model_factory, torchreid_api
from .cal import CAL_MODELS, IDENTITY_CLASSIFIERS, CALModel
from .csgn import CSGN, MODEL_PRESETS, config_from_architecture

__all__ = [
    "INTERPOLATIONS",
    "ModelSpec",
    "build_model_from_spec",
    "input_spec",
    "model_spec_for",
]

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
_INPUT_KEYS = ("height", "width", "norm_mean", "norm_std", "interpolation")
_SPEC_KEYS = ("name", "num_classes", "architecture", "input")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def input_spec(
    height: int,
    width: int,
    norm_mean: Any,
    norm_std: Any,
    interpolation: str = "bilinear",
) -> dict[str, Any]:
    """The ``input`` dict of a spec: the resize and normalisation a model's images get."""
    spec = {
        "height": height,
        "width": width,
        "norm_mean": list(norm_mean),
        "norm_std": list(norm_std),
        "interpolation": interpolation,
    }
    _check_input(spec, "input")
    return spec


def _check_input(spec: Any, where: str) -> None:
    if not isinstance(spec, dict):
        raise ValueError(f"{where} must be a dict with keys {list(_INPUT_KEYS)}")
    missing = [k for k in _INPUT_KEYS if k not in spec]
    unknown = sorted(set(spec) - set(_INPUT_KEYS))
    if missing or unknown:
        raise ValueError(f"{where}: missing keys {missing}, unknown keys {unknown}")
    for key in ("height", "width"):
        if not _is_int(spec[key]) or spec[key] < 1:
            raise ValueError(f"{where}.{key} must be a positive int, got {spec[key]!r}")
    for key in ("norm_mean", "norm_std"):
        values = spec[key]
        if not isinstance(values, (list, tuple)) or len(values) != 3:
            raise ValueError(f"{where}.{key} must be 3 numbers (R, G, B), got {values!r}")
        if not all(_is_number(v) for v in values):
            raise ValueError(f"{where}.{key} must be 3 finite numbers, got {values!r}")
    if not all(v > 0 for v in spec["norm_std"]):
        raise ValueError(f"{where}.norm_std must be positive, got {spec['norm_std']!r}")
    if spec["interpolation"] not in INTERPOLATIONS:
        raise ValueError(
            f"{where}.interpolation must be one of {INTERPOLATIONS}, got {spec['interpolation']!r}"
        )


@dataclass(frozen=True)
class ModelSpec:
    """Name, number of classes, architecture and input of a model; checked on creation."""

    name: str
    num_classes: int
    architecture: dict[str, Any] = field(default_factory=dict)
    input: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = "model_spec"
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"{where}.name must be a model name, got {self.name!r}")
        if not _is_int(self.num_classes) or self.num_classes < 1:
            raise ValueError(
                f"{where}.num_classes must be a positive int, got {self.num_classes!r}"
            )
        _check_input(self.input, f"{where}.input")
        if self.name in MODEL_PRESETS:
            self._check_csgn(where)
        elif self.name in CAL_MODELS:
            if not (
                isinstance(self.architecture, dict)
                and set(self.architecture) == {"identity_classifier"}
                and self.architecture["identity_classifier"] in IDENTITY_CLASSIFIERS
            ):
                raise ValueError(
                    f"{where}.architecture of CAL model '{self.name}' must be "
                    f"{{'identity_classifier': one of {IDENTITY_CLASSIFIERS}}}, got "
                    f"{self.architecture!r}"
                )
        elif not (
            isinstance(self.architecture, dict)
            and set(self.architecture) == {"loss"}
            and isinstance(self.architecture["loss"], str)
        ):
            raise ValueError(
                f"{where}.architecture of torchreid model '{self.name}' must be "
                f"{{'loss': <torchreid loss name>}}, got {self.architecture!r}"
            )

    def _check_csgn(self, where: str) -> None:
        config = config_from_architecture(self.architecture, f"{where}.architecture")
        preset = MODEL_PRESETS[self.name]
        contradicting = [k for k, v in preset.items() if getattr(config, k) != v]
        if contradicting:
            raise ValueError(
                f"{where}.architecture contradicts model '{self.name}' on {contradicting} "
                f"(the name fixes {preset})"
            )
        size = (self.input["height"], self.input["width"])
        if tuple(config.image_size) != size:
            raise ValueError(
                f"{where}: input size {size} differs from architecture.image_size "
                f"{tuple(config.image_size)}"
            )
        for key, field_name in (("norm_mean", "pixel_mean"), ("norm_std", "pixel_std")):
            if tuple(self.input[key]) != tuple(getattr(config, field_name)):
                raise ValueError(
                    f"{where}: input.{key} {self.input[key]} differs from architecture."
                    f"{field_name} {list(getattr(config, field_name))} (the model's grayscale "
                    "view undoes this normalisation)"
                )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values, for a checkpoint's ``model_spec``."""
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "architecture": dict(self.architecture),
            "input": {k: list(v) if isinstance(v, tuple) else v for k, v in self.input.items()},
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = "model_spec") -> ModelSpec:
        """The spec of a ``to_dict()`` dict; errors name ``where`` and the missing or bad key."""
        if not isinstance(data, dict):
            raise ValueError(f"{where} must be a dict with keys {list(_SPEC_KEYS)}")
        missing = [k for k in _SPEC_KEYS if k not in data]
        unknown = sorted(set(data) - set(_SPEC_KEYS))
        if missing or unknown:
            raise ValueError(f"{where}: missing keys {missing}, unknown keys {unknown}")
        return cls(data["name"], data["num_classes"], data["architecture"], data["input"])


def model_spec_for(
    name: str,
    model: nn.Module,
    input: dict[str, Any],
    loss: Optional[str] = None,
    num_classes: Optional[int] = None,
) -> ModelSpec:
    """The spec of a built model: a :class:`CSGN` or :class:`CALModel` describes itself; a
    torchreid model needs
    the ``loss`` it was built with (``loss.name``) and its ``num_classes``."""
    if isinstance(model, (CSGN, CALModel)):
        return ModelSpec(name, model.num_classes, model.architecture(), dict(input))
    if loss is None or num_classes is None:
        raise ValueError(
            f"the spec of torchreid model '{name}' needs the loss it was built with and its "
            f"num_classes, got loss={loss!r}, num_classes={num_classes!r}"
        )
    return ModelSpec(name, num_classes, {"loss": loss}, dict(input))


def build_model_from_spec(spec: ModelSpec) -> nn.Module:
    """The model of ``spec`` with random weights; nothing is downloaded."""
    if spec.name in MODEL_PRESETS:
        return CSGN(config_from_architecture(spec.architecture), spec.num_classes)
    if spec.name in CAL_MODELS:
        classifier = spec.architecture["identity_classifier"]
        return CALModel(spec.name, spec.num_classes, classifier, pretrained=False)
    if spec.name not in model_factory():
        raise ValueError(
            f"model_spec.name '{spec.name}' is neither a CSGN model ({sorted(MODEL_PRESETS)}) "
            "nor a torchreid model"
        )
    return torchreid_api().models.build_model(
        spec.name, spec.num_classes, loss=spec.architecture["loss"], pretrained=False
    )
