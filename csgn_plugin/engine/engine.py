"""``CCEngine``: torchreid's Engine as a thin loop - stages, epochs, steps - with helpers beside it.

The engine keeps torchreid's interface (``run(...)`` with the same arguments, ``train``, ``test``,
``forward_backward``, ``register_model``, the tensorboard writer) and holds the loop only. What a
loop needs lives next to it, each in one place, received ready-made from ``builders``:

* the :class:`~csgn_plugin.runtime.Runtime` (device, precision, DDP, failures, throughput);
* the objective (``losses.objective``): outputs + labels -> loss terms, whatever the model, and
  the optimizers of the parameters it owns (``auxiliary_optimizers``, one per auxiliary loss);
* the :class:`~csgn_plugin.evaluation.Evaluator` (extract, rank, tabulate);
* the stages (``engine.stages``: the CSGN prompt stage), run before the epoch loop;
* the :class:`~csgn_plugin.engine.checkpoint.Checkpointer` (whole state, atomic, exact resume).

A step: the model's forward; the objective's auxiliary losses, each backpropagated and stepped by
its own optimizer (their gradients averaged over ranks under DDP); the main loss, computed after
them; its backward and the model optimizer's step; with fp16, one gradient scaler for all of them
(PyTorch's recipe for several optimizers: every loss scaled, every optimizer stepped through the
scaler, one update per step). A run: pending stages (each ``run`` then ``attach``), then for
each epoch ``objective.set_epoch`` and ``train`` (steps; losses read once per logging window,
which is where non-finite losses stop the run), evaluation when
due (the best checkpoint by ``cc_eval.best_metric``), the ``last`` checkpoint every
``runtime.checkpoint_period`` epochs. ``run(test_only=True)`` evaluates and writes nothing of the
training state: its table, JSON and ranked images go to an evaluation folder.
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Optional

import torch
from torch import nn

from ..compat import torchreid_api
from ..evaluation.evaluator import Evaluator, call_model
from ..fileio import fault_point
from ..losses.objective import Labels, LossTerms, Objective
from ..runtime import Runtime
from .checkpoint import Checkpointer
from .stages import Stage, StageContext

tr = torchreid_api()

__all__ = ["CCEngine", "LoopOptions", "unwrap_model"]


@dataclass(frozen=True)
class LoopOptions:
    """The ``runtime`` keys the loop reads (built by ``builders.loop_options``)."""

    checkpoint_period: int  # epochs between 'last' checkpoints (0: only at the end)
    checkpoint_iters: int  # also every N steps inside an epoch (0: off)
    nan_policy: str  # 'stop' (at the next log) or 'skip' (checks every step)
    plot: bool


def unwrap_model(model: nn.Module) -> nn.Module:
    """The user's module inside DDP and/or torch.compile wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if inner is None:
            return model
        model = inner


