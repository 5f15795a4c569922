"""Config -> data -> model -> optimizer -> scheduler -> engine, as torchreid's main.py wires it.

The tools (``tools/train.py``, ``tools/test.py``, the benchmarks) call these; the sub-packages
never import this module, so imports keep pointing one way.
"""

from __future__ import annotations

import difflib
import math
from typing import Any

import torch
from torch import nn
from yacs.config import CfgNode

from .compat import model_factory, torchreid_api
from .data.base import IMAGE_POLICIES
from .data.datamanager import ClothesDataManager
from .data.samplers import IDENTITY_SAMPLERS, SAMPLERS
from .data.transforms import check_interpolation, check_transform_names
from .engine.engine import CCEngine, EngineOptions, LossOptions, unwrap_model
from .engine.stages import PromptStageOptions, build_stages
from .modeling import build_model_from_config

tr = torchreid_api()

OPTIMIZERS = ("adam", "amsgrad", "adamw", "sgd", "rmsprop")


def resolve_device(cfg: CfgNode) -> bool:
    """``runtime.device`` -> use CUDA or not."""
    device = cfg.runtime.device
    if device not in ("auto", "cuda", "cpu"):
        raise ValueError(f"runtime.device must be 'auto', 'cuda' or 'cpu', got '{device}'")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("runtime.device is 'cuda' but no CUDA device is available")
    return device == "cuda" or (device == "auto" and torch.cuda.is_available())


def resolve_amp(cfg: CfgNode, use_gpu: bool) -> str:
    """``runtime.amp`` -> 'bf16', 'fp16' or 'off' ('auto': bf16 on CUDA, off on CPU)."""
    amp = cfg.runtime.amp
    if amp not in ("auto", "bf16", "fp16", "off"):
        raise ValueError(f"runtime.amp must be 'auto', 'bf16', 'fp16' or 'off', got '{amp}'")
    if amp == "auto":
        return "bf16" if use_gpu else "off"
    if amp == "fp16" and not use_gpu:
        raise ValueError("runtime.amp 'fp16' needs CUDA (its gradient scaler); use 'bf16' on CPU")
    return amp


def _did_you_mean(value: Any, allowed: Any) -> str:
    close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def _choice(key: str, value: Any, allowed: Any) -> None:
    if value not in allowed:
        hint = _did_you_mean(value, allowed)
        raise ValueError(f"{key} must be one of {sorted(allowed)}, got '{value}'{hint}")


