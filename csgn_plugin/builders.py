"""Config -> runtime, data, model, optimizer, scheduler, objective, evaluator, engine.

The tools (``tools/train.py``, ``tools/test.py``, the benchmarks) call these, as torchreid's
main.py wires its pieces; the sub-packages never import this module, so imports point one way.
The functions named ``*_options`` / ``*_schedule`` are the one set of mappers from the yacs config
(where every default lives) to the dataclasses the code receives (which have no defaults).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Collection, Iterator, Sequence
from dataclasses import fields, replace
from types import SimpleNamespace
from typing import Any, Callable, Optional

import gdown
import open_clip
import torch
import yaml
from torch import nn
from yacs.config import CfgNode

from .checks import OPTIMIZERS, resolve_amp, resolve_compile
from .compat import model_factory, torchreid_api
from .config import ConfigError, get_default_config
from .data.datamanager import ClothesDataManager
from .data.image_cache import CacheOptions
from .engine.engine import CCEngine, LoopOptions, unwrap_model
from .engine.schedules import EpochSchedule, PromptSchedule, build_epoch_scheduler
from .engine.stages import PromptStage, PromptStageOptions, Stage, stages_for
from .errors import UserError, WeightsDownloadError
from .evaluation.evaluator import EvaluationOptions, Evaluator
from .losses.objective import (
    CALObjective,
    CLIPReIDObjective,
    Objective,
    TorchreidObjective,
    recipe_of,
)
from .modeling import CAL_MODELS, CSGN, MODEL_PRESETS, CALModel, CSGNConfig, NormalizedClassifier
from .modeling.spec import ModelSpec, input_spec, model_spec_for
from .pretraining import ensure_synthclip_towers
from .runtime import Runtime


def build_datamanager(cfg: CfgNode, use_gpu: bool, rank: int = 0, world_size: int = 1) -> Any:
    return ClothesDataManager(
        root=cfg.data.root,
        sources=cfg.data.sources,
        targets=cfg.data.targets,
        data_type=cfg.data.type,
        height=cfg.data.height,
        width=cfg.data.width,
        transforms=cfg.data.transforms,
        norm_mean=cfg.data.norm_mean,
        norm_std=cfg.data.norm_std,
        use_gpu=use_gpu,
        combineall=cfg.data.combineall,
        batch_size_train=cfg.train.batch_size,
        batch_size_test=cfg.test.batch_size,
        workers=cfg.data.workers,
        train_sampler=cfg.sampler.train_sampler,
        num_instances=cfg.sampler.num_instances,
        seed=cfg.train.seed,
        rank=rank,
        world_size=world_size,
        pin_memory=cfg.runtime.pin_memory,
        persistent_workers=cfg.runtime.persistent_workers,
        prefetch_factor=cfg.runtime.prefetch_factor,
        train_interpolation=cfg.data.train_interpolation,
        test_interpolation=cfg.data.test_interpolation,
        pad_crop_padding=cfg.data.pad_crop_padding,
        seq_len=cfg.video.seq_len,
        sample_method=cfg.video.sample_method,
        dataset_options=dict(cfg.cc_data),
        train=not cfg.test.evaluate,
        cache=cache_options(cfg),
    )


def cache_options(cfg: CfgNode) -> CacheOptions:
    d = cfg.data
    return CacheOptions(mode=d.cache, device_gb=d.cache_device_gb, host_gb=d.cache_host_gb)


# ---------------------------------------------------------------------- models
# clip.quick_gelu (user-facing) -> CSGNConfig.activation
QUICK_GELU_TO_ACTIVATION = {"auto": "auto", "on": "quick_gelu", "off": "gelu"}


def _as_tuple(value: Any, key: str, length: Optional[int] = None) -> tuple:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
    if length is not None and len(value) != length:
        raise ConfigError(f"config key '{key}' must have {length} values, got {list(value)}")
    return tuple(value)


def csgn_config(cfg: CfgNode, num_cameras: int = 0) -> CSGNConfig:
    """The :class:`CSGNConfig` of ``cfg.model.name`` (``model``, ``data``, ``clip``, ``csgn``):
    the registered name's fixed fields win over the ``csgn.*`` ablation switches."""
    clip, csgn = cfg.clip, cfg.csgn
    if clip.sie_camera and num_cameras < 1:
        raise ConfigError("clip.sie_camera is on but the training set reports no cameras")
    if clip.quick_gelu not in QUICK_GELU_TO_ACTIVATION:
        raise ConfigError(
            f"clip.quick_gelu must be one of {sorted(QUICK_GELU_TO_ACTIVATION)}, got "
            f"{clip.quick_gelu!r}"
        )
    options: dict[str, Any] = {
        "vit_arch": clip.vit_arch,
        "resnet_arch": clip.resnet_arch if csgn.use_resnet else "",
        "vit_weights": clip.vit_weights if cfg.model.pretrained else "",
        "resnet_weights": clip.resnet_weights if cfg.model.pretrained else "",
        "activation": QUICK_GELU_TO_ACTIVATION[clip.quick_gelu],
        "image_size": (int(cfg.data.height), int(cfg.data.width)),
        "pixel_mean": _as_tuple(cfg.data.norm_mean, "data.norm_mean", 3),
        "pixel_std": _as_tuple(cfg.data.norm_std, "data.norm_std", 3),
        "vit_stride": int(clip.vit_stride),
        "resnet_last_stride": int(clip.resnet_last_stride),
        "pos_interp": clip.pos_interp,
        "num_cameras": int(num_cameras) if clip.sie_camera else 0,
        "sie_scale": float(clip.sie_scale),
        "modalities": _as_tuple(csgn.modalities, "csgn.modalities"),
        "prompt_template": csgn.prompt_template,
        "prompt_n_ctx": int(csgn.prompt_n_ctx),
        "prompt_init_std": float(csgn.prompt_init_std),
        "fusion": csgn.fusion,
        "fusion_heads": int(csgn.fusion_heads),
        "fusion_init_std": float(csgn.fusion_init_std),
        "test_neck": csgn.test_neck,
        "test_parts": _as_tuple(csgn.test_parts, "csgn.test_parts"),
        "test_flip": bool(csgn.test_flip),
        "test_part_norm": bool(csgn.test_part_norm),
    }
    options.update(MODEL_PRESETS[cfg.model.name])
    return CSGNConfig(**options)


