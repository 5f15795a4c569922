"""The one validator: a config is refused, with the key and what was expected, before any work.

:func:`check_config` runs before data is read or a model built (the first step of
``preflight.check_run``): unknown names (with a did-you-mean), out-of-range values, incompatible
options, and torchreid keys the plugin does not implement set to anything but their default
(they would be silently ignored); an evaluation only for what it uses. Every refusal is a
:class:`~csgn_plugin.errors.ConfigError`. :func:`check_input_size` (on the pre-flight's model
probe) and :func:`check_data` (on the data manager) check what needs a model or the data.
:func:`describe_model_choice` says, when ``model.name`` is a torchreid model, which sections no
longer apply and which loss it trains with.
"""

from __future__ import annotations

import difflib
from typing import Any

import torch
from torch import nn
from yacs.config import CfgNode

from .compat import model_factory, torchreid_api
from .config import ConfigError, get_default_config
from .data.base import IMAGE_POLICIES
from .data.image_cache import CACHE_MODES
from .data.samplers import IDENTITY_SAMPLERS, SAMPLERS
from .data.transforms import check_interpolation, check_transform_names
from .engine.engine import unwrap_model
from .engine.schedules import SCHEDULERS, STEP_AT
from .evaluation import MODES
from .evaluation.distance import METRICS
from .evaluation.evaluator import call_model
from .losses.objective import CAL_ID_LOSSES
from .modeling import CAL_MODELS, MODEL_PRESETS
from .runtime import CPU_KERNELS

__all__ = [
    "CAL_SECTIONS",
    "CLIP_SECTIONS",
    "OPTIMIZERS",
    "UNSUPPORTED_KEYS",
    "check_config",
    "check_cpu_numerics",
    "check_data",
    "check_input_size",
    "describe_model_choice",
    "resolve_amp",
    "resolve_channels_last",
    "resolve_compile",
    "resolve_device",
]

# torchreid keys kept so that torchreid's config files load, which the plugin does not implement:
# any value but the default is refused (it would change nothing).
UNSUPPORTED_KEYS = {
    "data.split_id": "split ids of CUHK03/VIPeR/GRID",
    "data.k_tfm": "K augmented views per image (torchreid's k_tfm)",
    "data.load_train_targets": "training on the target datasets' training sets",
    "market1501.use_500k_distractors": "Market-1501's 500k distractors",
    "cuhk03.labeled_images": "CUHK03's labelled images",
    "cuhk03.classic_split": "CUHK03's classic split",
    "cuhk03.use_metric_cuhk03": "CUHK03's single-gallery-shot metric",
    "sampler.train_sampler_t": "a sampler for the target training sets",
    "sampler.num_cams": "RandomDomainSampler",
    "sampler.num_datasets": "RandomDatasetSampler",
}
# runtime.compile: 'auto', eager, CUDA graphs of the eager passes, or a torch.compile mode
COMPILE_MODES = (
    "auto",
    "off",
    "graphs",
    "default",
    "reduce-overhead",
    "max-autotune",
    "max-autotune-no-cudagraphs",
)
# 'auto' graphs runs of at least this many stage-2 steps: a capture costs about four steps
MIN_GRAPHED_STEPS = 50
# train.optim: torchreid's names with torchreid's meanings, plus AdamW
OPTIMIZERS = ("adam", "amsgrad", "adamw", "sgd", "rmsprop")
# sections that only the plugin's CLIP models (csgn, clipreid_*) read
CLIP_SECTIONS = ("clip", "csgn", "stage1", "loss.clip", "loss.hsf")
# ... and that only the CAL models (cal_*) read
CAL_SECTIONS = ("loss.cal",)


