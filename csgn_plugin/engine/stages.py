"""Stage hooks: training phases that run before torchreid's epoch loop.

A stage has a ``name``, a ``finished`` flag, ``run(context)`` (its training, skipped once finished,
resumable from its own ``state_dict``) and ``attach(context)`` (hands its products on; called on
every start, so a run resumed after the stage still gets them). A stage sees a
:class:`StageContext` - the runtime, the model, the data and two callbacks - never the engine.
torchreid baselines have no stage; models with prompts have :class:`PromptStage` (MDG, paper
stage 1), whose product, the text bank, goes to whoever was given as ``on_text_bank`` (the CSGN
objective).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from ..fileio import fault_point
from ..losses import MutualLoss
from ..runtime import Runtime
from .schedules import PromptSchedule, build_prompt_scheduler

__all__ = ["PromptStage", "PromptStageOptions", "Stage", "StageContext"]


@dataclass
class StageContext:
    """What a stage may use."""

    runtime: Runtime
    model: nn.Module  # the user's module (no DDP / compile wrapper)
    datamanager: Any
    save_checkpoint: Callable[[], None]  # writes 'last' with the whole current state
    record: Callable[[str, int, float], None]  # a scalar for the plots and tensorboard
    checkpoint_period: int  # epochs between 'last' checkpoints (0: at the end only)


class Stage:
    """The protocol every stage follows."""

    name = "stage"

    def __init__(self) -> None:
        self.finished = False

    def run(self, context: StageContext) -> None:
        raise NotImplementedError

    def attach(self, context: StageContext) -> None:
        """Hand on what the stage produced (default: nothing)."""

    def state_dict(self) -> dict:
        return {"finished": self.finished}

    def load_state_dict(self, state: dict) -> None:
        self.finished = bool(state["finished"])


@dataclass(frozen=True)
class PromptStageOptions:
    """The ``stage1`` keys (built by ``builders.prompt_stage_options``)."""

    schedule: PromptSchedule
    weight_decay: float
    batch_size: int
    feature_batch_size: int
    cross_modal_weight: float
    print_freq: int
    seed: int


class PromptStage(Stage):
    """MDG: learn one RGB and one grayscale prompt per identity over frozen CLIP towers.

    1. Cache the frozen image features of the whole training set, once, for every modality the
       model has (RGB images, and their grayscale versions), without augmentation.
    2. Train only the prompt vectors with the mutual loss (i2t + t2i supervised contrastive per
       modality, optional cross-modal term), Adam and CLIP-ReID's stage-1 schedule, over a
       permutation of the cache cut into batches (the last one partial, as CLIP-ReID's).
       Each distinct identity of a batch is encoded once (the text tower dominates the cost).
       Under ``runtime.amp fp16`` the steps go through a gradient scaler, as stage 2's do.
    3. ``attach``: freeze the prompts and hand ``on_text_bank`` the text features of every
       identity for every modality (the bank HSF is computed against in stage 2).
    """

    name = "prompt"

    def __init__(
        self, options: PromptStageOptions, on_text_bank: Callable[[dict[str, torch.Tensor]], None]
    ) -> None:
        super().__init__()
        self.options = options
        self.on_text_bank = on_text_bank
        self.epoch = 0
        self.optimizer_state: dict | None = None
        self.scheduler_state: dict | None = None
        self.scaler_state: dict | None = None

    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "epoch": self.epoch,
            "optimizer": self.optimizer_state,
            "scheduler": self.scheduler_state,
            "scaler": self.scaler_state,
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.epoch = int(state["epoch"])
        self.optimizer_state = state["optimizer"]
        self.scheduler_state = state["scheduler"]
        self.scaler_state = state.get("scaler")  # absent from checkpoints of older versions

    @torch.no_grad()
    def cache_features(self, context: StageContext) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Frozen image features per modality, and the pids, of the whole training set."""
        runtime, model = context.runtime, context.model
        model.eval()
        loader = context.datamanager.train_loader_for_features(self.options.feature_batch_size)
        unreadable: list[str] = []
        start = time.time()

        def batch_outputs(data: dict) -> dict[str, torch.Tensor]:
            unreadable.extend(p for p in data.get("unreadable_path", ()) if p)
            imgs = runtime.images(data["img"])
            camids = data["camid"].to(runtime.device, non_blocking=True)
            outputs = {"pids": data["pid"].to(runtime.device)}
            with runtime.autocast():
                for modality in model.modalities:
                    batch = imgs if modality == "rgb" else model.to_grayscale(imgs)
                    outputs[modality] = model.prompt_image_features(batch, camids).float()
            return outputs

        cached = runtime.map_loader(loader, batch_outputs, "stage-1 feature cache")
        runtime.report_unreadable(unreadable, "train", "stage 1 feature cache")
        labels = cached.pop("pids")
        seconds = time.time() - start
        runtime.throughput.count("stage1_cache_img", len(labels), seconds)
        runtime.log(
            f"=> Stage 1: cached {len(labels)} image features x {len(cached)} modalities "
            f"in {seconds:.1f}s ({len(labels) / max(seconds, 1e-9):.1f} img/s)"
        )
        return cached, labels

    def run(self, context: StageContext) -> None:
        opts = self.options
        model = context.model
        cached, labels = self.cache_features(context)
        model.set_stage(1)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=opts.schedule.lr, weight_decay=opts.weight_decay)
        scheduler = build_prompt_scheduler(optimizer, opts.schedule)
        scaler = context.runtime.make_scaler()
        if self.optimizer_state is not None:
            optimizer.load_state_dict(self.optimizer_state)
            scheduler.load_state_dict(self.scheduler_state)
            if scaler is not None and self.scaler_state is not None:
                scaler.load_state_dict(self.scaler_state)
        criterion = MutualLoss(cross_modal_weight=opts.cross_modal_weight)
        context.runtime.log(
            f"=> Stage 1 (prompt learning): {opts.schedule.max_epoch} epochs, {len(labels)} samples"
        )
        oom = context.runtime.explain_out_of_memory(
            "stage-1 prompt learning",
            f"stage1.batch_size={opts.batch_size}",
            "lower stage1.batch_size or use runtime.amp 'bf16'",
        )
        with oom:
            self._train_prompts(context, cached, labels, optimizer, scheduler, criterion, scaler)
        # not needed once finished
        self.optimizer_state = self.scheduler_state = self.scaler_state = None

    def step_loss(
        self,
        model: nn.Module,
        criterion: MutualLoss,
        cached: dict[str, torch.Tensor],
        labels: torch.Tensor,
        index: torch.Tensor,
        text_pass: Callable[[torch.Tensor], tuple[torch.Tensor, ...]] | None = None,
        id_slots: int = 0,
    ) -> torch.Tensor:
        """The mutual loss of the cached samples ``index`` against their identities' prompts.

        ``labels`` and ``index`` live on the CPU: the distinct identities of the batch (each is
        encoded once) are found there, without a device synchronisation. ``text_pass(ids)``
        encodes them, one tensor per modality in ``model.modalities``' order (default: the eager
        ``model.prompt_features``); ``id_slots`` > 0 pads
        them to that many with copies of the first (static shapes for a CUDA graph: no sample
        reads a copy, so the loss and the gradients are unchanged)."""
        device = cached[model.modalities[0]].device
        target = labels[index]
        ids, inverse = target.unique(return_inverse=True)
        if id_slots:
            ids = torch.cat([ids, ids[:1].expand(id_slots - len(ids))])
        ids, inverse = ids.to(device, non_blocking=True), inverse.to(device, non_blocking=True)
        features = (text_pass or _TextPasses(model))(ids)
        text = {m: f.float()[inverse] for m, f in zip(model.modalities, features)}
        index = index.to(device, non_blocking=True)
        image = {m: cached[m][index] for m in model.modalities}
        loss, _ = criterion(image, text, target.to(device, non_blocking=True))
        return loss

    def _train_prompts(
        self,
        context: StageContext,
        cached: dict[str, torch.Tensor],
        labels: torch.Tensor,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        criterion: MutualLoss,
        scaler: torch.amp.GradScaler | None,
    ) -> None:
        opts, runtime, model = self.options, context.runtime, context.model
        n = len(labels)
        labels = labels.cpu()
        max_epoch = opts.schedule.max_epoch
        text_pass, id_slots = self.graphed_text_passes(runtime, model)
        while self.epoch < max_epoch:
            epoch_start = time.time()
            lr = optimizer.param_groups[0]["lr"]
            generator = torch.Generator().manual_seed(opts.seed * 100_003 + self.epoch)
            order = torch.randperm(n, generator=generator)
            total = torch.zeros((), device=runtime.device)
            steps = 0
            for start in range(0, n, opts.batch_size):
                with runtime.autocast():
                    batch = order[start : start + opts.batch_size]
                    loss = self.step_loss(
                        model, criterion, cached, labels, batch, text_pass, id_slots
                    )
                optimizer.zero_grad(set_to_none=True)
                runtime.backward_and_step(loss, optimizer, scaler)
                total += loss.detach()
                steps += 1
            self.epoch += 1
            fault_point("stage1_epoch")
            scheduler.step()
            self.optimizer_state = optimizer.state_dict()
            self.scheduler_state = scheduler.state_dict()
            self.scaler_state = None if scaler is None else scaler.state_dict()
            mean = (total / steps).item()  # the epoch's one host sync
            seconds = time.time() - epoch_start
            runtime.throughput.count("stage1_prompt_samples", n, seconds)
            runtime.check_finite(mean, f"stage 1 epoch {self.epoch}", {"mutual": mean})
            context.record("stage1/loss", self.epoch, mean)
            context.record("stage1/lr", self.epoch, lr)
            if self.epoch % opts.print_freq == 0 or self.epoch == max_epoch:
                runtime.log(
                    f"stage1 epoch [{self.epoch}/{max_epoch}] loss {mean:.4f} lr {lr:.2e}  "
                    f"{n / seconds:.1f} samples/s"
                )
            self.finished = self.epoch >= max_epoch
            period = context.checkpoint_period
            if self.finished or (period > 0 and self.epoch % period == 0):
                context.save_checkpoint()

    def graphed_text_passes(
        self, runtime: Runtime, model: nn.Module
    ) -> tuple[Callable[[torch.Tensor], tuple[torch.Tensor, ...]] | None, int]:
        """With CUDA graphs (``runtime.graphs``): the text passes of all modalities replayed
        from one graph over a fixed number of identity slots (``min(stage1.batch_size, ids)``),
        and that number. Otherwise (None, 0): the eager passes over the distinct identities.
        One graph, not one per modality: the second capture would run while the first pass's
        autograd graph is alive (its loss not yet backpropagated), which breaks the capture
        (seen on an H200: CSGN's grayscale pass then ran eagerly)."""
        if not runtime.graphs:
            return None, 0
        passes = runtime.graphed(_TextPasses(model), "stage1")
        return passes, min(self.options.batch_size, model.num_ids)

    @torch.no_grad()
    def attach(self, context: StageContext) -> None:
        model = context.model
        model.set_stage(2)
        model.eval()
        ids = torch.arange(model.num_ids, device=context.runtime.device)
        bank = {}
        for modality in model.modalities:
            chunks = [
                model.prompt_features(ids[i : i + 256], modality).float()
                for i in range(0, len(ids), 256)
            ]
            bank[modality] = torch.cat(chunks)
        self.on_text_bank(bank)
        context.runtime.log(
            f"=> Text bank: {model.num_ids} ids x {', '.join(bank)} "
            f"({next(iter(bank.values())).shape[1]}-d)"
        )


class _TextPasses(nn.Module):
    """Every modality's prompt features of a tensor of identities, in ``model.modalities``'
    order (a module, for ``Runtime.graphed``: its parameters are the model's)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model.prompt_features(ids, m) for m in self.model.modalities)


def stages_for(model: nn.Module) -> tuple[str, ...]:
    """The stages a model asks for (its ``training_stages``; torchreid's models: none)."""
    return tuple(getattr(model, "training_stages", ()))
