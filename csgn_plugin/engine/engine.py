"""``CCEngine``: torchreid's Engine with stages, a fast runtime and clothes-changing evaluation.

It keeps torchreid's interface (``run(...)`` with the same arguments, ``train``, ``test``,
``forward_backward``, ``register_model``, the tensorboard writer, ranked-result visualisation and
re-ranking) and changes what torchreid gets wrong for this work:

* stages (the CSGN prompt stage) run before the epoch loop and resume where they stopped;
* one ``forward_backward`` trains torchreid baselines (logits, or logits + features) and CSGN
  (a dict: ID logits, triplet features, the projected feature for HSF);
* mixed precision (bf16, or fp16 with a gradient scaler), no host synchronisation per iteration
  (losses are read every ``print_freq`` steps), NaN/Inf detection (``nan_policy``): a run stops
  within one logging window and never writes a checkpoint from non-finite weights;
* failures that say what to change: out-of-memory errors name the batch size, unreadable images
  replaced under ``cc_data.image_policy 'skip'`` are counted per epoch / evaluation and listed in
  ``save_dir/unreadable_images.txt``;
* evaluation reports every protocol the dataset declares (general / CC / SC) in one table,
  memory-bounded (distances computed per query chunk), keeps the best checkpoint by a metric;
* frozen parameters stay frozen (torchreid's ``open_all_layers`` re-opens them every epoch),
  checkpoints are atomic and carry the full state, ``save_model`` works without a scheduler and
  ``visrank`` is allowed during training.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Subset

from ..compat import load_checkpoint, torchreid_api
from ..evaluation import (
    RankResult,
    compute_distance_matrix,
    evaluate_features,
    evaluate_rank_modes,
    single_shot_evaluate,
)
from ..evaluation.pooling import average_clip_features
from ..losses import HSFLoss
from ..losses.triplet import HardTripletLoss
from ..modeling.weights import CheckpointMismatchError, extract_state_dict, match_state_dict
from .checkpoint import (
    atomic_save,
    atomic_write_text,
    config_differences,
    fault_point,
    rng_state,
    set_rng_state,
)
from .stages import Stage

tr = torchreid_api()


@dataclass
class LossOptions:
    """Loss weights. torchreid baselines: ``name`` softmax|triplet with weight_x / weight_t.
    CSGN-style models (dict outputs): ID + triplet + HSF with their own weights."""

    name: str = "softmax"
    label_smooth: float = 0.1
    margin: float = 0.3
    weight_x: float = 1.0
    weight_t: float = 1.0
    id_weight: float = 0.25
    triplet_weight: float = 1.0
    hsf_weights: dict = field(default_factory=lambda: {"rgb": 1.0, "gray": 1.0})


@dataclass
class EngineOptions:
    save_dir: str = "log"
    amp: str = "off"  # 'bf16', 'fp16' or 'off'
    channels_last: bool = False
    checkpoint_period: int = 1  # epochs between 'last' checkpoints (0: only at the end)
    checkpoint_iters: int = 0  # also every N steps inside an epoch (0: off)
    nan_policy: str = "stop"  # 'stop' (at the next log) or 'skip' (checks every step)
    protocols: Sequence[str] = ("auto",)
    best_metric: str = "auto"
    single_shot: bool = False
    single_shot_trials: int = 10
    single_shot_seed: int = 0
    max_rank: int = 50
    chunk_size: int = 1024
    pooling: str = "avg"  # video: how frame features become a tracklet feature
    loss: LossOptions = field(default_factory=LossOptions)
    rank: int = 0
    world_size: int = 1
    config_dump: str = ""
    plot: bool = True


def unwrap_model(model: nn.Module) -> nn.Module:
    """The user's module inside DDP and/or torch.compile wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if inner is None:
            return model
        model = inner


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or Inf; the message names the step and the loss terms."""


class CCEngine(tr.engine.Engine):
    """Trains any torchreid model or CSGN and evaluates with the clothes-changing protocols."""

    def __init__(
        self,
        datamanager: Any,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any = None,
        options: EngineOptions | None = None,
        stages: Sequence[Stage] = (),
        use_gpu: bool = False,
    ) -> None:
        super().__init__(datamanager, use_gpu)
        self.options = options or EngineOptions()
        self.device = torch.device("cuda" if self.use_gpu else "cpu")
        self.model = model
        self.unwrapped_model = unwrap_model(model)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.register_model("model", model, optimizer, scheduler)
        self.stages = list(stages)
        self.text_bank: dict[str, torch.Tensor] | None = None
        self.scaler = torch.amp.GradScaler(self.device.type) if self.options.amp == "fp16" else None
        loss = self.options.loss
        self.triplet = HardTripletLoss(loss.margin)
        self.hsf = HSFLoss(weights=dict(loss.hsf_weights), label_smoothing=loss.label_smooth)
        forward = self.unwrapped_model.forward
        self._takes_camids = "camids" in getattr(forward, "__code__", forward).co_varnames
        self._trainable = {n: p.requires_grad for n, p in self.unwrapped_model.named_parameters()}
        self.start_epoch = 0
        self.start_batch = 0
        self.global_step = 0
        self.best: dict | None = None
        self.history: dict[str, list] = {}
        self.last_results: dict[str, dict[str, RankResult]] = {}
        self.skipped_steps = 0
        # phase -> [items, seconds] of this process's work (all ranks' items), see run()
        self.throughput: dict[str, list[float]] = {}
        # unreadable images replaced under cc_data.image_policy 'skip': split -> path -> times
        self.unreadable: dict[str, Counter] = {}

    # ------------------------------------------------------------------ runtime helpers
    @property
    def is_main(self) -> bool:
        return self.options.rank == 0

    def log(self, message: str) -> None:
        if self.is_main:
            print(message, flush=True)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.options.amp == "off":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.options.amp == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def shard(self, loader: DataLoader) -> DataLoader:
        """This rank's contiguous share of an in-order loader (the loader itself when alone)."""
        world, rank = self.options.world_size, self.options.rank
        if world == 1:
            return loader
        n = len(loader.dataset)
        lo, hi = n * rank // world, n * (rank + 1) // world
        return DataLoader(
            Subset(loader.dataset, range(lo, hi)),
            batch_size=loader.batch_size,
            shuffle=False,
            num_workers=loader.num_workers,
            pin_memory=loader.pin_memory,
        )

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate the ranks' contiguous shards in rank order (identity when alone)."""
        if self.options.world_size == 1:
            return tensor
        parts: list[Any] = [None] * self.options.world_size
        dist.all_gather_object(parts, tensor.cpu())
        return torch.cat(parts).to(tensor.device)

    def get_current_lr(self, names: Any = None) -> float:
        """The base lr (first parameter group), not torchreid's last group, which is the bias
        group (``train.bias_lr_factor`` x lr) of the plugin's optimizers."""
        name = self.get_model_names(names)[0]
        return self._optims[name].param_groups[0]["lr"]

    def map_loader(self, loader: DataLoader, fn: Any, what: str) -> dict[str, torch.Tensor]:
        """``fn(batch) -> {key: tensor}`` over this rank's shard of an in-order loader, each key
        concatenated and gathered over ranks in dataset order; an out-of-memory error names
        ``what`` and ``test.batch_size``."""
        outputs: dict[str, list[torch.Tensor]] = {}
        oom = self.explain_out_of_memory(
            what,
            f"test.batch_size={loader.batch_size}",
            "lower test.batch_size or use runtime.amp 'bf16'",
        )
        with oom:
            for data in self.shard(loader):
                for key, value in fn(data).items():
                    outputs.setdefault(key, []).append(value)
        return {key: self.gather(torch.cat(values)) for key, values in outputs.items()}

    def count_throughput(self, phase: str, items: float, seconds: float) -> None:
        """Add ``items`` processed (over all ranks) in ``seconds`` to a phase's throughput."""
        total = self.throughput.setdefault(phase, [0.0, 0.0])
        total[0] += items
        total[1] += seconds

    def report_throughput(self, save_dir: str) -> None:
        """Log the throughput of every phase and write it to ``save_dir/throughput.json``."""
        if not self.throughput or not self.is_main:
            return
        report = {
            phase: {"items": items, "seconds": seconds, "per_second": items / max(seconds, 1e-9)}
            for phase, (items, seconds) in self.throughput.items()
        }
        self.log(
            "Throughput: "
            + "; ".join(
                f"{phase} {r['per_second']:.1f}/s ({r['items']:.0f} in {r['seconds']:.1f}s)"
                for phase, r in report.items()
            )
        )
        atomic_write_text(os.path.join(save_dir, "throughput.json"), json.dumps(report, indent=2))

    def record(self, key: str, step: int, value: float) -> None:
        """Keep a scalar for the plots and the tensorboard log."""
        self.history.setdefault(key, []).append((step, value))
        if self.writer is not None:
            self.writer.add_scalar(key, value, step)

    def check_finite(self, value: float, where: str, terms: dict[str, float]) -> None:
        if math.isfinite(value):
            return
        detail = ", ".join(f"{k}={v:.4g}" for k, v in terms.items())
        raise NonFiniteLossError(
            f"non-finite loss at {where} ({detail}). Training stopped; the last checkpoint in "
            f"'{self.options.save_dir}' is the last good state. Lower the learning rate, use "
            "runtime.amp 'bf16' or 'off', or set runtime.nan_policy 'skip'."
        )

    def check_weights_finite(self) -> None:
        """Refuse to checkpoint NaN/Inf weights (a step can break them with a finite loss)."""
        state = self.unwrapped_model.state_dict()
        tensors = {k: v for k, v in state.items() if v.is_floating_point()}
        if not tensors or torch.stack([v.isfinite().all() for v in tensors.values()]).all():
            return
        bad = [k for k, v in tensors.items() if not v.isfinite().all()]
        raise NonFiniteLossError(
            f"non-finite weights after step {self.global_step} ({', '.join(bad[:5])}"
            f"{', ...' if len(bad) > 5 else ''}); no checkpoint written: the last checkpoint in "
            f"'{self.options.save_dir}' is the last good state. Lower the learning rate or use "
            "runtime.amp 'bf16' or 'off'."
        )

    @contextlib.contextmanager
    def explain_out_of_memory(self, what: str, batch: str, advice: str) -> Iterator[None]:
        """Re-raise a GPU out-of-memory error with the batch size and what to change."""
        try:
            yield
        except torch.OutOfMemoryError as exc:
            height, width = self.datamanager.height, self.datamanager.width
            raise torch.OutOfMemoryError(
                f"out of GPU memory in {what} ({batch}, images {height}x{width}, "
                f"amp '{self.options.amp}'). To fit: {advice}. Original error: {exc}"
            ) from exc

    def _train_oom_context(self) -> contextlib.AbstractContextManager:
        per_process = self.datamanager.train_loader.batch_size
        total = per_process * self.options.world_size
        return self.explain_out_of_memory(
            "a training step",
            f"train.batch_size={total}, {per_process} per process",
            "lower train.batch_size (keep it a multiple of sampler.num_instances; scale train.lr "
            "with it), use runtime.amp 'bf16' (or 'fp16'), lower data.height/data.width, or "
            "spread the batch over more GPUs with torchrun",
        )

    @staticmethod
    def unreadable_paths(data: dict) -> list[str]:
        """The unreadable images whose items a batch replaced (``cc_data.image_policy 'skip'``
        flags them in the batch, whichever loader process read them)."""
        return [p for p in data.get("unreadable_path", ()) if p]

    def report_unreadable(self, paths: list[str], split: str, where: str) -> None:
        """Count what a pass over ``split`` replaced (all ranks' items) and warn once."""
        if self.options.world_size > 1:
            parts: list[Any] = [None] * self.options.world_size
            dist.all_gather_object(parts, paths)
            paths = [p for part in parts for p in part]
        if not paths:
            return
        self.unreadable.setdefault(split, Counter()).update(paths)
        files = sorted(set(paths))
        self.log(
            f"Warning: {where}: {len(paths)} item(s) replaced by another image of the same "
            f"identity because {len(files)} image(s) cannot be read (cc_data.image_policy "
            f"'skip'): {', '.join(files[:10])}{', ...' if len(files) > 10 else ''}"
        )

    # ------------------------------------------------------------------ losses and one step
    def compute_losses(
        self, outputs: Any, pids: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        opts = self.options.loss
        terms: dict[str, torch.Tensor] = {}
        if isinstance(outputs, dict):  # CSGN / CLIP-ReID models
            terms["id"] = opts.id_weight * sum(
                F.cross_entropy(logits.float(), pids, label_smoothing=opts.label_smooth)
                for logits in outputs["logits"]
            )
            terms["triplet"] = opts.triplet_weight * sum(
                self.triplet(feat, pids) for feat in outputs["features"]
            )
            if self.text_bank is not None:
                hsf, parts = self.hsf(outputs["image_feature"].float(), self.text_bank, pids)
                terms.update({f"hsf_{k}": v for k, v in parts.items()})
                terms["hsf"] = hsf
        else:  # torchreid baselines: logits, or (logits, features)
            logits, feats = outputs if isinstance(outputs, (tuple, list)) else (outputs, None)
            smooth = opts.label_smooth
            ce = F.cross_entropy(logits.float(), pids, label_smoothing=smooth)
            if feats is None or opts.name == "softmax":
                terms["softmax"] = ce
            else:
                terms["softmax"] = opts.weight_x * ce
                terms["triplet"] = opts.weight_t * self.triplet(feats, pids)
        total = sum(v for k, v in terms.items() if not k.startswith("hsf_"))
        return total, terms

    def forward_backward(self, data: dict) -> dict[str, torch.Tensor]:
        with self._train_oom_context():
            return self._step(data)

    def _step(self, data: dict) -> dict[str, torch.Tensor]:
        imgs = data["img"].to(self.device, non_blocking=True)
        pids = data["pid"].to(self.device, non_blocking=True)
        if self.options.channels_last and imgs.dim() == 4:
            imgs = imgs.contiguous(memory_format=torch.channels_last)
        with self.autocast():
            if self._takes_camids:
                outputs = self.model(imgs, data["camid"].to(self.device, non_blocking=True))
            else:
                outputs = self.model(imgs)
            loss, terms = self.compute_losses(outputs, pids)
        self.optimizer.zero_grad(set_to_none=True)
        if self.options.nan_policy == "skip" and not self._finite_on_all_ranks(loss):
            self.skipped_steps += 1
            detail = ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items())
            self.log(
                f"Warning: skipped step {self.global_step + 1} (epoch {self.epoch + 1} batch "
                f"{self.batch_idx + 1}) with a non-finite loss ({detail}); runtime.nan_policy "
                "'skip'"
            )
            return {k: torch.zeros_like(v).detach() for k, v in terms.items()}
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        return {k: v.detach() for k, v in terms.items()}

    def _finite_on_all_ranks(self, loss: torch.Tensor) -> bool:
        """Whether every rank's loss is finite (all ranks must skip a step together, or the
        others would wait forever in the gradient all-reduce)."""
        finite = torch.isfinite(loss.detach()).float()
        if self.options.world_size > 1:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        return bool(finite.item())

    # ------------------------------------------------------------------ training
    def two_stepped_transfer_learning(
        self, epoch: int, fixbase_epoch: int, open_layers: Any, model: nn.Module | None = None
    ) -> None:
        """torchreid's freeze-then-open, without re-opening what was frozen on purpose."""
        model = self.unwrapped_model if model is None else model
        fixbase = (epoch + 1) <= fixbase_epoch and open_layers
        layers = [open_layers] if isinstance(open_layers, str) else list(open_layers or [])
        for name, param in model.named_parameters():
            trainable = self._trainable.get(name, param.requires_grad)
            if fixbase:
                trainable = trainable and name.split(".")[0] in layers
            param.requires_grad_(trainable)
        if fixbase:
            self.log(f"* Only train {layers} (epoch: {epoch + 1}/{fixbase_epoch})")

    def train(self, print_freq: int = 10, fixbase_epoch: int = 0, open_layers: Any = None) -> None:
        self.set_model_mode("train")
        self.two_stepped_transfer_learning(self.epoch, fixbase_epoch, open_layers)
        sampler = self.datamanager.train_sampler
        sampler.set_epoch(self.epoch, self.start_batch)
        self.num_batches = sampler.num_batches()
        sums: dict[str, torch.Tensor] = {}
        count = 0
        window_start = epoch_start = time.time()
        steps = 0
        unreadable: list[str] = []
        for batch_idx, data in enumerate(self.train_loader, self.start_batch):
            self.batch_idx = batch_idx
            unreadable += self.unreadable_paths(data)
            terms = self.forward_backward(data)
            for k, v in terms.items():
                sums[k] = sums[k] + v if k in sums else v.clone()
            count += 1
            steps += 1
            self.global_step += 1
            fault_point("train_step")
            every = self.options.checkpoint_iters
            if every and self.global_step % every == 0 and self.batch_idx + 1 < self.num_batches:
                self._window_means(sums, count)  # no checkpoint after a non-finite loss
                self.save_checkpoint("last", batch=self.batch_idx + 1)
            if (self.batch_idx + 1) % print_freq == 0 or self.batch_idx + 1 == self.num_batches:
                self._log_window(sums, count, time.time() - window_start)
                sums, count, window_start = {}, 0, time.time()
        # the last window's loss read has synchronised the device: the time is the work's
        images = steps * self.datamanager.train_loader.batch_size * self.options.world_size
        self.count_throughput("stage2_train_img", images, time.time() - epoch_start)
        self.report_unreadable(unreadable, "train", f"epoch {self.epoch + 1}")
        self.start_batch = 0
        self.update_lr()

    def _window_means(self, sums: dict[str, torch.Tensor], count: int) -> dict[str, float]:
        """Mean loss terms of the current window (over all ranks); raises if non-finite."""
        names = list(sums)
        stacked = torch.stack([sums[k].float() for k in names]) / count
        if self.options.world_size > 1:  # every rank sees the same means and stops together
            dist.all_reduce(stacked)
            stacked /= self.options.world_size
        means = dict(zip(names, stacked.tolist()))  # the one host sync per window
        total = sum(v for k, v in means.items() if not k.startswith("hsf_"))
        first_batch, first_step = self.batch_idx + 2 - count, self.global_step + 1 - count
        where = (
            f"epoch {self.epoch + 1} batches {first_batch}-{self.batch_idx + 1} "
            f"(steps {first_step}-{self.global_step})"
        )
        self.check_finite(total, where, means)
        return means

    def _log_window(self, sums: dict[str, torch.Tensor], count: int, seconds: float) -> None:
        means = self._window_means(sums, count)
        for k, v in means.items():
            self.record(f"Train/{k}", self.global_step, v)
        self.record("Train/lr", self.global_step, self.get_current_lr())
        rate = count * self.datamanager.train_loader.batch_size / max(seconds, 1e-9)
        loss_text = " ".join(f"{k} {v:.4f}" for k, v in means.items())
        self.log(
            f"epoch: [{self.epoch + 1}/{self.max_epoch}][{self.batch_idx + 1}/{self.num_batches}]"
            f"  {loss_text}  lr {self.get_current_lr():.2e}  {rate:.1f} img/s"
        )

    def run(
        self,
        save_dir: str = "log",
        max_epoch: int = 0,
        start_epoch: int = 0,
        print_freq: int = 10,
        fixbase_epoch: int = 0,
        open_layers: Any = None,
        start_eval: int = 0,
        eval_freq: int = -1,
        test_only: bool = False,
        dist_metric: str = "euclidean",
        normalize_feature: bool = False,
        visrank: bool = False,
        visrank_topk: int = 10,
        use_metric_cuhk03: bool = False,
        ranks: Sequence[int] = (1, 5, 10, 20),
        rerank: bool = False,
    ) -> None:
        """torchreid's ``run``: stages first, then the epoch loop, evaluation and checkpoints."""
        self.options.save_dir = save_dir
        test_kwargs = {
            "dist_metric": dist_metric,
            "normalize_feature": normalize_feature,
            "visrank": visrank,
            "visrank_topk": visrank_topk,
            "save_dir": save_dir,
            "ranks": ranks,
            "rerank": rerank,
        }
        if test_only:
            self.test(**test_kwargs)
            self._write_unreadable_list(save_dir)
            return
        if self.writer is None and self.is_main:
            self.writer = _summary_writer(save_dir)
        started = time.time()
        self.max_epoch = max_epoch
        for stage in self.stages:
            if not stage.finished:
                stage.run(self)
            stage.attach(self)
        self.set_model_mode("train")
        first = max(start_epoch, self.start_epoch)
        self.log(f"=> Start training (epochs {first + 1}..{max_epoch})")
        for self.epoch in range(first, max_epoch):
            self.train(print_freq=print_freq, fixbase_epoch=fixbase_epoch, open_layers=open_layers)
            last = self.epoch + 1 == max_epoch
            due = eval_freq > 0 and (self.epoch + 1) % eval_freq == 0
            if last or (due and self.epoch + 1 >= start_eval):
                self.test(**{**test_kwargs, "visrank": visrank and last})
            if (
                last
                or self.options.checkpoint_period > 0
                and ((self.epoch + 1) % self.options.checkpoint_period == 0)
            ):
                self.save_checkpoint("last", epoch_done=True)
        if max_epoch == 0 or first >= max_epoch:
            self.test(**test_kwargs)
        elapsed = datetime.timedelta(seconds=round(time.time() - started))
        self.log(f"Elapsed {elapsed}")
        self.report_throughput(save_dir)
        self._write_unreadable_list(save_dir)
        if self.options.plot and self.is_main:
            from .plots import plot_history

            plot_history(self.history, self.last_results, save_dir)
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def _extract(self, loader: DataLoader) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
        """Features and labels of a test split, in dataset order (gathered over ranks).

        Video items are (B, S, C, H, W): frame features are pooled per item; a dataset tested
        on clips (batches carry ``video_index``) then averages its clips per tracklet. Items whose
        image could not be read (``cc_data.image_policy 'skip'``) are left out; ``labels['kept']``
        holds the dataset indices of the items kept."""

        def batch_outputs(data: dict) -> dict[str, torch.Tensor]:
            flags = data.get("unreadable_path")
            outputs = {
                "features": self._extract_batch(data),
                "pids": data["pid"],
                "camids": data["camid"],
                "clothes": data.get("clothes_id", torch.full_like(data["pid"], -1)),
                "unreadable": torch.tensor([bool(p) for p in flags], dtype=torch.bool)
                if flags is not None
                else torch.zeros(len(data["pid"]), dtype=torch.bool),
            }
            if "video_index" in data:
                outputs["video_index"] = data["video_index"]
            return outputs

        labels = self.map_loader(loader, batch_outputs, "feature extraction")
        features = labels.pop("features")
        index = labels.pop("video_index", None)
        if index is not None:
            num_videos = int(index.max()) + 1
            features = average_clip_features(features, index.to(features.device), num_videos)
            positions = torch.arange(len(index))
            first = torch.full((num_videos,), len(index)).scatter_reduce(
                0, index, positions, reduce="amin"
            )
            labels = {key: value[first] for key, value in labels.items()}
        kept = torch.nonzero(~labels.pop("unreadable")).flatten()
        if len(kept) < len(features):
            features = features[kept.to(features.device)]
            labels = {key: value[kept] for key, value in labels.items()}
        labels["kept"] = kept
        return features, {key: value.numpy() for key, value in labels.items()}

    def _extract_batch(self, data: dict) -> torch.Tensor:
        imgs = data["img"].to(self.device, non_blocking=True)
        cams = data["camid"].to(self.device, non_blocking=True)
        video = imgs.dim() == 5
        if video:
            b, s = imgs.shape[:2]
            imgs = imgs.flatten(0, 1)
            cams = cams.repeat_interleave(s)
        if self.options.channels_last:
            imgs = imgs.contiguous(memory_format=torch.channels_last)
        with self.autocast():
            out = self.model(imgs, cams) if self._takes_camids else self.model(imgs)
        out = out.float()
        if video:
            out = out.view(b, s, -1)
            out = out.max(dim=1)[0] if self.options.pooling == "max" else out.mean(dim=1)
        return out

    def protocols_for(self, name: str) -> list[str]:
        declared = list(self.datamanager.protocols.get(name, ("general",)))
        asked = list(self.options.protocols)
        if asked == ["auto"]:
            return declared
        unknown = [p for p in asked if p not in ("general", "cc", "sc")]
        if unknown:
            raise ValueError(f"cc_eval.protocols: unknown protocol(s) {unknown}")
        return asked

    def evaluate_target(
        self,
        name: str,
        dist_metric: str = "euclidean",
        normalize_feature: bool = False,
        rerank: bool = False,
        visrank: bool = False,
        visrank_topk: int = 10,
        save_dir: str = "",
    ) -> dict[str, RankResult]:
        """Every protocol of one target dataset from one feature extraction."""
        self.log(f"##### Evaluating {name} #####")
        started = time.time()
        qf, q = self._extract(self.test_loader[name]["query"])
        gf, g = self._extract(self.test_loader[name]["gallery"])
        self.count_throughput("eval_extract_img", qf.shape[0] + gf.shape[0], time.time() - started)
        self.log(
            f"Extracted {qf.shape[0]} query and {gf.shape[0]} gallery features "
            f"({qf.shape[1]}-d) in {time.time() - started:.1f}s"
        )
        items = self.datamanager.test_dataset[name]
        for split, kept in (("query", q["kept"]), ("gallery", g["kept"])):
            left_out = np.setdiff1d(np.arange(len(items[split])), kept)
            paths = [items[split][i][0] for i in left_out]
            if paths:
                self.unreadable.setdefault(f"{name} {split}", Counter()).update(paths)
                self.log(
                    f"Warning: {name}: {len(paths)} {split} image(s) cannot be read and are left "
                    f"out of the evaluation (cc_data.image_policy 'skip'): "
                    f"{', '.join(paths[:10])}{', ...' if len(paths) > 10 else ''}"
                )
        protocols = self.protocols_for(name)
        if any(p != "general" for p in protocols) and (q["clothes"] < 0).any():
            raise ValueError(
                f"cc_eval.protocols asks for {protocols} on '{name}', whose items carry no "
                "clothes ids; use ['general'] for this dataset"
            )
        labels = (q["pids"], g["pids"], q["camids"], g["camids"], q["clothes"], g["clothes"])
        opts = self.options
        if rerank or visrank or opts.single_shot:
            distmat = compute_distance_matrix(qf, gf, dist_metric, normalize_feature)
            if rerank:
                distmat = self._rerank(distmat, qf, gf, dist_metric, normalize_feature)
            if opts.single_shot:
                results = {
                    mode: single_shot_evaluate(
                        distmat,
                        *labels,
                        mode=mode,
                        trials=opts.single_shot_trials,
                        seed=opts.single_shot_seed,
                        max_rank=opts.max_rank,
                    )
                    for mode in protocols
                }
            else:  # one sort of the distance matrix serves every protocol
                results = evaluate_rank_modes(
                    distmat, *labels, modes=tuple(protocols), max_rank=opts.max_rank
                )
            if visrank and self.is_main:
                query, gallery = self.datamanager.fetch_test_loaders(name)
                tr.utils.visualize_ranked_results(
                    np.asarray(distmat.cpu() if torch.is_tensor(distmat) else distmat),
                    ([query[i] for i in q["kept"]], [gallery[i] for i in g["kept"]]),
                    self.datamanager.data_type,
                    width=self.datamanager.width,
                    height=self.datamanager.height,
                    save_dir=os.path.join(save_dir, "visrank_" + name),
                    topk=visrank_topk,
                )
            return results
        with self.explain_out_of_memory(
            "ranking", f"cc_eval.chunk_size={opts.chunk_size} queries at a time", "lower it"
        ):
            return evaluate_features(
                qf,
                gf,
                *labels,
                modes=tuple(protocols),
                metric=dist_metric,
                normalize=normalize_feature,
                max_rank=opts.max_rank,
                chunk_size=opts.chunk_size,
            )

    def _rerank(
        self, distmat: Any, qf: torch.Tensor, gf: torch.Tensor, metric: str, normalize: bool
    ) -> np.ndarray:
        self.log("Applying person re-ranking ...")

        def full(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
            d = compute_distance_matrix(a, b, metric, normalize)
            return np.asarray(d.cpu() if torch.is_tensor(d) else d)

        qg = np.asarray(distmat.cpu() if torch.is_tensor(distmat) else distmat)
        return tr.utils.re_ranking(qg, full(qf, qf), full(gf, gf))

    def test(
        self,
        dist_metric: str = "euclidean",
        normalize_feature: bool = False,
        visrank: bool = False,
        visrank_topk: int = 10,
        save_dir: str = "",
        use_metric_cuhk03: bool = False,
        ranks: Sequence[int] = (1, 5, 10, 20),
        rerank: bool = False,
    ) -> float:
        """Evaluate every target under its protocols; print one table; keep the best checkpoint.

        Returns rank-1 of the first protocol of the last target (torchreid's convention).
        """
        self.set_model_mode("eval")
        results = {
            name: self.evaluate_target(
                name,
                dist_metric,
                normalize_feature,
                rerank,
                visrank,
                visrank_topk,
                save_dir or self.options.save_dir,
            )
            for name in self.test_loader
        }
        self.set_model_mode("train")
        self.last_results = results
        self.log(format_results(results, ranks))
        for name, per_mode in results.items():
            for mode, res in per_mode.items():
                self.record(f"Test/{name}/{mode}/rank1", self.epoch + 1, float(res.cmc[0]))
                self.record(f"Test/{name}/{mode}/mAP", self.epoch + 1, float(res.mAP))
        self._update_best(results)
        last = results[list(results)[-1]]
        return float(last[next(iter(last))].cmc[0])

    def selection_metric(self, results: dict[str, dict[str, RankResult]]) -> tuple[str, float]:
        """``cc_eval.best_metric`` on the first target ('auto': CC mAP if reported, else the
        first protocol's mAP)."""
        first = results[list(results)[0]]
        key = self.options.best_metric
        if key == "auto":
            key = ("cc" if "cc" in first else next(iter(first))) + "_mAP"
        mode, _, metric = key.partition("_")
        if mode not in first or metric not in ("r1", "mAP"):
            raise ValueError(
                f"cc_eval.best_metric '{key}' is not one of "
                f"{[f'{m}_{x}' for m in first for x in ('r1', 'mAP')]}"
            )
        res = first[mode]
        return key, float(res.cmc[0] if metric == "r1" else res.mAP)

    def _update_best(self, results: dict[str, dict[str, RankResult]]) -> None:
        key, value = self.selection_metric(results)
        if self.best is None or value > self.best["value"]:
            self.best = {"metric": key, "value": value, "epoch": self.epoch + 1}
            self.log(f"=> New best {key} = {value:.1%} (epoch {self.epoch + 1})")
            self.save_checkpoint("best", epoch_done=True)

    # ------------------------------------------------------------------ checkpoints
    def state(self, epoch_done: bool = False, batch: int = 0) -> dict:
        """Everything a resume needs; ``state_dict`` holds the weights (torchreid-loadable).

        ``epoch``/``batch``: where training continues (epoch index, first batch not yet run)."""
        return {
            "state_dict": self.unwrapped_model.state_dict(),
            "epoch": self.epoch + 1 if epoch_done else self.epoch,
            "batch": batch,
            "global_step": self.global_step,
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "stages": {s.name: s.state_dict() for s in self.stages},
            "rng": rng_state(),
            "best": self.best,
            "history": self.history,
            "unreadable": {split: dict(counts) for split, counts in self.unreadable.items()},
            "config": self.options.config_dump,
        }

    def save_checkpoint(self, which: str, epoch_done: bool = False, batch: int = 0) -> None:
        """Write ``save_dir/checkpoints/{which}.pth`` atomically (rank 0 only), never from
        non-finite weights (every rank checks, so all stop together)."""
        self.check_weights_finite()
        if self.is_main:
            path = os.path.join(self.options.save_dir, "checkpoints", f"{which}.pth")
            atomic_save(self.state(epoch_done, batch), path)
        if self.options.world_size > 1:
            dist.barrier()

    def save_model(self, epoch: int, rank1: float, save_dir: str, is_best: bool = False) -> None:
        """torchreid's API, kept for callers; works without a scheduler."""
        self.epoch = epoch
        self.save_checkpoint("best" if is_best else "last", epoch_done=True)

    def resume(self, path: str) -> None:
        """Restore the full state written by :meth:`save_checkpoint`; training continues
        exactly where it stopped (same batches, same random numbers)."""
        state = load_checkpoint(path, map_location=self.device)
        missing = [k for k in ("state_dict", "epoch", "stages", "rng") if k not in state]
        if missing:
            raise RuntimeError(
                f"'{path}' is not a full training checkpoint of this plugin (missing "
                f"{missing}); to start from its weights use model.load_weights instead"
            )
        self._load_exact_weights(extract_state_dict(state, path), path, state.get("config", ""))
        if state["optimizer"] is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        for stage in self.stages:
            if stage.name in state["stages"]:
                stage.load_state_dict(state["stages"][stage.name])
        set_rng_state(state["rng"])
        self.start_epoch = int(state["epoch"])
        self.start_batch = int(state["batch"])
        self.global_step = int(state["global_step"])
        self.best = state["best"]
        self.history = {k: [tuple(x) for x in v] for k, v in state["history"].items()}
        self.unreadable = {k: Counter(v) for k, v in state.get("unreadable", {}).items()}
        self.log(
            f"=> Resumed from '{path}': continuing at epoch {self.start_epoch + 1} batch "
            f"{self.start_batch + 1} (after {self.global_step} steps)"
        )

    def _load_exact_weights(self, weights: dict, path: str, saved_config: str) -> None:
        """A resume restores every weight or nothing: refuse, naming the keys and the config
        values that differ, when the checkpoint was written for another model."""
        matched, report = match_state_dict(self.unwrapped_model, weights)
        if not report.complete:
            changed = config_differences(saved_config, self.options.config_dump)
            reason = f"; config values that differ: {'; '.join(changed)}" if changed else ""
            raise CheckpointMismatchError(
                f"cannot resume from '{path}': its weights do not fit this model "
                f"({report.summary()}){reason}. Resume with the config it was written with, or "
                "start from its weights with model.load_weights"
            )
        self.unwrapped_model.load_state_dict(matched)

    def _write_unreadable_list(self, save_dir: str) -> None:
        """Every image replaced or left out during the run, in ``unreadable_images.txt``."""
        if not self.unreadable or not self.is_main:
            return
        path = os.path.join(save_dir, "unreadable_images.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write("# split\ttimes replaced or left out\tpath (cc_data.image_policy 'skip')\n")
            for split, counts in sorted(self.unreadable.items()):
                for image, times in sorted(counts.items()):
                    f.write(f"{split}\t{times}\t{image}\n")
        total = sum(len(c) for c in self.unreadable.values())
        self.log(f"Warning: {total} unreadable image(s) in this run; the list is in '{path}'")


def _summary_writer(log_dir: str) -> Any:
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=log_dir)


def format_results(results: dict[str, dict[str, RankResult]], ranks: Iterable[int]) -> str:
    """One table: a row per (dataset, protocol), R-k and mAP columns, valid query counts."""
    ranks = list(ranks)
    header = f"  {'dataset':<16}{'protocol':<10}" + "".join(f"{'R' + str(r):>8}" for r in ranks)
    header += f"{'mAP':>8}{'queries':>10}"
    lines = ["** Results **", header, "  " + "-" * (len(header) - 2)]
    for name, per_mode in results.items():
        for mode, res in per_mode.items():
            cells = "".join(f"{100 * res.cmc[min(r, len(res.cmc)) - 1]:8.1f}" for r in ranks)
            queries = f"{res.num_valid}" + (f" (-{res.num_skipped})" if res.num_skipped else "")
            lines.append(f"  {name:<16}{mode.upper():<10}{cells}{100 * res.mAP:8.1f}{queries:>10}")
    return "\n".join(lines)