def _get(cfg: CfgNode, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = cfg[part]
    return cfg


def _did_you_mean(value: Any, allowed: Any) -> str:
    close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def _choice(key: str, value: Any, allowed: Any) -> None:
    if value not in allowed:
        hint = _did_you_mean(value, allowed)
        raise ConfigError(f"{key} must be one of {sorted(allowed)}, got '{value}'{hint}")


def _at_least(key: str, value: Any, low: int | float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
        raise ConfigError(f"{key} must be a number >= {low}, got {value!r}")


def _at_least_each(cfg: CfgNode, lows: dict[str, float]) -> None:
    """:func:`_at_least` for each ``{key: lowest value}``."""
    for key, low in lows.items():
        _at_least(key, _get(cfg, key), low)


def resolve_device(cfg: CfgNode) -> bool:
    """``runtime.device`` -> use CUDA or not."""
    device = cfg.runtime.device
    _choice("runtime.device", device, ("auto", "cuda", "cpu"))
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "runtime.device is 'cuda' but no CUDA device is available: set runtime.device 'cpu' "
            "(or 'auto')"
        )
    return device == "cuda" or (device == "auto" and torch.cuda.is_available())


def resolve_amp(cfg: CfgNode, use_gpu: bool) -> str:
    """``runtime.amp`` -> 'bf16', 'fp16' or 'off' ('auto': bf16 on CUDA, off on CPU)."""
    amp = cfg.runtime.amp
    _choice("runtime.amp", amp, ("auto", "bf16", "fp16", "off"))
    if amp == "auto":
        return "bf16" if use_gpu else "off"
    if amp == "fp16" and not use_gpu:
        raise ConfigError("runtime.amp 'fp16' needs CUDA (its gradient scaler); use 'bf16' on CPU")
    return amp


def resolve_channels_last(cfg: CfgNode, model: nn.Module, use_gpu: bool) -> bool:
    """``runtime.channels_last`` -> NHWC or not ('auto': on CUDA, for a model with a
    convolutional tower - more than one convolution: a ViT's patch embedding alone is not)."""
    value = cfg.runtime.channels_last
    _choice("runtime.channels_last", value, ("auto", "on", "off"))
    if value == "auto":
        convolutions = sum(isinstance(m, nn.Conv2d) for m in unwrap_model(model).modules())
        return use_gpu and convolutions > 1
    return value == "on"


def resolve_compile(cfg: CfgNode, use_gpu: bool, world_size: int, steps: int) -> str:
    """``runtime.compile`` -> 'off', 'graphs' or a torch.compile mode. 'auto': CUDA graphs on
    CUDA in a single process for runs of at least ``MIN_GRAPHED_STEPS`` stage-2 steps (``steps``),
    eager otherwise (a CPU, DDP, short runs, evaluation alone)."""
    value = cfg.runtime.compile
    _choice("runtime.compile", value, COMPILE_MODES)
    if value == "auto":
        fits = use_gpu and world_size == 1 and steps >= MIN_GRAPHED_STEPS
        return "graphs" if fits else "off"
    if value == "graphs" and not use_gpu:
        raise ConfigError("runtime.compile 'graphs' needs CUDA; use 'auto' or 'off' on a CPU")
    if value == "graphs" and world_size > 1:
        raise ConfigError(
            "runtime.compile 'graphs' runs in a single process; with torchrun use 'auto' (eager) "
            "or a torch.compile mode"
        )
    return value


def is_clip_model(name: str) -> bool:
    """Whether ``model.name`` is one of the plugin's CLIP models (they read ``CLIP_SECTIONS``)."""
    return name in MODEL_PRESETS


def is_cal_model(name: str) -> bool:
    """Whether ``model.name`` is a CAL model (they read ``CAL_SECTIONS``)."""
    return name in CAL_MODELS


def _check_cal(cfg: CfgNode) -> None:
    c = cfg.loss.cal
    _choice("loss.cal.id_loss", c.id_loss, CAL_ID_LOSSES)
    if c.id_loss == "cosface" and cfg.loss.softmax.label_smooth:
        raise ConfigError(
            "loss.cal.id_loss 'cosface' has no label smoothing (Simple-CCReID's CosFaceLoss): set "
            "loss.softmax.label_smooth False"
        )
    keys = ("id_margin", "pair_weight", "pair_margin", "start_epoch_cc", "start_epoch_adv")
    _at_least_each(cfg, {f"loss.cal.{key}": 0 for key in keys})
    if isinstance(c.scale, bool) or not isinstance(c.scale, (int, float)) or c.scale <= 0:
        raise ConfigError(f"loss.cal.scale must be a number > 0, got {c.scale!r}")
    if isinstance(c.epsilon, bool) or not 0 <= c.epsilon <= 1:
        raise ConfigError(f"loss.cal.epsilon must be in [0, 1], got {c.epsilon!r}")


def _check_unsupported(cfg: CfgNode) -> None:
    defaults = get_default_config()
    for key, what in UNSUPPORTED_KEYS.items():
        if _get(cfg, key) != _get(defaults, key):
            raise ConfigError(
                f"{key} = {_get(cfg, key)!r}: torchreid's option for {what} is not implemented "
                f"by csgn_plugin (it would be ignored); leave it at {_get(defaults, key)!r}"
            )


def check_cpu_numerics(cfg: CfgNode) -> None:
    """``runtime.cpu_kernels`` and ``runtime.cpu_threads`` alone: a run fixes them before
    anything computes, the preflight included (the kernel set is chosen once per process)."""
    _choice("runtime.cpu_kernels", cfg.runtime.cpu_kernels, CPU_KERNELS)
    _at_least("runtime.cpu_threads", cfg.runtime.cpu_threads, 0)


def check_config(cfg: CfgNode, world_size: int = 1) -> None:
    """Refuse unknown names, out-of-range values and incompatible options before any work starts
    (no data is read, no model built). ``world_size``: the number of DDP processes.

    An evaluation (``test.evaluate``) is refused only for what it uses: the training options
    (``train``, ``stage1``, ``sampler``, the loss and checkpoint settings) are not checked."""
    _check_unsupported(cfg)
    _check_names(cfg)
    _check_evaluation(cfg)
    if not cfg.test.evaluate:
        _check_training(cfg, world_size)


def _check_names(cfg: CfgNode) -> None:
    """Datasets, model, data options and runtime: what training and evaluation both use."""
    tr = torchreid_api()
    _choice("data.type", cfg.data.type, ("image", "video"))
    _choice("data.cache", cfg.data.cache, CACHE_MODES)
    registry = vars(tr.data.datasets)[f"__{cfg.data.type}_datasets"]
    for key in ("sources", "targets"):
        for name in cfg.data[key]:
            if name not in registry:
                raise ConfigError(
                    f"data.{key}: unknown {cfg.data.type} dataset '{name}'"
                    f"{_did_you_mean(name, registry)} Available: {sorted(registry)}"
                )
    factory = model_factory()
    if cfg.model.name not in factory:
        raise ConfigError(
            f"model.name: unknown model '{cfg.model.name}'"
            f"{_did_you_mean(cfg.model.name, factory)} Available: {sorted(factory)}"
        )
    check_transform_names(cfg.data.transforms)
    check_interpolation("data.train_interpolation", cfg.data.train_interpolation)
    check_interpolation("data.test_interpolation", cfg.data.test_interpolation)
    _choice("runtime.device", cfg.runtime.device, ("auto", "cuda", "cpu"))
    _choice("runtime.amp", cfg.runtime.amp, ("auto", "bf16", "fp16", "off"))
    _choice("runtime.compile", cfg.runtime.compile, COMPILE_MODES)
    _choice("runtime.channels_last", cfg.runtime.channels_last, ("auto", "on", "off"))
    check_cpu_numerics(cfg)
    _choice("cc_data.image_policy", cfg.cc_data.image_policy, IMAGE_POLICIES)
    _at_least_each(
        cfg,
        {
            "data.height": 1,
            "data.width": 1,
            "data.workers": 0,
            "data.pad_crop_padding": 0,
            "data.cache_device_gb": 0,
            "data.cache_host_gb": 0,
            "runtime.dist_timeout_s": 1,
        },
    )
    for weights_key, arch_key, tower in (
        ("vit_weights", "vit_arch", "synthclip-vit"),
        ("resnet_weights", "resnet_arch", "synthclip-rn"),
    ):
        synthclip = cfg.model.pretrained and cfg.clip[weights_key] == "synthclip"
        if synthclip and cfg.clip[arch_key] != tower:
            raise ConfigError(
                f"clip.{weights_key} 'synthclip' is pretrained for clip.{arch_key} '{tower}', "
                f"not '{cfg.clip[arch_key]}'"
            )
    if cfg.data.type == "video" and cfg.cc_data.image_policy != "fail":
        raise ConfigError(
            "cc_data.image_policy 'skip' works on image datasets only; video frames that cannot "
            "be read always fail naming the file (set cc_data.image_policy 'fail')"
        )


def _check_evaluation(cfg: CfgNode) -> None:
    """The ``test`` and ``cc_eval`` keys an evaluation reads."""
    _choice("test.dist_metric", cfg.test.dist_metric, METRICS)
    _choice("video.pooling_method", cfg.video.pooling_method, ("avg", "max"))
    protocols = list(cfg.cc_eval.protocols)
    if protocols != ["auto"]:
        for protocol in protocols:
            _choice("cc_eval.protocols", protocol, MODES)
    _at_least_each(
        cfg,
        {
            "test.batch_size": 1,
            "cc_eval.chunk_size": 1,
            "cc_eval.max_rank": 1,
        },
    )


def _check_training(cfg: CfgNode, world_size: int) -> None:
    """What only training reads: loss, sampler, optimizer, schedules, checkpoints."""
    _choice("loss.name", cfg.loss.name, ("softmax", "triplet"))
    _choice("sampler.train_sampler", cfg.sampler.train_sampler, SAMPLERS)
    _choice("train.optim", cfg.train.optim, OPTIMIZERS)
    _choice("train.lr_scheduler", cfg.train.lr_scheduler, SCHEDULERS)
    _choice("train.step_scheduler_at", cfg.train.step_scheduler_at, STEP_AT)
    _choice("runtime.nan_policy", cfg.runtime.nan_policy, ("stop", "skip"))
    _at_least_each(
        cfg,
        {
            "train.batch_size": 1,
            "train.max_epoch": 0,
            "train.print_freq": 1,
            "train.lr": 0,
            "train.warmup_epochs": 0,
            "train.base_lr_mult": 0,
            "train.bias_lr_factor": 0,
            "sampler.num_instances": 1,
            "stage1.batch_size": 1,
            "stage1.max_epoch": 0,
            "stage1.warmup_epochs": 0,
            "stage1.print_freq": 1,
            "runtime.checkpoint_period": 0,
            "runtime.checkpoint_iters": 0,
            **{f"csgn.{part}_lr_factor": 0 for part in ("vit", "resnet", "fusion", "head")},
        },
    )
    if not 0 < cfg.train.warmup_factor <= 1:
        raise ConfigError(f"train.warmup_factor must be in (0, 1], got {cfg.train.warmup_factor}")
    if not 0 <= cfg.stage1.lr_min <= cfg.stage1.lr:
        raise ConfigError(
            f"stage1.lr_min = {cfg.stage1.lr_min}: expected a value in [0, stage1.lr = "
            f"{cfg.stage1.lr}] (where the stage-1 cosine ends)"
        )
    if not 0 <= cfg.stage1.warmup_lr <= cfg.stage1.lr:
        raise ConfigError(
            f"stage1.warmup_lr = {cfg.stage1.warmup_lr}: expected a value in [0, stage1.lr = "
            f"{cfg.stage1.lr}] (where the stage-1 warm-up starts)"
        )
    if cfg.train.lr_scheduler in ("single_step", "multi_step") and not cfg.train.stepsize:
        raise ConfigError(f"train.lr_scheduler '{cfg.train.lr_scheduler}' needs train.stepsize")
    if is_cal_model(cfg.model.name):
        _check_cal(cfg)
        triplet = ("loss.cal.pair_weight", cfg.loss.cal.pair_weight > 0)
    elif is_clip_model(cfg.model.name):
        triplet = ("loss.clip.triplet_weight", True)
    else:
        triplet = (f"loss.name '{cfg.loss.name}'", cfg.loss.name == "triplet")
    if triplet[1] and cfg.sampler.train_sampler not in IDENTITY_SAMPLERS:
        raise ConfigError(
            f"a triplet loss ({triplet[0]}, model '{cfg.model.name}') needs positives in every "
            f"batch: set sampler.train_sampler to one of {IDENTITY_SAMPLERS} (got "
            f"'{cfg.sampler.train_sampler}')"
        )
    batch, k = cfg.train.batch_size, cfg.sampler.num_instances
    if batch % world_size:
        raise ConfigError(
            f"train.batch_size={batch} must be divisible by the number of processes "
            f"({world_size}): each process takes an equal share"
        )
    if cfg.sampler.train_sampler in IDENTITY_SAMPLERS and (batch // world_size) % k:
        share = f" per process ({batch} / {world_size})" if world_size > 1 else ""
        raise ConfigError(
            f"train.batch_size={batch}{share} must be a multiple of sampler.num_instances={k}: "
            f"an identity sampler fills a batch with whole groups of {k} images per identity"
        )


def describe_model_choice(cfg: CfgNode) -> str:
    """What ``model.name`` trains with, and which sections it ignores."""
    if is_clip_model(cfg.model.name):
        return (
            f"=> Model '{cfg.model.name}' (CLIP): loss.clip, loss.hsf, loss.triplet.margin and "
            "loss.softmax.label_smooth apply; loss.name, loss.triplet.weight_x/weight_t and "
            "loss.cal do not apply"
        )
    if is_cal_model(cfg.model.name):
        return (
            f"=> Model '{cfg.model.name}' (CAL): loss.cal and loss.softmax.label_smooth apply; "
            f"loss.name, loss.triplet and the sections {', '.join(CLIP_SECTIONS)} do not apply"
        )
    defaults = get_default_config()
    sections = CLIP_SECTIONS + CAL_SECTIONS
    changed = [s for s in sections if _get(cfg, s) != _get(defaults, s)]
    note = f" (values set in {', '.join(changed)} are ignored)" if changed else ""
    smooth = 0.1 if cfg.loss.softmax.label_smooth else 0.0
    loss = f"cross-entropy (label smoothing {smooth})"
    if cfg.loss.name == "triplet":
        loss = (
            f"{cfg.loss.triplet.weight_x} x {loss} + {cfg.loss.triplet.weight_t} x batch-hard "
            f"triplet (margin {cfg.loss.triplet.margin})"
        )
    return (
        f"=> Model '{cfg.model.name}' is a torchreid model: loss '{cfg.loss.name}' = {loss}; "
        f"the sections {', '.join(sections)} do not apply{note}"
    )


def check_data(cfg: CfgNode, datamanager: Any) -> None:
    """Refuse a training set the sampler cannot fill one batch from (an epoch would be empty).

    CAL models need clothes ids in the training data (their objective's positive outfits, even
    to evaluate). Identity samplers refuse a batch that needs more identities than the training
    set holds when they are built; fewer images of an id than ``sampler.num_instances`` is fine
    (they repeat)."""
    if is_cal_model(cfg.model.name) and datamanager.num_train_clothes < 1:
        raise ConfigError(
            f"model '{cfg.model.name}' (CAL) needs clothes ids in its training data: "
            f"data.sources {list(cfg.data.sources)} has none (use a clothes-changing dataset)"
        )
    if cfg.test.evaluate:
        return
    sampler = datamanager.train_sampler
    if sampler.num_batches() == 0:
        raise ConfigError(
            f"train.batch_size={cfg.train.batch_size} cannot be filled: the training set holds "
            f"{len(sampler.data_source)} images of {datamanager.num_train_pids} identities, not "
            f"enough for one batch of {cfg.sampler.train_sampler}; lower train.batch_size"
        )


def check_input_size(cfg: CfgNode, model: nn.Module, device: torch.device) -> None:
    """One forward pass of two blank images at ``data.height`` x ``data.width`` (eval mode, no
    gradient, no random numbers drawn): a backbone that cannot take that size fails here, before
    training, with the keys to change, not deep inside the first step."""
    net = unwrap_model(model)
    was_training = net.training
    net.eval()
    imgs = torch.zeros(2, 3, cfg.data.height, cfg.data.width, device=device)
    try:
        with torch.no_grad():
            call_model(net, imgs, torch.zeros(2, dtype=torch.long, device=device))
    except torch.OutOfMemoryError:
        raise
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(
            f"model '{cfg.model.name}' cannot take images of data.height x data.width = "
            f"{cfg.data.height}x{cfg.data.width}: {exc}. Use a larger size (ReID: 256x128)"
        ) from exc
    finally:
        net.train(was_training)