class CCEngine(tr.engine.Engine):
    """Trains any torchreid model or CSGN and evaluates with the clothes-changing protocols."""

    def __init__(
        self,
        datamanager: Any,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        objective: Objective,
        runtime: Runtime,
        evaluator: Evaluator,
        options: LoopOptions,
        stages: Sequence[Stage] = (),
        model_spec: Optional[dict] = None,
        config_dump: str = "",
        auxiliary_optimizers: Optional[dict[str, torch.optim.Optimizer]] = None,
    ) -> None:
        super().__init__(datamanager, runtime.device.type == "cuda")
        self.model = model
        self.unwrapped_model = unwrap_model(model)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.register_model("model", model, optimizer, scheduler)
        self.objective = objective
        self.auxiliary_optimizers = dict(auxiliary_optimizers or {})
        missing = sorted(set(objective.auxiliary_parameters()) - set(self.auxiliary_optimizers))
        if missing:
            raise ValueError(f"no optimizer for the objective's auxiliary losses {missing}")
        self.runtime = runtime
        self.evaluator = evaluator
        self.options = options
        self.stages = list(stages)
        self.scaler = runtime.make_scaler()
        self.checkpointer = Checkpointer(
            runtime,
            self.unwrapped_model,
            model_spec,
            config_dump,
            {
                "optimizer": optimizer,
                "scheduler": scheduler,
                "scaler": self.scaler,
                "objective": objective,
                **{f"optimizer_{k}": v for k, v in self.auxiliary_optimizers.items()},
            },
            self.stages,
        )
        self._trainable = {n: p.requires_grad for n, p in self.unwrapped_model.named_parameters()}
        self.max_epoch = 0
        self.start_epoch = 0
        self.start_batch = 0
        self.batch_idx = 0
        self.num_batches = 0
        self.global_step = 0
        self.skipped_steps = 0
        self._warmed_up = False
        self._train_batches: Any = None  # the run's loader iterator over all its epochs
        self.best: dict | None = None
        self.history: dict[str, list] = {}
        self.last_results: dict = {}

    # ------------------------------------------------------------------ bookkeeping
    def get_current_lr(self, names: Any = None) -> float:
        """The base lr (first parameter group), not torchreid's last group, which is the bias
        group (``train.bias_lr_factor`` x lr) of the plugin's optimizers."""
        return self._optims[self.get_model_names(names)[0]].param_groups[0]["lr"]

    def record(self, key: str, step: int, value: float) -> None:
        """Keep a scalar for the plots and the tensorboard log."""
        self.history.setdefault(key, []).append((step, value))
        if self.writer is not None:
            self.writer.add_scalar(key, value, step)

    def progress(self, epoch_done: bool = False, batch: int = 0) -> dict:
        """The loop's part of a checkpoint: where training continues (epoch index, first batch
        not yet run), the step count, the best metric, the history, unreadable images."""
        return {
            "epoch": self.epoch + 1 if epoch_done else self.epoch,
            "batch": batch,
            "global_step": self.global_step,
            "best": self.best,
            "history": self.history,
            "unreadable": self.runtime.unreadable.state_dict(),
        }

    def save_checkpoint(self, which: str, epoch_done: bool = False, batch: int = 0) -> None:
        self.checkpointer.save(
            which, self.progress(epoch_done, batch), where=f"step {self.global_step}"
        )

    def save_model(self, epoch: int, rank1: float, save_dir: str, is_best: bool = False) -> None:
        """torchreid's API, kept for callers; works without a scheduler."""
        self.epoch = epoch
        self.save_checkpoint("best" if is_best else "last", epoch_done=True)

    def resume(self, path: str) -> None:
        """Restore the whole state written by :meth:`save_checkpoint`; training continues
        exactly where it stopped (same batches, same random numbers)."""
        state = self.checkpointer.resume(path)
        self.start_epoch = int(state["epoch"])
        self.start_batch = int(state["batch"])
        self.global_step = int(state["global_step"])
        self.best = state["best"]
        self.history = {k: [tuple(x) for x in v] for k, v in state["history"].items()}
        self.runtime.unreadable.load_state_dict(state.get("unreadable", {}))
        self.runtime.log(
            f"=> Resumed from '{path}': continuing at epoch {self.start_epoch + 1} batch "
            f"{self.start_batch + 1} (after {self.global_step} steps)"
        )

    # ------------------------------------------------------------------ one step
    def forward_backward(self, data: dict) -> dict[str, torch.Tensor]:
        per_process = self.datamanager.train_loader.batch_size
        oom = self.runtime.explain_out_of_memory(
            "a training step",
            f"train.batch_size={per_process * self.runtime.world_size}, {per_process} per process",
            "lower train.batch_size (keep it a multiple of sampler.num_instances; scale train.lr "
            "with it), use runtime.amp 'bf16' (or 'fp16'), lower data.height/data.width, or "
            "spread the batch over more GPUs with torchrun",
        )
        with oom:
            return self._step(data)

    def _labels(self, data: dict) -> Labels:
        device = self.runtime.device
        clothes = data.get("clothes_id")
        return Labels(
            pid=data["pid"].to(device, non_blocking=True),
            camid=data["camid"].to(device, non_blocking=True),
            clothes_id=None if clothes is None else clothes.to(device, non_blocking=True),
        )

    def _step(self, data: dict) -> dict[str, torch.Tensor]:
        """One optimisation step; returns the detached loss terms (and logged details)."""
        runtime = self.runtime
        imgs = runtime.images(data["img"])
        labels = self._labels(data)
        with runtime.autocast():
            outputs = call_model(self.model, imgs, labels.camid)
            auxiliary = self.objective.auxiliary_losses(outputs, labels)
        finite = self._finite(list(auxiliary.terms.values()))
        if finite:  # parameters the objective owns, trained before the main loss is computed
            for name, loss in auxiliary.terms.items():
                optimizer = self.auxiliary_optimizers[name]
                optimizer.zero_grad(set_to_none=True)
                # not in the DDP-wrapped model: averaged here; the scaler updates after the last
                runtime.backward_and_step(
                    loss, optimizer, self.scaler, average_over_ranks=True, update_scaler=False
                )
        with runtime.autocast():
            losses = self.objective(outputs, labels)
        loss = losses.total
        self.optimizer.zero_grad(set_to_none=True)
        if not (finite and self._finite([loss])):
            return self._skip(losses, auxiliary, stepped=finite and bool(auxiliary.terms))
        runtime.backward_and_step(loss, self.optimizer, self.scaler)  # the scaler's one update
        return {**losses.logged(), **auxiliary.logged()}

    def _finite(self, values: list[torch.Tensor]) -> bool:
        """False when ``runtime.nan_policy`` is 'skip' and a value is not finite on some rank."""
        if self.options.nan_policy != "skip" or not values:
            return True
        return self.runtime.all_finite(torch.stack([v.detach().float() for v in values]))

    def _skip(self, losses: LossTerms, auxiliary: LossTerms, stepped: bool) -> dict:
        """Leave out a step whose loss is not finite (``stepped``: its auxiliary optimizers have
        stepped already); its logged values count as zeros."""
        self.skipped_steps += 1
        logged = {**losses.logged(), **auxiliary.logged()}
        detail = ", ".join(f"{k}={v.item():.4g}" for k, v in logged.items())
        self.runtime.log(
            f"Warning: skipped step {self.global_step + 1} (epoch {self.epoch + 1} batch "
            f"{self.batch_idx + 1}) with a non-finite loss ({detail}); runtime.nan_policy 'skip'"
        )
        if stepped and self.scaler is not None:
            self.scaler.update()
        return {k: torch.zeros_like(v) for k, v in logged.items()}

    # ------------------------------------------------------------------ one epoch
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
            self.runtime.log(f"* Only train {layers} (epoch: {epoch + 1}/{fixbase_epoch})")

    def train(self, print_freq: int = 10, fixbase_epoch: int = 0, open_layers: Any = None) -> None:
        """One epoch. Inside :meth:`run` its batches come from the run's one loader iterator
        (the sampler streams epoch after epoch, so the workers never wait for an epoch to
        start); called alone, it iterates over this epoch only."""
        self.set_model_mode("train")
        self.objective.set_epoch(self.epoch)
        self.two_stepped_transfer_learning(self.epoch, fixbase_epoch, open_layers)
        sampler = self.datamanager.train_sampler
        batches = self._train_batches
        if batches is None:
            sampler.set_epoch(self.epoch, self.start_batch)
            batches = iter(self.train_loader)
        self.num_batches = sampler.num_batches(self.epoch)
        batch_size = self.datamanager.train_loader.batch_size
        sums: dict[str, torch.Tensor] = {}
        count = 0
        window_start = time.time()
        unreadable: list[str] = []
        for batch_idx in range(self.start_batch, self.num_batches):
            data = next(batches)
            self.batch_idx = batch_idx
            unreadable += [p for p in data.get("unreadable_path", ()) if p]
            for k, v in self.forward_backward(data).items():
                sums[k] = sums[k] + v if k in sums else v.clone()
            count += 1
            self.global_step += 1
            fault_point("train_step")
            every = self.options.checkpoint_iters
            if every and self.global_step % every == 0 and self.batch_idx + 1 < self.num_batches:
                self._window_means(sums, count)  # no checkpoint after a non-finite loss
                self.save_checkpoint("last", batch=self.batch_idx + 1)
            if (self.batch_idx + 1) % print_freq == 0 or self.batch_idx + 1 == self.num_batches:
                self._log_window(sums, count, batch_size, time.time() - window_start)
                sums, count, window_start = {}, 0, time.time()
        self.runtime.report_unreadable(unreadable, "train", f"epoch {self.epoch + 1}")
        self.start_batch = 0
        self.update_lr()

    def _window_means(self, sums: dict[str, torch.Tensor], count: int) -> dict[str, float]:
        """Mean loss values of the current window (over all ranks); raises if non-finite."""
        names = list(sums)
        stacked = self.runtime.mean_over_ranks(torch.stack([sums[k].float() for k in names]))
        means = dict(zip(names, (stacked / count).tolist()))  # the one host sync per window
        first_batch, first_step = self.batch_idx + 2 - count, self.global_step + 1 - count
        where = (
            f"epoch {self.epoch + 1} batches {first_batch}-{self.batch_idx + 1} "
            f"(steps {first_step}-{self.global_step})"
        )
        self.runtime.check_finite(sum(means.values()), where, means)
        return means

    def _log_window(
        self, sums: dict[str, torch.Tensor], count: int, batch_size: int, seconds: float
    ) -> None:
        means = self._window_means(sums, count)  # synchronises: the time is the work's
        # the run's first window holds worker start-up, autotuning and compilation: apart
        phase = "stage2_train_img" if self._warmed_up else "stage2_warmup_img"
        self._warmed_up = True
        self.runtime.throughput.count(phase, count * batch_size * self.runtime.world_size, seconds)
        for k, v in means.items():
            self.record(f"Train/{k}", self.global_step, v)
        lr = self.get_current_lr()
        self.record("Train/lr", self.global_step, lr)
        rate = count * batch_size / max(seconds, 1e-9)
        loss_text = " ".join(f"{k} {v:.4f}" for k, v in means.items())
        self.runtime.log(
            f"epoch: [{self.epoch + 1}/{self.max_epoch}][{self.batch_idx + 1}/{self.num_batches}]"
            f"  {loss_text}  lr {lr:.2e}  {rate:.1f} img/s"
        )

    # ------------------------------------------------------------------ the run
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
        dist_metric: Optional[str] = None,
        normalize_feature: Optional[bool] = None,
        visrank: bool = False,
        visrank_topk: Optional[int] = None,
        use_metric_cuhk03: bool = False,
        ranks: Optional[Sequence[int]] = None,
        rerank: Optional[bool] = None,
    ) -> None:
        """torchreid's ``run``: stages first, then the epoch loop, evaluation and checkpoints.

        The evaluation arguments left at ``None`` keep the evaluator's configured values.
        """
        if use_metric_cuhk03:
            raise ValueError("the CUHK03 metric is not supported (cuhk03.use_metric_cuhk03)")
        given = {
            "dist_metric": dist_metric,
            "normalize_feature": normalize_feature,
            "visrank_topk": visrank_topk,
            "ranks": tuple(ranks) if ranks is not None else None,
            "rerank": rerank,
        }
        changes = {k: v for k, v in given.items() if v is not None}
        if changes:
            self.evaluator.options = replace(self.evaluator.options, **changes)
        self.runtime.save_dir = save_dir
        if test_only:
            self.evaluate_only(save_dir, visrank)
            return
        if self.writer is None and self.runtime.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=save_dir)
        started = time.time()
        self.max_epoch = max_epoch
        self.run_stages()
        self.set_model_mode("train")
        first = max(start_epoch, self.start_epoch)
        self.runtime.log(f"=> Start training (epochs {first + 1}..{max_epoch})")
        if first < max_epoch:
            self.datamanager.train_sampler.stream_from(first, self.start_batch)
            self._train_batches = iter(self.train_loader)
        for self.epoch in range(first, max_epoch):
            self.train(print_freq=print_freq, fixbase_epoch=fixbase_epoch, open_layers=open_layers)
            last = self.epoch + 1 == max_epoch
            due = eval_freq > 0 and (self.epoch + 1) % eval_freq == 0
            if last or (due and self.epoch + 1 >= start_eval):
                self.test(visrank=visrank and last, save_dir=save_dir)
            period = self.options.checkpoint_period
            if last or (period > 0 and (self.epoch + 1) % period == 0):
                self.save_checkpoint("last", epoch_done=True)
        self._train_batches = None  # ends the stream (and its workers' prefetching)
        if max_epoch == 0 or first >= max_epoch:
            self.test(visrank=visrank, save_dir=save_dir)
        self.runtime.log(f"Elapsed {datetime.timedelta(seconds=round(time.time() - started))}")
        self.finish(save_dir)

    def run_stages(self) -> None:
        """Run the stages not yet finished, then let every stage hand on its products."""
        context = StageContext(
            runtime=self.runtime,
            model=self.unwrapped_model,
            datamanager=self.datamanager,
            save_checkpoint=lambda: self.save_checkpoint("last"),
            record=self.record,
            checkpoint_period=self.options.checkpoint_period,
        )
        for stage in self.stages:
            if not stage.finished:
                stage.run(context)
            stage.attach(context)

    def finish(self, save_dir: str) -> None:
        self.runtime.write_reports(save_dir)
        if self.options.plot and self.runtime.is_main:
            from .plots import plot_history

            plot_history(self.history, self.last_results, save_dir)
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    # ------------------------------------------------------------------ evaluation
    def test(self, visrank: bool = False, save_dir: str = "") -> float:
        """Evaluate every target under its protocols during training: one table, the metrics
        recorded, the best checkpoint kept. Returns rank-1 of the first protocol of the last
        target (torchreid's convention)."""
        results = self.evaluator.evaluate(self.model, visrank, save_dir or self.runtime.save_dir)
        self.last_results = results
        self.runtime.log(self.evaluator.format(results))
        for name, per_mode in results.items():
            for mode, res in per_mode.items():
                self.record(f"Test/{name}/{mode}/rank1", self.epoch + 1, float(res.cmc[0]))
                self.record(f"Test/{name}/{mode}/mAP", self.epoch + 1, float(res.mAP))
        if self.runtime.is_main:
            path = os.path.join(self.runtime.save_dir, "results.json")
            self.evaluator.write_json(results, path, {"epoch": self.epoch + 1})
        key, value = self.evaluator.selection_metric(results)
        if self.best is None or value > self.best["value"]:
            self.best = {"metric": key, "value": value, "epoch": self.epoch + 1}
            self.runtime.log(f"=> New best {key} = {value:.1%} (epoch {self.epoch + 1})")
            self.save_checkpoint("best", epoch_done=True)
        last = results[list(results)[-1]]
        return float(last[next(iter(last))].cmc[0])

    def evaluate_only(self, save_dir: str, visrank: bool) -> dict:
        """Evaluate the model as it is: the table, ``results.json`` and ranked images in
        ``save_dir``; no best bookkeeping, no checkpoint, nothing of the training state."""
        results = self.evaluator.evaluate(self.model, visrank, save_dir)
        self.last_results = results
        self.runtime.log(self.evaluator.format(results))
        if self.runtime.is_main:
            os.makedirs(save_dir, exist_ok=True)
            self.evaluator.write_json(results, os.path.join(save_dir, "results.json"))
        self.runtime.write_reports(save_dir)
        return results
