"""Stage hooks: training phases that run before torchreid's epoch loop.

A stage has a ``name``, a ``finished`` flag, ``run(engine)`` (its training, skipped once finished,
resumable from its own ``state_dict``) and ``attach(engine)`` (hands its products to the engine;
called on every start, so a run resumed after the stage still gets them). torchreid baselines have
no stage; CSGN has one, :class:`PromptStage` (MDG, paper stage 1).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..losses import MutualLoss
from .checkpoint import fault_point

if TYPE_CHECKING:
    from .engine import CCEngine


class Stage:
    """The protocol every stage follows."""

    name = "stage"

    def __init__(self) -> None:
        self.finished = False

    def run(self, engine: CCEngine) -> None:
        raise NotImplementedError

    def attach(self, engine: CCEngine) -> None:
        """Give the engine what the stage produced (default: nothing)."""

    def state_dict(self) -> dict:
        return {"finished": self.finished}

    def load_state_dict(self, state: dict) -> None:
        self.finished = bool(state["finished"])


@dataclass
class PromptStageOptions:
    """Stage-1 schedule (CLIP-ReID: Adam 3.5e-4, wd 1e-4, cosine, 5 warm-up epochs, batch 64)."""

    max_epoch: int = 120
    lr: float = 3.5e-4
    weight_decay: float = 1e-4
    warmup_epochs: int = 5
    warmup_factor: float = 0.01
    lr_min: float = 1e-6
    batch_size: int = 64
    feature_batch_size: int = 128
    cross_modal_weight: float = 0.0
    print_freq: int = 10
    seed: int = 0


def cosine_with_warmup(
    epoch: int, max_epoch: int, warmup: int, warmup_factor: float, floor: float = 0.0
) -> float:
    """LR multiplier of ``epoch``: linear warm-up from ``warmup_factor``, then half a cosine
    from 1 down to ``floor``."""
    if epoch < warmup:
        return warmup_factor + (1.0 - warmup_factor) * epoch / warmup
    progress = (epoch - warmup) / max(1, max_epoch - warmup)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class PromptStage(Stage):
    """MDG: learn one RGB and one grayscale prompt per identity over frozen CLIP towers.

    1. Cache the frozen image features of the whole training set, once, for every modality the
       model has (RGB images, and their grayscale versions), without augmentation.
    2. Train only the prompt vectors with the mutual loss (i2t + t2i supervised contrastive per
       modality, optional cross-modal term), Adam and a warmed-up cosine schedule.
    3. ``attach``: freeze the prompts and give the engine the text features of every identity for
       every modality (the bank HSF is computed against in stage 2).
    """

    name = "prompt"

    def __init__(self, options: PromptStageOptions) -> None:
        super().__init__()
        self.options = options
        self.epoch = 0
        self.optimizer_state: dict | None = None

    def state_dict(self) -> dict:
        return {**super().state_dict(), "epoch": self.epoch, "optimizer": self.optimizer_state}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.epoch = int(state["epoch"])
        self.optimizer_state = state["optimizer"]

    @torch.no_grad()
    def cache_features(self, engine: CCEngine) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Frozen image features per modality, and the pids, of the whole training set."""
        model = engine.unwrapped_model
        model.eval()
        loader = engine.datamanager.train_loader_for_features(self.options.feature_batch_size)
        unreadable: list[str] = []
        start = time.time()

        def batch_outputs(data: dict) -> dict[str, torch.Tensor]:
            unreadable.extend(engine.unreadable_paths(data))
            imgs = data["img"].to(engine.device, non_blocking=True)
            camids = data["camid"].to(engine.device, non_blocking=True)
            outputs = {"pids": data["pid"].to(engine.device)}
            with engine.autocast():
                for modality in model.modalities:
                    batch = imgs if modality == "rgb" else model.to_grayscale(imgs)
                    outputs[modality] = model.prompt_image_features(batch, camids).float()
            return outputs

        cached = engine.map_loader(loader, batch_outputs, "the stage-1 feature cache")
        engine.report_unreadable(unreadable, "train", "stage 1 feature cache")
        labels = cached.pop("pids")
        seconds = time.time() - start
        engine.count_throughput("stage1_cache_img", len(labels), seconds)
        engine.log(
            f"=> Stage 1: cached {len(labels)} image features x {len(cached)} modalities "
            f"in {seconds:.1f}s ({len(labels) / max(seconds, 1e-9):.1f} img/s)"
        )
        return cached, labels

    def run(self, engine: CCEngine) -> None:
        opts = self.options
        model = engine.unwrapped_model
        cached, labels = self.cache_features(engine)
        model.set_stage(1)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=opts.lr, weight_decay=opts.weight_decay)
        if self.optimizer_state is not None:
            optimizer.load_state_dict(self.optimizer_state)
        criterion = MutualLoss(cross_modal_weight=opts.cross_modal_weight)
        n = len(labels)
        engine.log(f"=> Stage 1 (prompt learning): {opts.max_epoch} epochs, {n} samples")
        oom = engine.explain_out_of_memory(
            "stage-1 prompt learning",
            f"stage1.batch_size={opts.batch_size}",
            "lower stage1.batch_size or use runtime.amp 'bf16'",
        )
        with oom:
            self._train_prompts(engine, cached, labels, optimizer, criterion)
        self.optimizer_state = None  # not needed once finished; keeps checkpoints small

    def _train_prompts(
        self,
        engine: CCEngine,
        cached: dict[str, torch.Tensor],
        labels: torch.Tensor,
        optimizer: torch.optim.Optimizer,
        criterion: MutualLoss,
    ) -> None:
        opts = self.options
        model = engine.unwrapped_model
        n = len(labels)
        steps = max(1, n // opts.batch_size)
        while self.epoch < opts.max_epoch:
            epoch_start = time.time()
            factor = cosine_with_warmup(
                self.epoch,
                opts.max_epoch,
                opts.warmup_epochs,
                opts.warmup_factor,
                floor=opts.lr_min / opts.lr,
            )
            for group in optimizer.param_groups:
                group["lr"] = opts.lr * factor
            generator = torch.Generator().manual_seed(opts.seed * 100_003 + self.epoch)
            order = torch.randperm(n, generator=generator).to(labels.device)
            total = torch.zeros((), device=engine.device)
            for step in range(steps):
                index = order[step * opts.batch_size : (step + 1) * opts.batch_size]
                target = labels[index]
                with engine.autocast():
                    text = {m: model.prompt_features(target, m) for m in model.modalities}
                    image = {m: cached[m][index] for m in model.modalities}
                    loss, _ = criterion(image, {m: t.float() for m, t in text.items()}, target)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.detach()
            self.epoch += 1
            fault_point("stage1_epoch")
            self.optimizer_state = optimizer.state_dict()
            mean = (total / steps).item()  # the epoch's one host sync
            seconds = time.time() - epoch_start
            engine.count_throughput("stage1_prompt_samples", steps * opts.batch_size, seconds)
            engine.check_finite(mean, f"stage 1 epoch {self.epoch}", {"mutual": mean})
            engine.record("stage1/loss", self.epoch, mean)
            if self.epoch % opts.print_freq == 0 or self.epoch == opts.max_epoch:
                engine.log(
                    f"stage1 epoch [{self.epoch}/{opts.max_epoch}] loss {mean:.4f} "
                    f"lr {opts.lr * factor:.2e}  {steps * opts.batch_size / seconds:.1f} samples/s"
                )
            self.finished = self.epoch >= opts.max_epoch
            period = engine.options.checkpoint_period  # 0: only when the stage ends
            if self.finished or (period > 0 and self.epoch % period == 0):
                engine.save_checkpoint("last")

    @torch.no_grad()
    def attach(self, engine: CCEngine) -> None:
        model = engine.unwrapped_model
        model.set_stage(2)
        model.eval()
        ids = torch.arange(model.num_ids, device=engine.device)
        bank = {}
        for modality in model.modalities:
            chunks = [
                model.prompt_features(ids[i : i + 256], modality).float()
                for i in range(0, len(ids), 256)
            ]
            bank[modality] = torch.cat(chunks)
        engine.text_bank = bank
        engine.log(
            f"=> Text bank: {model.num_ids} ids x {', '.join(bank)} "
            f"({next(iter(bank.values())).shape[1]}-d)"
        )


def build_stages(model: Any, options: PromptStageOptions) -> list[Stage]:
    """The stages a model needs: a prompt stage for models with prompts, none for baselines."""
    if hasattr(model, "prompt_features"):
        return [PromptStage(options)]
    return []
