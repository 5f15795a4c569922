"""One source of truth for config: the building blocks carry no copy of a config default.

Every default lives in the yacs config (``csgn_plugin/config/``); the mappers in
``csgn_plugin.builders`` hand the values on. A default in the signature of a loss or a model part
on a parameter that a config key feeds would be a second default, one that drifts away from the
config unnoticed. These tests walk every public class and function of ``csgn_plugin.losses`` and
``csgn_plugin.modeling`` and refuse such defaults: a parameter is fed by the config when its name
is a config leaf name (``margin``, ``fusion``, ``test_neck``, ...) or one of the renames below.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Optional

from yacs.config import CfgNode as CN

import csgn_plugin.losses
import csgn_plugin.modeling
from csgn_plugin.config import get_default_config

# Parameters fed by a config key under another name: parameter name -> the key.
RENAMED = {
    "label_smoothing": "loss.softmax.label_smooth",  # epsilon 0.1 when the switch is on
    "epsilon": "loss.softmax.label_smooth",
    "loss": "loss.name",
    "hsf_weights": "loss.hsf.rgb_weight",  # and loss.hsf.gray_weight
    "arch": "clip.vit_arch",  # and clip.resnet_arch
    "weights": "clip.vit_weights",  # and clip.resnet_weights
    "activation": "clip.quick_gelu",
    "stride": "clip.vit_stride",
    "last_stride": "clip.resnet_last_stride",
    "num_cameras": "clip.sie_camera",
    "image_size": "data.height",  # and data.width
    "pixel_mean": "data.norm_mean",
    "pixel_std": "data.norm_std",
    "template": "csgn.prompt_template",
    "n_ctx": "csgn.prompt_n_ctx",
    "init_std": "csgn.prompt_init_std",
    "heads": "csgn.fusion_heads",
    "policy": "model.strict_load",  # 'strict' / 'partial'
}

# Defaults on such parameters that are no copy of the config's: (callable, parameter) -> why.
NOT_A_CONFIG_COPY = {
    ("clipreid_model_spec", "sie_scale"): "None: CLIP-ReID's own value for the file's layout",
    ("model_spec_for", "loss"): "None: only a torchreid model needs it, and it refuses None",
}


def _leaf_keys(cfg: CN, prefix: str = "") -> Iterator[str]:
    for key, value in cfg.items():
        if isinstance(value, CN):
            yield from _leaf_keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


CONFIG_KEYS = set(_leaf_keys(get_default_config()))
CONFIG_FED = {key.rsplit(".", 1)[-1] for key in CONFIG_KEYS} | set(RENAMED)


def _modules(package: ModuleType) -> Iterator[ModuleType]:
    for info in pkgutil.iter_modules(package.__path__):
        yield importlib.import_module(f"{package.__name__}.{info.name}")


def public_callables(*packages: ModuleType) -> dict[str, Callable]:
    """``name -> callable`` for every public function, class (its constructor) and public method
    defined in the packages' modules; names as ``function`` or ``Class`` / ``Class.method``."""
    found: dict[str, Callable] = {}
    for package in packages:
        for module in _modules(package):
            for name, obj in vars(module).items():
                if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                    continue
                if inspect.isfunction(obj):
                    found[name] = obj
                elif inspect.isclass(obj):
                    found[name] = obj
                    for attr, member in vars(obj).items():
                        function = getattr(member, "__func__", member)  # class/static methods
                        if not attr.startswith("_") and inspect.isfunction(function):
                            found[f"{name}.{attr}"] = function
    return found


def config_defaults(name: str, function: Callable) -> list[str]:
    """``'name(param=default)'`` for each default on a parameter that the config feeds."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except ValueError:  # a builtin without a signature has no Python defaults either
        return []
    return [
        f"{name}({p.name}={p.default!r})"
        for p in parameters
        if p.default is not inspect.Parameter.empty
        and p.name in CONFIG_FED
        and (name, p.name) not in NOT_A_CONFIG_COPY
    ]


CALLABLES = public_callables(csgn_plugin.losses, csgn_plugin.modeling)


def _default_of(name: str, parameter: str) -> Optional[object]:
    return inspect.signature(CALLABLES[name]).parameters[parameter].default


def test_no_building_block_has_a_second_default_for_a_config_key():
    second = [d for name, f in CALLABLES.items() for d in config_defaults(name, f)]
    assert second == [], (
        "defaults that copy a config key's default (pass the value from the config via "
        f"csgn_plugin.builders instead): {second}"
    )


def test_the_walk_sees_the_losses_and_the_model_parts():
    expected = {
        "HSFLoss",
        "HardTripletLoss",
        "MutualLoss",
        "label_smoothed_cross_entropy",
        "CLIPReIDObjective",
        "PromptLearner",
        "VSS",
        "build_fusion",
        "ReIDViT",
        "ReIDResNet",
        "load_clip",
        "load_weights_file",
        "ModelSpec.from_dict",
    }
    assert expected <= set(CALLABLES)


def test_a_planted_second_default_is_caught():
    def triplet(features: object, margin: float = 0.3, temperature: float = 1.0) -> None: ...

    class Towers:
        def __init__(self, visual: object, stride: int = 16, keep_attnpool: bool = True): ...

    # config leaf name, then a renamed one; parameters the config does not feed keep defaults
    assert config_defaults("triplet", triplet) == ["triplet(margin=0.3)"]
    assert config_defaults("Towers", Towers) == ["Towers(stride=16)"]


def test_renames_name_real_config_keys():
    assert sorted(k for k in RENAMED.values() if k not in CONFIG_KEYS) == []


def test_every_exemption_is_still_a_none_default_of_a_config_fed_parameter():
    for name, parameter in NOT_A_CONFIG_COPY:
        assert parameter in CONFIG_FED, (name, parameter)
        assert _default_of(name, parameter) is None, (name, parameter)
