"""Config -> runtime, data, model, optimizer, scheduler, objective, evaluator, engine.

The tools (``tools/train.py``, ``tools/test.py``, the benchmarks) call these, as torchreid's
main.py wires its pieces; the sub-packages never import this module, so imports point one way.
The functions named ``*_options`` / ``*_schedule`` are the one set of mappers from the yacs config
(where every default lives) to the dataclasses the code receives (which have no defaults).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn
from yacs.config import CfgNode

from .checks import resolve_amp
from .compat import model_factory, torchreid_api
from .data.datamanager import ClothesDataManager
from .engine.engine import CCEngine, LoopOptions, unwrap_model
from .engine.schedules import EpochSchedule, PromptSchedule, build_epoch_scheduler
from .engine.stages import PromptStage, PromptStageOptions, Stage, stages_for
from .evaluation.evaluator import EvaluationOptions, Evaluator
from .losses.objective import CLIPReIDObjective, Objective, TorchreidObjective, recipe_of
from .modeling import build_model_from_config
from .modeling.spec import ModelSpec, input_from_cfg, model_spec_for
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
        factory = model_factory()
        if cfg.model.name not in factory:
            raise KeyError(
                f"model.name: unknown model '{cfg.model.name}'; available: {sorted(factory)}"
            )
        model = torchreid_api().models.build_model(
            name=cfg.model.name,
            num_classes=datamanager.num_train_pids,
            loss=cfg.loss.name,
            pretrained=cfg.model.pretrained,
            use_gpu=use_gpu,
        )
    if hasattr(model, "set_stage"):
        model.set_stage(2)  # the optimizer below holds the stage-2 parameters
    return model


def model_spec(cfg: CfgNode, model: nn.Module, num_classes: int) -> dict:
    """What a checkpoint records to rebuild ``model`` without this config."""
    net = unwrap_model(model)
    spec = model_spec_for(cfg.model.name, net, input_from_cfg(cfg), cfg.loss.name, num_classes)
    return spec.to_dict()


def config_for_spec(cfg: CfgNode, spec: ModelSpec) -> tuple[CfgNode, list[str]]:
    """``cfg`` with the model name and the input (size, normalisation) a checkpoint's spec
    records, for evaluating that checkpoint; returns the new config and what changed."""
    values = {
        "model.name": spec.name,
        "data.height": spec.input["height"],
        "data.width": spec.input["width"],
        "data.norm_mean": list(spec.input["norm_mean"]),
        "data.norm_std": list(spec.input["norm_std"]),
    }
    new = cfg.clone()
    new.defrost()
    changed = []
    for key, value in values.items():
        section, leaf = key.split(".")
        if new[section][leaf] != value:
            changed.append(f"{key}: {new[section][leaf]!r} -> {value!r}")
            new[section][leaf] = value
    new.freeze()
    return new, changed


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
            raise ValueError(
                f"train.new_layers {unknown} are not top-level modules of '{cfg.model.name}' "
                f"(it has {sorted(children)})"
            )
    groups: dict[float, list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups.setdefault(_lr_factor(cfg, model, name), []).append(param)
    order = sorted(groups, key=lambda f: (f != 1.0, f))
    return [{"params": groups[f], "lr": cfg.train.lr * f} for f in order]


def build_optimizer(cfg: CfgNode, model: nn.Module, use_gpu: bool) -> torch.optim.Optimizer:
    groups = param_groups(cfg, model)
    if not groups:
        raise ValueError(f"model '{cfg.model.name}' has no trainable parameter")
    name, wd = cfg.train.optim, cfg.train.weight_decay
    fused = {"fused": True} if use_gpu else {}
    betas = (cfg.adam.beta1, cfg.adam.beta2)
    if name == "adam":
        return torch.optim.Adam(groups, lr=cfg.train.lr, weight_decay=wd, betas=betas, **fused)
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
    raise ValueError(f"train.optim must be 'adam', 'adamw' or 'sgd', got '{name}'")


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


def build_objective(cfg: CfgNode, model: nn.Module) -> Objective:
    """The loss recipe the model asks for, with the configured values."""
    recipe = recipe_of(unwrap_model(model))
    if recipe == "clip_reid":
        return CLIPReIDObjective(
            id_weight=cfg.loss.clip.id_weight,
            triplet_weight=cfg.loss.clip.triplet_weight,
            label_smoothing=label_smoothing(cfg),
            margin=cfg.loss.triplet.margin,
            hsf_weights={"rgb": cfg.loss.hsf.rgb_weight, "gray": cfg.loss.hsf.gray_weight},
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
        channels_last=cfg.runtime.channels_last,
        rank=rank,
        world_size=world_size,
        image_size=(cfg.data.height, cfg.data.width),
    )


def build_engine(
    cfg: CfgNode,
    datamanager: Any,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    runtime: Runtime,
    spec: Optional[dict] = None,
) -> CCEngine:
    """The engine and what it receives; ``spec`` (:func:`model_spec`) goes into every
    checkpoint."""
    objective = build_objective(cfg, model)
    return CCEngine(
        datamanager,
        model,
        optimizer,
        scheduler,
        objective=objective,
        runtime=runtime,
        evaluator=Evaluator(runtime, datamanager, evaluation_options(cfg)),
        options=loop_options(cfg),
        stages=build_stages(cfg, model, objective),
        model_spec=spec,
        config_dump=cfg.dump(),
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