def _at_least(key: str, value: Any, low: int | float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
        raise ValueError(f"{key} must be a number >= {low}, got {value!r}")


def check_config(cfg: CfgNode, world_size: int = 1) -> None:
    """Refuse unknown names, out-of-range values and incompatible options before any work starts
    (no data is read, no model built). ``world_size``: the number of DDP processes."""
    _choice("data.type", cfg.data.type, ("image", "video"))
    registry = vars(tr.data.datasets)[f"__{cfg.data.type}_datasets"]
    for key in ("sources", "targets"):
        for name in cfg.data[key]:
            if name not in registry:
                raise ValueError(
                    f"data.{key}: unknown {cfg.data.type} dataset '{name}'"
                    f"{_did_you_mean(name, registry)} Available: {sorted(registry)}"
                )
    factory = model_factory()
    if cfg.model.name not in factory:
        raise KeyError(
            f"model.name: unknown model '{cfg.model.name}'"
            f"{_did_you_mean(cfg.model.name, factory)} Available: {sorted(factory)}"
        )
    _choice("loss.name", cfg.loss.name, ("softmax", "triplet"))
    _choice("sampler.train_sampler", cfg.sampler.train_sampler, SAMPLERS)
    check_transform_names(cfg.data.transforms)
    check_interpolation("data.train_interpolation", cfg.data.train_interpolation)
    check_interpolation("data.test_interpolation", cfg.data.test_interpolation)
    _choice("train.optim", cfg.train.optim, OPTIMIZERS)
    _choice("train.lr_scheduler", cfg.train.lr_scheduler, ("single_step", "multi_step", "cosine"))
    _choice("runtime.device", cfg.runtime.device, ("auto", "cuda", "cpu"))
    _choice("runtime.amp", cfg.runtime.amp, ("auto", "bf16", "fp16", "off"))
    _choice("runtime.nan_policy", cfg.runtime.nan_policy, ("stop", "skip"))
    _choice("cc_data.image_policy", cfg.cc_data.image_policy, IMAGE_POLICIES)
    for key, value, low in (
        ("train.batch_size", cfg.train.batch_size, 1),
        ("train.max_epoch", cfg.train.max_epoch, 0),
        ("train.print_freq", cfg.train.print_freq, 1),
        ("train.lr", cfg.train.lr, 0),
        ("test.batch_size", cfg.test.batch_size, 1),
        ("sampler.num_instances", cfg.sampler.num_instances, 1),
        ("data.height", cfg.data.height, 1),
        ("data.width", cfg.data.width, 1),
        ("data.workers", cfg.data.workers, 0),
        ("data.pad_crop_padding", cfg.data.pad_crop_padding, 0),
        ("stage1.batch_size", cfg.stage1.batch_size, 1),
        ("stage1.max_epoch", cfg.stage1.max_epoch, 0),
        ("cc_eval.chunk_size", cfg.cc_eval.chunk_size, 1),
        ("runtime.checkpoint_period", cfg.runtime.checkpoint_period, 0),
        ("runtime.checkpoint_iters", cfg.runtime.checkpoint_iters, 0),
        ("runtime.dist_timeout_s", cfg.runtime.dist_timeout_s, 1),
    ):
        _at_least(key, value, low)
    if not 0 <= cfg.stage1.lr_min <= cfg.stage1.lr:
        raise ValueError(
            f"stage1.lr_min = {cfg.stage1.lr_min}: expected a value in [0, stage1.lr = "
            f"{cfg.stage1.lr}] (where the stage-1 cosine ends)"
        )
    if cfg.data.type == "video" and cfg.cc_data.image_policy != "fail":
        raise ValueError(
            "cc_data.image_policy 'skip' works on image datasets only; video frames that cannot "
            "be read always fail naming the file (set cc_data.image_policy 'fail')"
        )
    uses_triplet = (
        cfg.loss.name == "triplet"
        or cfg.model.name in ("csgn",)
        or (cfg.model.name.startswith("clipreid"))
    )
    if uses_triplet and cfg.sampler.train_sampler not in IDENTITY_SAMPLERS:
        raise ValueError(
            f"a triplet loss (loss.name '{cfg.loss.name}', model '{cfg.model.name}') needs "
            f"positives in every batch: set sampler.train_sampler to one of {IDENTITY_SAMPLERS} "
            f"(got '{cfg.sampler.train_sampler}')"
        )
    batch, k = cfg.train.batch_size, cfg.sampler.num_instances
    if batch % world_size:
        raise ValueError(
            f"train.batch_size={batch} must be divisible by the number of processes "
            f"({world_size}): each process takes an equal share"
        )
    if cfg.sampler.train_sampler in IDENTITY_SAMPLERS and (batch // world_size) % k:
        share = f" per process ({batch} / {world_size})" if world_size > 1 else ""
        raise ValueError(
            f"train.batch_size={batch}{share} must be a multiple of sampler.num_instances={k}: "
            f"an identity sampler fills a batch with whole groups of {k} images per identity"
        )


def check_data(cfg: CfgNode, datamanager: Any) -> None:
    """Refuse a training set the sampler cannot fill one batch from (an epoch would be empty).

    Identity samplers refuse a batch that needs more identities than the training set holds
    when they are built; fewer images of an id than ``sampler.num_instances`` is fine (they
    repeat)."""
    if cfg.test.evaluate:
        return
    sampler = datamanager.train_sampler
    if sampler.num_batches() == 0:
        raise ValueError(
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
    forward = net.forward
    takes_camids = "camids" in getattr(forward, "__code__", forward).co_varnames
    try:
        with torch.no_grad():
            if takes_camids:
                net(imgs, torch.zeros(2, dtype=torch.long, device=device))
            else:
                net(imgs)
    except torch.OutOfMemoryError:
        raise
    except (RuntimeError, ValueError) as exc:
        raise ValueError(
            f"model '{cfg.model.name}' cannot take images of data.height x data.width = "
            f"{cfg.data.height}x{cfg.data.width}: {exc}. Use a larger size (ReID: 256x128)"
        ) from exc
    finally:
        net.train(was_training)


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
        train_interpolation=cfg.data.train_interpolation,
        test_interpolation=cfg.data.test_interpolation,
        pad_crop_padding=cfg.data.pad_crop_padding,
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
        seq_len=cfg.video.seq_len,
        sample_method=cfg.video.sample_method,
        dataset_options=dict(cfg.cc_data),
    )


def build_model(cfg: CfgNode, datamanager: Any, use_gpu: bool) -> nn.Module:
    """The plugin's models from their config sections; torchreid's models by name."""
    try:
        model = build_model_from_config(
            cfg, num_classes=datamanager.num_train_pids, num_cameras=datamanager.num_train_cams
        )
    except ValueError as exc:  # say which config built the model that refused it
        raise ValueError(
            f"model.name '{cfg.model.name}' with data.height x data.width = "
            f"{cfg.data.height}x{cfg.data.width}: {exc}"
        ) from exc
    if model is None:
        factory = vars(tr.models)["__model_factory"]
        if cfg.model.name not in factory:
            raise KeyError(
                f"model.name: unknown model '{cfg.model.name}'; available: {sorted(factory)}"
            )
        model = tr.models.build_model(
            name=cfg.model.name,
            num_classes=datamanager.num_train_pids,
            loss=cfg.loss.name,
            pretrained=cfg.model.pretrained,
            use_gpu=use_gpu,
        )
    if hasattr(model, "set_stage"):
        model.set_stage(2)  # the optimizer below holds the stage-2 parameters
    return model


def _param_groups(cfg: CfgNode, model: nn.Module) -> list[dict]:
    """Bias parameters get ``train.bias_lr_factor`` x lr; the rest the base lr; every trainable
    parameter lands in exactly one group. A bias is any parameter whose own name contains
    'bias' (CLIP-ReID's rule), so attention ``in_proj_bias`` counts too."""
    base, bias = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (bias if "bias" in name.rsplit(".", 1)[-1] else base).append(param)
    groups = [{"params": base, "lr": cfg.train.lr}]
    if bias:
        groups.append({"params": bias, "lr": cfg.train.lr * cfg.train.bias_lr_factor})
    return [g for g in groups if g["params"]]


def build_optimizer(cfg: CfgNode, model: nn.Module, use_gpu: bool) -> torch.optim.Optimizer:
    """``train.optim``: torchreid's names with torchreid's meanings ('amsgrad' = Adam with
    amsgrad, 'rmsprop' takes ``sgd.momentum`` and ``rmsprop.alpha``), plus 'adamw'."""
    groups = _param_groups(cfg, model)
    if not groups:
        raise ValueError(f"model '{cfg.model.name}' has no trainable parameter")
    name, wd = cfg.train.optim, cfg.train.weight_decay
    fused = {"fused": True} if use_gpu else {}
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
    raise ValueError(f"train.optim must be one of {OPTIMIZERS}, got '{name}'")


def lr_factor(cfg: CfgNode, epoch: int) -> float:
    """LR multiplier of ``epoch``: linear warm-up, then single/multi-step decay or cosine."""
    t = cfg.train
    if epoch < t.warmup_epochs:
        return t.warmup_factor + (1.0 - t.warmup_factor) * epoch / t.warmup_epochs
    if t.lr_scheduler == "single_step":
        return t.gamma ** int(epoch >= t.stepsize[0])
    if t.lr_scheduler == "multi_step":
        return t.gamma ** sum(epoch >= s for s in t.stepsize)
    if t.lr_scheduler == "cosine":
        progress = (epoch - t.warmup_epochs) / max(1, t.max_epoch - t.warmup_epochs)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(
        f"train.lr_scheduler must be 'single_step', 'multi_step' or 'cosine', got "
        f"'{t.lr_scheduler}'"
    )


def build_scheduler(cfg: CfgNode, optimizer: torch.optim.Optimizer) -> Any:
    lr_factor(cfg, 0)  # validates the scheduler name before training starts
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_factor(cfg, epoch))


def loss_options(cfg: CfgNode) -> LossOptions:
    smooth = 0.1 if cfg.loss.softmax.label_smooth else 0.0
    return LossOptions(
        name=cfg.loss.name,
        label_smooth=smooth,
        margin=cfg.loss.triplet.margin,
        weight_x=cfg.loss.triplet.weight_x,
        weight_t=cfg.loss.triplet.weight_t,
        id_weight=cfg.loss.clip.id_weight,
        triplet_weight=cfg.loss.clip.triplet_weight,
        hsf_weights={"rgb": cfg.loss.hsf.rgb_weight, "gray": cfg.loss.hsf.gray_weight},
    )


def prompt_stage_options(cfg: CfgNode) -> PromptStageOptions:
    s = cfg.stage1
    return PromptStageOptions(
        max_epoch=s.max_epoch,
        lr=s.lr,
        weight_decay=s.weight_decay,
        warmup_epochs=s.warmup_epochs,
        warmup_factor=s.warmup_factor,
        lr_min=s.lr_min,
        batch_size=s.batch_size,
        feature_batch_size=cfg.test.batch_size,
        cross_modal_weight=s.cross_modal_weight,
        print_freq=s.print_freq,
        seed=cfg.train.seed,
    )


def build_engine(
    cfg: CfgNode,
    datamanager: Any,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    use_gpu: bool,
    rank: int = 0,
    world_size: int = 1,
) -> CCEngine:
    options = EngineOptions(
        save_dir=cfg.data.save_dir,
        amp=resolve_amp(cfg, use_gpu),
        channels_last=cfg.runtime.channels_last,
        checkpoint_period=cfg.runtime.checkpoint_period,
        checkpoint_iters=cfg.runtime.checkpoint_iters,
        nan_policy=cfg.runtime.nan_policy,
        protocols=tuple(cfg.cc_eval.protocols),
        best_metric=cfg.cc_eval.best_metric,
        single_shot=cfg.cc_eval.single_shot,
        single_shot_trials=cfg.cc_eval.single_shot_trials,
        single_shot_seed=cfg.cc_eval.single_shot_seed,
        max_rank=cfg.cc_eval.max_rank,
        chunk_size=cfg.cc_eval.chunk_size,
        pooling=cfg.video.pooling_method,
        loss=loss_options(cfg),
        rank=rank,
        world_size=world_size,
        config_dump=cfg.dump(),
        plot=cfg.runtime.plot,
    )
    stages = build_stages(unwrap_model(model), prompt_stage_options(cfg))
    return CCEngine(datamanager, model, optimizer, scheduler, options, stages, use_gpu)


def engine_run_kwargs(cfg: CfgNode) -> dict:
    """torchreid's ``Engine.run`` arguments from the config (upstream main.py's convention)."""
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
        "dist_metric": cfg.test.dist_metric,
        "normalize_feature": cfg.test.normalize_feature,
        "visrank": cfg.test.visrank,
        "visrank_topk": cfg.test.visrank_topk,
        "ranks": cfg.test.ranks,
        "rerank": cfg.test.rerank,
    }