def model_config(name: str, **overrides: Any) -> CSGNConfig:
    """The :class:`CSGNConfig` of a registered name under the default config, with
    ``overrides`` (CSGNConfig fields) applied: what ``torchreid.models.build_model`` builds."""
    if name not in MODEL_PRESETS:
        raise KeyError(f"unknown CSGN model '{name}'; known: {sorted(MODEL_PRESETS)}")
    known = {f.name for f in fields(CSGNConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"unknown model options {unknown}; known: {sorted(known)}")
    cfg = get_default_config()
    cfg.model.name = name
    return replace(csgn_config(cfg), **overrides)


def clip_model_factory(name: str) -> Callable[..., CSGN]:
    """torchreid's factory function of a registered CLIP model name."""

    def factory(
        num_classes: int,
        loss: str = "softmax",
        pretrained: bool = True,
        use_gpu: bool = True,
        **overrides: Any,
    ) -> CSGN:
        # loss and use_gpu are torchreid's factory arguments: the output dict serves every
        # loss, and the engine moves the model to its device.
        config = model_config(name, **overrides)
        if pretrained:
            weights = {
                "vit_weights": config.vit_weights or ("openai" if config.vit_arch else ""),
                "resnet_weights": config.resnet_weights or ("openai" if config.resnet_arch else ""),
            }
            config = replace(config, **weights)
        return CSGN(config, num_classes)

    factory.__name__ = name
    factory.__doc__ = (
        f"torchreid factory of '{name}': the real-size model of the default config; "
        "pretrained=True loads OpenAI's CLIP weights through open_clip (network), "
        "pretrained=False builds random towers. Keyword overrides are CSGNConfig fields."
    )
    return factory


CLIP_MODEL_FACTORIES = {name: clip_model_factory(name) for name in MODEL_PRESETS}


def cal_identity_classifier(cfg: CfgNode) -> str:
    """The identity classifier ``loss.cal.id_loss`` trains: 'normalized' for 'cosface' (cosines),
    'linear' for 'cross_entropy' (Simple-CCReID's ``models/__init__.py``)."""
    return "normalized" if cfg.loss.cal.id_loss == "cosface" else "linear"


def cal_model_factory(name: str) -> Callable[..., CALModel]:
    """torchreid's factory function of a registered CAL model name."""

    def factory(
        num_classes: int,
        loss: str = "softmax",
        pretrained: bool = True,
        use_gpu: bool = True,
        **overrides: Any,
    ) -> CALModel:
        # loss and use_gpu are torchreid's factory arguments: CAL's losses are the objective's
        unknown = sorted(set(overrides) - {"identity_classifier"})
        if unknown:
            raise TypeError(f"unknown model options {unknown}; known: ['identity_classifier']")
        classifier = overrides.get(
            "identity_classifier", cal_identity_classifier(get_default_config())
        )
        return CALModel(name, num_classes, classifier, pretrained)

    factory.__name__ = name
    factory.__doc__ = (
        f"torchreid factory of '{name}': CAL's model (Simple-CCReID); pretrained=True loads "
        "ImageNet weights (network); identity_classifier 'linear' (default) or 'normalized'."
    )
    return factory


CAL_MODEL_FACTORIES = {name: cal_model_factory(name) for name in CAL_MODELS}


# clip.vit_weights / clip.resnet_weights value: the CLIP pretrained here on the SynthCC world
SYNTHCLIP = "synthclip"


def clip_weight_sources(cfg: CfgNode) -> dict[str, tuple[str, str, str]]:
    """``{config key: (architecture, value, kind)}`` of the CLIP towers ``cfg.model.name`` builds
    from pretrained weights (``model.pretrained``); kind is 'synthclip' (pretrained here),
    'file' or 'tag' (an open_clip pretrained tag, downloaded). A value that is none of these is
    refused naming the key."""
    if cfg.model.name not in MODEL_PRESETS:
        return {}
    config = csgn_config(cfg, num_cameras=1)  # the towers and weights the model is built with
    sources = {}
    for field, arch in (("vit_weights", config.vit_arch), ("resnet_weights", config.resnet_arch)):
        value = getattr(config, field)
        if not (arch and value):
            continue
        key = f"clip.{field}"
        if value == SYNTHCLIP:
            kind = "synthclip"
        elif os.path.isfile(value):
            kind = "file"
        elif open_clip.get_pretrained_cfg(arch, value):
            kind = "tag"
        else:
            tags = open_clip.list_pretrained_tags_by_model(arch)
            raise ConfigError(
                f"{key} '{value}' is neither an existing file nor a pretrained tag of '{arch}' "
                f"(tags: {', '.join(tags) or 'none'}): give a weight file or a tag, or set "
                "model.pretrained False for random towers"
            )
        sources[key] = (arch, value, kind)
    return sources


def synthclip_towers(cfg: CfgNode) -> dict[str, str]:
    """``{tower: weights key}`` of the towers the model takes from SynthCLIP: those whose weights
    are 'synthclip' and that ``cfg.model.name`` builds (with ``model.pretrained``)."""
    tower_of = {"clip.vit_weights": "vit", "clip.resnet_weights": "rn"}
    return {
        tower_of[key]: key.split(".")[1]
        for key, (_, _, kind) in clip_weight_sources(cfg).items()
        if kind == "synthclip"
    }


def resolve_synthclip(cfg: CfgNode) -> tuple[CfgNode, dict[str, str]]:
    """``cfg`` with every 'synthclip' weight replaced by its cached file under ``data.root``
    (pretrained there on first use: corpus, then one process per tower); returns the new config
    and ``{config key: file}``."""
    towers = synthclip_towers(cfg)
    if not towers:
        return cfg, {}
    paths = ensure_synthclip_towers(cfg.data.root, towers=tuple(towers))
    new = cfg.clone()
    new.defrost()
    resolved = {}
    for tower, weights_key in towers.items():
        new.clip[weights_key] = paths[tower]
        resolved[f"clip.{weights_key}"] = paths[tower]
    new.freeze()
    return new, resolved


def is_torchreid_model(name: str) -> bool:
    """Whether ``model.name`` is one of torchreid's own models (not one the plugin registers)."""
    factory = model_factory()
    return name in factory and factory[name].__module__.startswith("torchreid")


def describe_pretrained(cfg: CfgNode) -> str:
    """What ``model.pretrained`` means for ``cfg.model.name``: the weights it starts from."""
    name = cfg.model.name
    if name in MODEL_PRESETS:
        kinds = {"synthclip": "pretrained here", "file": "a file", "tag": "downloaded by open_clip"}
        sources = clip_weight_sources(cfg)
        towers = [f"{key} '{value}' ({kinds[kind]})" for key, (_, value, kind) in sources.items()]
        start = ", ".join(towers) or "random CLIP towers"
        return f"=> model.pretrained {cfg.model.pretrained}: '{name}' starts from {start}"
    if is_torchreid_model(name) and cfg.model.pretrained:
        return (
            f"=> model.pretrained True: torchreid's model '{name}' starts from its ImageNet "
            "weights (downloaded on first use into torchreid's cache; set model.pretrained False "
            "for random weights)"
        )
    if name in CAL_MODELS and cfg.model.pretrained:
        return (
            f"=> model.pretrained True: CAL's '{name}' starts from its backbone's ImageNet weights "
            "(downloaded on first use into torchvision's or torchreid's cache; set "
            "model.pretrained False for random weights)"
        )
    return f"=> model.pretrained {cfg.model.pretrained}: '{name}' as its factory builds it"


@contextlib.contextmanager
def _download(what: str, instead: str) -> Iterator[None]:
    """One clear error, naming the key that avoids it, for a download that fails."""
    try:
        yield
    except (OSError, gdown.exceptions.FileURLRetrievalError) as exc:
        if isinstance(exc, UserError):
            raise
        reason = f"{type(exc).__name__}: {exc}"
        reason = reason if len(reason) <= 200 else reason[:200] + " ..."
        raise WeightsDownloadError(
            f"{what} could not be downloaded ({reason}); connect to the network and run again, "
            f"or set {instead}"
        ) from exc


def resolve_weights(cfg: CfgNode) -> tuple[CfgNode, list[str]]:
    """Every pretrained weight the model will read, made local before any data is read:
    SynthCLIP towers pretrained into ``data.root`` (cached), open_clip tags, torchreid's and the
    CAL backbones' ImageNet weights downloaded into their caches. Returns the config (SynthCLIP
    resolved to its files) and what was done, as log lines; a failed download raises
    :class:`~csgn_plugin.errors.WeightsDownloadError` naming the key that avoids it."""
    cfg, resolved = resolve_synthclip(cfg)
    lines = [f"=> {key}: SynthCLIP weights '{path}'" for key, path in resolved.items()]
    for key, (arch, value, kind) in clip_weight_sources(cfg).items():
        if kind == "tag":
            avoid = f"{key} to a local weight file, or model.pretrained False for random towers"
            with _download(f"{key} '{value}' (open_clip's weights of '{arch}')", avoid):
                path = open_clip.pretrained.download_pretrained(
                    open_clip.get_pretrained_cfg(arch, value)
                )
            lines.append(f"=> {key}: '{value}' weights of {arch} at '{path}'")
    if cfg.model.pretrained and is_torchreid_model(cfg.model.name):
        what = f"the ImageNet weights of torchreid's '{cfg.model.name}' (model.pretrained True)"
        with _download(what, "model.pretrained False to start from random weights"):
            # torchreid's factories download while building: one throwaway build caches them
            torchreid_api().models.build_model(
                name=cfg.model.name, num_classes=1, loss=cfg.loss.name, pretrained=True
            )
        lines.append(f"=> {what}: in torchreid's cache")
    if cfg.model.pretrained and cfg.model.name in CAL_MODELS:
        what = f"the ImageNet weights of the backbone of '{cfg.model.name}' (model.pretrained True)"
        with _download(what, "model.pretrained False to start from random weights"):
            CALModel(cfg.model.name, 1, "linear", pretrained=True)  # a throwaway build caches them
        lines.append(f"=> {what}: in the cache")
    return cfg, lines


def probe_config(cfg: CfgNode) -> CfgNode:
    """``cfg`` for a model built only to check it: nothing is downloaded or pretrained (torchreid
    models without their ImageNet weights, CLIP towers random where their weights are a tag or
    SynthCLIP); weight files are read."""
    new = cfg.clone()
    new.defrost()
    if cfg.model.name in MODEL_PRESETS:
        for key, (_, _, kind) in clip_weight_sources(cfg).items():
            if kind != "file":
                new.clip[key.split(".")[1]] = ""
    else:
        new.model.pretrained = False
    new.freeze()
    return new


def probe_model(cfg: CfgNode) -> nn.Module:
    """The model ``cfg`` describes, built on the CPU as :func:`probe_config` says (two classes,
    one camera): its constructor checks every option of its family, before any work."""
    stand_in = SimpleNamespace(num_train_pids=2, num_train_cams=1)
    return build_model(probe_config(cfg), stand_in, use_gpu=False)


def build_clip_model(cfg: CfgNode, num_classes: int, num_cameras: int = 0) -> CSGN:
    """The CLIP model ``cfg.model.name`` (csgn, clipreid_*) as the config describes it."""
    return CSGN(csgn_config(cfg, num_cameras), num_classes)


def build_model(cfg: CfgNode, datamanager: Any, use_gpu: bool) -> nn.Module:
    """The plugin's models from their config sections; torchreid's models by name."""
    if cfg.model.name in MODEL_PRESETS:
        try:
            model = build_clip_model(cfg, datamanager.num_train_pids, datamanager.num_train_cams)
        except ValueError as exc:  # say which config built the model that refused it
            raise ConfigError(
                f"model.name '{cfg.model.name}' at data.height x data.width = "
                f"{cfg.data.height}x{cfg.data.width}: {exc}"
            ) from exc
        model.set_stage(2)  # the optimizer built next holds the stage-2 parameters
        return model
    if cfg.model.name in CAL_MODELS:
        return CALModel(
            cfg.model.name,
            datamanager.num_train_pids,
            cal_identity_classifier(cfg),
            cfg.model.pretrained,
        )
    factory = model_factory()
    if cfg.model.name not in factory:
        raise ConfigError(
            f"model.name: unknown model '{cfg.model.name}'; available: {sorted(factory)}"
        )
    return torchreid_api().models.build_model(
        name=cfg.model.name,
        num_classes=datamanager.num_train_pids,
        loss=cfg.loss.name,
        pretrained=cfg.model.pretrained,
        use_gpu=use_gpu,
    )


def model_input(cfg: CfgNode) -> dict:
    """The ``input`` of a model spec: what evaluation feeds the model
    (``data.height/width/norm_mean/norm_std/test_interpolation``)."""
    return input_spec(
        int(cfg.data.height),
        int(cfg.data.width),
        [float(v) for v in cfg.data.norm_mean],
        [float(v) for v in cfg.data.norm_std],
        cfg.data.test_interpolation,
    )


def model_spec(cfg: CfgNode, model: nn.Module, num_classes: int) -> dict:
    """What a checkpoint records to rebuild ``model`` without this config."""
    net = unwrap_model(model)
    spec = model_spec_for(cfg.model.name, net, model_input(cfg), cfg.loss.name, num_classes)
    return spec.to_dict()


# how a model's features are compared: an evaluation takes these from the config the checkpoint
# was trained with (training's own numbers then reproduce), unless the command line sets them
EVALUATION_KEYS = (
    "test.dist_metric",
    "test.normalize_feature",
    "test.rerank",
    "video.pooling_method",
)


def config_for_checkpoint(
    cfg: CfgNode, spec: Optional[ModelSpec], trained_config: str, given: Collection[str]
) -> tuple[CfgNode, list[str]]:
    """``cfg`` for evaluating a checkpoint: the model name and input (size, normalisation) its
    spec records, and the :data:`EVALUATION_KEYS` of the config it was trained with
    (``trained_config``, a YAML dump; ``''``: not recorded) except those in ``given`` (the keys set
    on the command line). Returns the new config and one line per value that differs from
    ``cfg``'s, saying where the value in use comes from."""
    values: dict[str, tuple[Any, str]] = {}
    if spec is not None:
        recorded = {
            "model.name": spec.name,
            "data.height": spec.input["height"],
            "data.width": spec.input["width"],
            "data.norm_mean": list(spec.input["norm_mean"]),
            "data.norm_std": list(spec.input["norm_std"]),
            "data.test_interpolation": spec.input["interpolation"],
        }
        values.update({key: (value, "the checkpoint's model") for key, value in recorded.items()})
    trained = yaml.safe_load(trained_config) if trained_config else None
    lines = []
    for key in EVALUATION_KEYS if isinstance(trained, dict) else ():
        section, leaf = key.split(".")
        if leaf not in trained.get(section, {}):
            continue
        value = trained[section][leaf]
        if key not in given:
            values[key] = (value, "the checkpoint's training config")
        elif value != cfg[section][leaf]:
            lines.append(
                f"{key}: {cfg[section][leaf]!r} (command line; the checkpoint was trained with "
                f"{value!r})"
            )
    new = cfg.clone()
    new.defrost()
    for key, (value, source) in values.items():
        section, leaf = key.split(".")
        if new[section][leaf] != value:
            lines.append(f"{key}: {new[section][leaf]!r} -> {value!r} ({source})")
            new[section][leaf] = value
    new.freeze()
    return new, lines


def _lr_factor(cfg: CfgNode, model: nn.Module, name: str) -> float:
    """``train.lr`` multiplier of one parameter: torchreid's staged lr (``new_layers`` at 1,
    the rest at ``base_lr_mult``), the CLIP models' per-part factors (``csgn.<part>_lr_factor``)
    and ``train.bias_lr_factor`` for biases (any parameter whose own name contains 'bias',
    CLIP-ReID's rule, so attention ``in_proj_bias`` counts too)."""
    factor = 1.0
    if cfg.train.staged_lr and name.split(".")[0] not in cfg.train.new_layers:
        factor *= cfg.train.base_lr_mult
    part = model.parameter_part(name) if hasattr(model, "parameter_part") else None
    if part is not None:
        factor *= cfg.csgn[f"{part}_lr_factor"]
    if "bias" in name.rsplit(".", 1)[-1]:
        factor *= cfg.train.bias_lr_factor
    return factor


def param_groups(cfg: CfgNode, model: nn.Module) -> list[dict]:
    """One group per learning rate; every trainable parameter in exactly one group; the group at
    ``train.lr`` first (the engine logs the first group's lr)."""
    model = unwrap_model(model)
    if cfg.train.staged_lr:
        children = {name for name, _ in model.named_children()}
        unknown = [layer for layer in cfg.train.new_layers if layer not in children]
        if unknown:
            raise ConfigError(
                f"train.new_layers {unknown} are not top-level modules of '{cfg.model.name}' "
                f"(it has {sorted(children)})"
            )
    groups: dict[float, list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups.setdefault(_lr_factor(cfg, model, name), []).append(param)
    order = sorted(groups, key=lambda f: (f != 1.0, f))
    return [{"params": groups[f], "lr": cfg.train.lr * f} for f in order]


def build_optimizer(cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
    """``train.optim``: torchreid's names with torchreid's meanings ('amsgrad' = Adam with
    amsgrad, 'rmsprop' takes ``sgd.momentum`` and ``rmsprop.alpha``), plus 'adamw'."""
    groups = param_groups(cfg, model)
    if not groups:
        raise ValueError(f"model '{cfg.model.name}' has no trainable parameter")
    return _optimizer(cfg, groups)


def build_auxiliary_optimizers(
    cfg: CfgNode, objective: Objective
) -> dict[str, torch.optim.Optimizer]:
    """One optimizer per auxiliary loss of the objective, of the model optimizer's kind, lr and
    weight decay (Simple-CCReID's clothes optimizer, ``main.py``), one group, no scheduler."""
    return {
        name: _optimizer(cfg, [{"params": params, "lr": cfg.train.lr}])
        for name, params in objective.auxiliary_parameters().items()
    }


def _optimizer(cfg: CfgNode, groups: list[dict]) -> torch.optim.Optimizer:
    name, wd = cfg.train.optim, cfg.train.weight_decay
    # one kernel over all tensors, on a CPU too (torch >= 2.4): the per-tensor loop showed in
    # the CPU profile of a csgn step
    fused = {"fused": True}
    betas = (cfg.adam.beta1, cfg.adam.beta2)
    if name in ("adam", "amsgrad"):
        return torch.optim.Adam(
            groups,
            lr=cfg.train.lr,
            weight_decay=wd,
            betas=betas,
            amsgrad=name == "amsgrad",
            **fused,
        )
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.train.lr, weight_decay=wd, betas=betas, **fused)
    if name == "sgd":
        return torch.optim.SGD(
            groups,
            lr=cfg.train.lr,
            weight_decay=wd,
            momentum=cfg.sgd.momentum,
            dampening=cfg.sgd.dampening,
            nesterov=cfg.sgd.nesterov,
            **fused,
        )
    if name == "rmsprop":
        return torch.optim.RMSprop(
            groups,
            lr=cfg.train.lr,
            weight_decay=wd,
            momentum=cfg.sgd.momentum,
            alpha=cfg.rmsprop.alpha,
        )
    raise ConfigError(f"train.optim must be one of {OPTIMIZERS}, got '{name}'")


# ---------------------------------------------------------------------- mappers
def epoch_schedule(cfg: CfgNode) -> EpochSchedule:
    t = cfg.train
    return EpochSchedule(
        kind=t.lr_scheduler,
        max_epoch=t.max_epoch,
        stepsize=tuple(t.stepsize),
        gamma=t.gamma,
        warmup_epochs=t.warmup_epochs,
        warmup_factor=t.warmup_factor,
        step_at=t.step_scheduler_at,
    )


def prompt_schedule(cfg: CfgNode) -> PromptSchedule:
    s = cfg.stage1
    return PromptSchedule(
        lr=s.lr,
        max_epoch=s.max_epoch,
        warmup_epochs=s.warmup_epochs,
        warmup_lr=s.warmup_lr,
        lr_min=s.lr_min,
    )


def prompt_stage_options(cfg: CfgNode) -> PromptStageOptions:
    s = cfg.stage1
    return PromptStageOptions(
        schedule=prompt_schedule(cfg),
        weight_decay=s.weight_decay,
        batch_size=s.batch_size,
        feature_batch_size=cfg.test.batch_size,
        cross_modal_weight=s.cross_modal_weight,
        print_freq=s.print_freq,
        seed=cfg.train.seed,
    )


def label_smoothing(cfg: CfgNode) -> float:
    """torchreid's ``loss.softmax.label_smooth`` switch: epsilon 0.1 when on."""
    return 0.1 if cfg.loss.softmax.label_smooth else 0.0


def evaluation_options(cfg: CfgNode) -> EvaluationOptions:
    return EvaluationOptions(
        protocols=tuple(cfg.cc_eval.protocols),
        dist_metric=cfg.test.dist_metric,
        normalize_feature=cfg.test.normalize_feature,
        rerank=cfg.test.rerank,
        ranks=tuple(cfg.test.ranks),
        visrank_topk=cfg.test.visrank_topk,
        single_shot=cfg.cc_eval.single_shot,
        single_shot_trials=cfg.cc_eval.single_shot_trials,
        single_shot_seed=cfg.cc_eval.single_shot_seed,
        max_rank=cfg.cc_eval.max_rank,
        chunk_size=cfg.cc_eval.chunk_size,
        pooling=cfg.video.pooling_method,
        best_metric=cfg.cc_eval.best_metric,
    )


def loop_options(cfg: CfgNode) -> LoopOptions:
    return LoopOptions(
        checkpoint_period=cfg.runtime.checkpoint_period,
        checkpoint_iters=cfg.runtime.checkpoint_iters,
        nan_policy=cfg.runtime.nan_policy,
        plot=cfg.runtime.plot,
    )


# ---------------------------------------------------------------------- the pieces
def build_scheduler(cfg: CfgNode, optimizer: torch.optim.Optimizer) -> Any:
    return build_epoch_scheduler(optimizer, epoch_schedule(cfg))


def build_objective(cfg: CfgNode, model: nn.Module, datamanager: Any) -> Objective:
    """The loss recipe the model asks for, with the configured values (CAL's also with the
    training split's outfits of every identity)."""
    net = unwrap_model(model)
    recipe = recipe_of(net)
    if recipe == "clip_reid":
        return CLIPReIDObjective(
            id_weight=cfg.loss.clip.id_weight,
            triplet_weight=cfg.loss.clip.triplet_weight,
            label_smoothing=label_smoothing(cfg),
            margin=cfg.loss.triplet.margin,
            hsf_weights={"rgb": cfg.loss.hsf.rgb_weight, "gray": cfg.loss.hsf.gray_weight},
        )
    if recipe == "cal":
        outfits = datamanager.identity_outfits()
        c = cfg.loss.cal
        return CALObjective(
            clothes_classifier=NormalizedClassifier(net.feature_dim, outfits.shape[1]),
            positive_outfits=outfits,
            id_loss=c.id_loss,
            label_smoothing=label_smoothing(cfg),
            scale=c.scale,
            id_margin=c.id_margin,
            pair_weight=c.pair_weight,
            pair_margin=c.pair_margin,
            epsilon=c.epsilon,
            start_epoch_cc=c.start_epoch_cc,
            start_epoch_adv=c.start_epoch_adv,
        )
    return TorchreidObjective(
        name=cfg.loss.name,
        label_smoothing=label_smoothing(cfg),
        margin=cfg.loss.triplet.margin,
        weight_x=cfg.loss.triplet.weight_x,
        weight_t=cfg.loss.triplet.weight_t,
    )


def build_stages(cfg: CfgNode, model: nn.Module, objective: Objective) -> list[Stage]:
    """The stages the model asks for: the prompt stage feeds its text bank to the objective."""
    stages: list[Stage] = []
    for name in stages_for(unwrap_model(model)):
        if name != "prompt":
            raise ValueError(f"model '{cfg.model.name}' asks for an unknown stage '{name}'")
        if not isinstance(objective, CLIPReIDObjective):
            raise ValueError("the prompt stage feeds a CLIP-ReID objective's text bank")
        stages.append(PromptStage(prompt_stage_options(cfg), objective.set_text_bank))
    return stages


def build_runtime(cfg: CfgNode, use_gpu: bool, rank: int = 0, world_size: int = 1) -> Runtime:
    if use_gpu:
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    return Runtime(
        device=device,
        amp=resolve_amp(cfg, use_gpu),
        channels_last=cfg.runtime.channels_last == "on",  # 'auto': checks.resolve_channels_last
        rank=rank,
        world_size=world_size,
        image_size=(cfg.data.height, cfg.data.width),
    )


def accelerate(cfg: CfgNode, model: nn.Module, runtime: Runtime, datamanager: Any) -> nn.Module:
    """The model the engine steps, as ``runtime.compile`` resolves for this run (its stage-2 steps
    counted from the sampler's first epoch): wrapped for CUDA graphs (``runtime.graphs``, which
    the prompt stage's text passes follow), ``torch.compile``'d, or as it is."""
    sampler = getattr(datamanager, "train_sampler", None)
    steps = 0 if sampler is None else sampler.num_batches(0) * cfg.train.max_epoch
    cuda = runtime.device.type == "cuda"
    mode = resolve_compile(cfg, cuda, runtime.world_size, steps)
    layout = "NHWC" if runtime.channels_last else "NCHW"
    what = {"off": "eager", "graphs": "CUDA graphs of the static-shape passes"}
    runtime.log(
        f"=> Steps: {what.get(mode, f'torch.compile mode {mode!r}')}, {layout} "
        f"(runtime.compile '{cfg.runtime.compile}', runtime.channels_last "
        f"'{cfg.runtime.channels_last}')"
    )
    if mode == "graphs":
        runtime.graphs = True
        return runtime.graphed(model, "stage2")
    if mode != "off":
        return torch.compile(model, mode=mode)
    return model


def build_engine(
    cfg: CfgNode,
    datamanager: Any,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    runtime: Runtime,
    spec: Optional[dict] = None,
    evaluated: Optional[dict] = None,
) -> CCEngine:
    """The engine and what it receives; ``spec`` (:func:`model_spec`) goes into every
    checkpoint; ``evaluated`` (evaluation only) says which model is evaluated
    (:class:`~csgn_plugin.evaluation.evaluator.Evaluator`)."""
    objective = build_objective(cfg, model, datamanager).to(runtime.device)
    for _, images, seconds in getattr(datamanager, "cache_timings", ()):
        runtime.throughput.count("data_decode_img", images, seconds)
    return CCEngine(
        datamanager,
        model,
        optimizer,
        scheduler,
        objective=objective,
        runtime=runtime,
        evaluator=Evaluator(runtime, datamanager, evaluation_options(cfg), evaluated),
        options=loop_options(cfg),
        stages=build_stages(cfg, model, objective),
        model_spec=spec,
        config_dump=cfg.dump(),
        auxiliary_optimizers=build_auxiliary_optimizers(cfg, objective),
    )


def engine_run_kwargs(cfg: CfgNode) -> dict:
    """torchreid's ``Engine.run`` arguments of the loop (the evaluation ones are the
    evaluator's options)."""
    return {
        "save_dir": cfg.data.save_dir,
        "max_epoch": cfg.train.max_epoch,
        "start_epoch": cfg.train.start_epoch,
        "fixbase_epoch": cfg.train.fixbase_epoch,
        "open_layers": cfg.train.open_layers,
        "start_eval": cfg.test.start_eval,
        "eval_freq": cfg.test.eval_freq,
        "test_only": cfg.test.evaluate,
        "print_freq": cfg.train.print_freq,
        "visrank": cfg.test.visrank,
    }
