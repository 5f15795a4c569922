"""Contrastive pretraining of one SynthCLIP tower: deterministic, resumable, step-scheduled.

* **Deterministic.** The model is initialised from ``settings.seed``; which images form step
  ``s``'s batch (a per-epoch permutation of the training split) and which of them are flipped are
  functions of (seed, s), not of a generator's history. So a run is a function of its settings,
  for one torch build, kernel set and thread count (CPU kernels may round otherwise with AVX-512
  or sum in another order with more threads): training runs single-threaded by default, and the
  cache (``cache.py``) trains with AVX2 kernels.
* **Resumable.** Every ``checkpoint_every`` steps the model, AdamW's state, the step and the loss
  history go to ``progress.pt`` atomically; a run that finds it continues from there and, as
  nothing else carries state, ends bit-identical to an uninterrupted run.
* **Scheduled by steps.** Linear warm-up over ``warmup_steps``, then a cosine to zero at
  ``steps``: on a shared CPU the throughput varies tenfold, a schedule of steps does not.
* **Only the token rows the captions use are trained.** The text tower's token table has 49,408
  rows (open_clip's vocabulary, which ReID prompts tokenise with); the corpus's captions use a few
  dozen. A row that no batch looks up has no gradient, so AdamW's moments stay zero and its only
  change is the decoupled weight decay, ``row *= 1 - lr_t * weight_decay`` each step. The steps
  therefore train just the used rows (:class:`UsedRowsEmbedding`) and the export applies the
  product of those factors to the other rows at once: the table AdamW would give over the whole
  table, up to float rounding of the unused rows, for a step that no longer reads, zeroes and
  updates 3.2M entries.
* The loss is open_clip's ``ClipLoss`` (symmetric InfoNCE over the batch) with CLIP's learned
  temperature, clamped at 100 as OpenAI did; AdamW with CLIP's betas (0.9, 0.98), no weight decay
  on gains, biases, norms and the temperature.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, fields
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from torch import nn

from ..data.synth.corpus import Corpus
from ..fileio import atomic_save, fault_point
from ..progress import Progress, format_duration, get_logger
from .towers import build_training_clip, check_tower, tokenize

PROGRESS = "progress.pt"
#: bump when a change here changes the weights a given set of settings produces
TRAINING_VERSION = 2  # 2: used token rows trained, the others decayed in closed form


@dataclass(frozen=True)
class PretrainSettings:
    """Everything that decides a SynthCLIP tower's weights (and so its cache entry)."""

    tower: str = "vit"
    corpus: str = "default"  # captioned-corpus preset
    corpus_seed: int = 0
    steps: int = 1600
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 100
    seed: int = 0
    hflip: bool = True
    norm_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    norm_std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def __post_init__(self) -> None:
        check_tower(self.tower)

        def fail(field: str, expected: str) -> None:
            raise ValueError(
                f"SynthCLIP setting {field} = {getattr(self, field)!r}: expected {expected}"
            )

        for field in ("steps", "batch_size"):
            if not isinstance(getattr(self, field), int) or getattr(self, field) < 1:
                fail(field, "a positive integer")
        if self.batch_size < 2:
            fail("batch_size", "at least 2 (a contrastive batch needs negatives)")
        if not 0 <= self.warmup_steps < self.steps:
            fail("warmup_steps", f"0 <= warmup_steps < steps = {self.steps}")
        if not self.lr > 0 or self.weight_decay < 0:
            fail("lr", "lr > 0 and weight_decay >= 0")
        for field in ("norm_mean", "norm_std"):
            if len(getattr(self, field)) != 3:
                fail(field, "3 values")

    def to_dict(self) -> dict:
        return {**asdict(self), "norm_mean": list(self.norm_mean), "norm_std": list(self.norm_std)}

    @classmethod
    def from_dict(cls, values: dict) -> PretrainSettings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown SynthCLIP settings {unknown}; known: {sorted(known)}")
        values = dict(values)
        for key in ("norm_mean", "norm_std"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


def learning_rate(settings: PretrainSettings, step: int) -> float:
    """The learning rate of ``step`` (0-based): linear warm-up to ``lr`` over ``warmup_steps``
    (step 0 gets lr / warmup_steps), then a cosine from ``lr`` to 0 at ``steps``."""
    if step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / (settings.steps - settings.warmup_steps)
    return 0.5 * settings.lr * (1.0 + math.cos(math.pi * progress))


def batch_indices(settings: PretrainSettings, train_index: np.ndarray, step: int) -> np.ndarray:
    """Corpus indices of ``step``'s batch: consecutive slices of a per-epoch permutation of the
    training split (the last incomplete slice of an epoch is skipped)."""
    per_epoch = len(train_index) // settings.batch_size
    if per_epoch < 1:
        raise ValueError(
            f"the corpus's training split has {len(train_index)} images, fewer than one batch "
            f"of {settings.batch_size}"
        )
    epoch, position = divmod(step, per_epoch)
    order = np.random.default_rng([settings.seed, 0, epoch]).permutation(len(train_index))
    return train_index[order[position * settings.batch_size : (position + 1) * settings.batch_size]]


def flip_mask(settings: PretrainSettings, step: int) -> np.ndarray:
    """Which images of ``step``'s batch are mirrored (half of them on average)."""
    if not settings.hflip:
        return np.zeros(settings.batch_size, dtype=bool)
    return np.random.default_rng([settings.seed, 1, step]).random(settings.batch_size) < 0.5


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """CLIP's split: no decay on 1-d parameters (gains, biases, norms) and the temperature."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if param.ndim < 2 or "logit_scale" in name else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def weight_decay_factor(settings: PretrainSettings) -> float:
    """What AdamW's decoupled weight decay alone does to a weight over the whole schedule:
    the product over the steps of ``1 - lr_t * weight_decay`` (in float64)."""
    factors = [
        1.0 - learning_rate(settings, step) * settings.weight_decay
        for step in range(settings.steps)
    ]
    return float(np.prod(np.asarray(factors, dtype=np.float64)))


class UsedRowsEmbedding(nn.Module):
    """A token table of which only the ``used`` rows are parameters (``weight``, one row per
    used token id, in id order); looks tokens up as the whole table would. Made from a whole
    table and turned back into one by :meth:`whole_table`."""

    def __init__(self, table: torch.Tensor, used: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(table[used].clone())
        row = torch.full((table.shape[0],), -1, dtype=torch.long)
        row[used] = torch.arange(len(used))
        self.register_buffer("row", row)  # token id -> row of weight (-1: not trained)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.embedding(self.row[tokens], self.weight)

    def whole_table(self, initial: torch.Tensor, decay: float) -> nn.Embedding:
        """The whole table: the rows never trained are ``initial``'s times ``decay``, the used
        rows are the trained ones."""
        table = initial * decay
        used = self.row >= 0
        table[used] = self.weight.detach()[self.row[used]]
        return nn.Embedding.from_pretrained(table, freeze=False)


def _images(
    images: torch.Tensor,
    index: np.ndarray,
    flips: np.ndarray,
    mean: torch.Tensor,
    std: torch.Tensor,
) -> torch.Tensor:
    """The normalised float batch (B, 3, H, W) of corpus images ``index`` (uint8 (N, H, W, 3)
    tensor ``images``), the ``flips`` rows mirrored (on the bytes: a quarter of the memory)."""
    x = images.index_select(0, torch.from_numpy(index))
    flipped = torch.from_numpy(flips).view(-1, 1, 1, 1)
    x = torch.where(flipped, x.flip(2), x).permute(0, 3, 1, 2).float()
    return x.mul_(1.0 / (255.0 * std)).sub_(mean / std)


def _loss_summary(losses: list[float]) -> dict:
    """Mean loss over the first and last 5% of the steps and at each quarter."""
    n = len(losses)
    window = max(1, n // 20)

    def mean(lo: int, hi: int) -> float:
        lo = max(0, lo)
        return round(float(np.mean(losses[lo : max(lo + 1, hi)])), 4)

    summary = {"first": mean(0, window), "last": mean(n - window, n)}
    for quarter in (1, 2, 3):
        end = n * quarter // 4
        summary[f"at_{quarter * 25}%"] = mean(end - window, end)
    return summary


@dataclass
class PretrainResult:
    """What :func:`pretrain` returns: the trained model (tall, training layout) and its record."""

    model: nn.Module
    losses: list[float]
    steps_run: int  # steps run by this call (0 when the progress file was already complete)
    seconds: float  # wall time of this call's steps
    resumed_from: int  # step the run resumed from (0: a fresh start)

    def summary(self) -> dict:
        return {
            "loss": _loss_summary(self.losses),
            "steps_run_this_call": self.steps_run,
            "resumed_from_step": self.resumed_from,
            "seconds_this_call": round(self.seconds, 1),
        }


def pretrain(
    corpus: Corpus,
    settings: PretrainSettings,
    work_dir: str,
    checkpoint_every: int = 100,
    log_every: int = 50,
    progress_bar: Optional[bool] = None,
    log: Optional[Callable[[str], None]] = None,
    threads: int = 1,
) -> PretrainResult:
    """Train one tower on the corpus's training split, resuming from ``work_dir/progress.pt``.

    ``progress_bar``: the package's progress bar (default: on the main process, when stderr is a
    terminal; False: none); a log line with the loss, learning rate, rate and ETA goes to ``log``
    every ``log_every`` steps either way.
    ``threads``: torch threads while training (restored afterwards). One by default: the result
    then does not depend on the machine's core count, and two towers train side by side in two
    processes (``cache.ensure_synthclip_towers``), which uses two cores better than two threads.
    """
    log = log or get_logger().info
    if checkpoint_every < 1 or log_every < 1 or threads < 1:
        raise ValueError("checkpoint_every, log_every and threads must be >= 1")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _train(corpus, settings, work_dir, checkpoint_every, log_every, progress_bar, log)
    finally:
        torch.set_num_threads(previous)


def _train(
    corpus: Corpus,
    settings: PretrainSettings,
    work_dir: str,
    checkpoint_every: int,
    log_every: int,
    progress_bar: Optional[bool],
    log: Callable[[str], None],
) -> PretrainResult:
    image_size = tuple(corpus.images.shape[1:3])
    torch.manual_seed(settings.seed)
    model = build_training_clip(settings.tower, image_size)
    model.train()
    tokens = tokenize(corpus.captions, int(model.positional_embedding.shape[0]))
    initial_table = model.token_embedding.weight.detach().clone()
    used = torch.unique(tokens[torch.from_numpy(corpus.train_index)])
    model.token_embedding = UsedRowsEmbedding(initial_table, used)
    # fused: one kernel over all tensors rather than a loop of small ones
    optimizer = torch.optim.AdamW(
        _param_groups(model, settings.weight_decay),
        lr=settings.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
        fused=True,
    )
    images = torch.from_numpy(corpus.images)
    criterion = ClipLoss()
    mean = torch.tensor(settings.norm_mean).view(1, 3, 1, 1)
    std = torch.tensor(settings.norm_std).view(1, 3, 1, 1)

    os.makedirs(work_dir, exist_ok=True)
    progress_path = os.path.join(work_dir, PROGRESS)
    start, losses = 0, []
    if os.path.isfile(progress_path):
        state = torch.load(progress_path, map_location="cpu", weights_only=True)
        if state.get("settings") != settings.to_dict() or state.get("version") != TRAINING_VERSION:
            raise ValueError(
                f"'{progress_path}' is the progress of other settings ({state.get('settings')}); "
                f"these are {settings.to_dict()}. Delete it to start afresh."
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, losses = int(state["step"]), list(state["losses"])
        log(f"SynthCLIP {settings.tower}: resuming at step {start}/{settings.steps}")

    def save(step: int) -> None:
        atomic_save(
            {
                "version": TRAINING_VERSION,
                "settings": settings.to_dict(),
                "step": step,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "losses": losses,
            },
            progress_path,
        )

    # the bar only (False: none, e.g. side-by-side towers); the log lines below carry the ETA
    bar = Progress(
        settings.steps - start,
        f"SynthCLIP {settings.tower}",
        "step",
        enabled=progress_bar,
        log_every_s=math.inf,
    )
    began = time.perf_counter()
    for step in range(start, settings.steps):
        lr = learning_rate(settings, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        index = batch_indices(settings, corpus.train_index, step)
        batch = _images(images, index, flip_mask(settings, step), mean, std)
        image_features, text_features, scale = model(batch, tokens[torch.from_numpy(index)])
        loss = criterion(image_features, text_features, scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0.0, math.log(100.0))
        losses.append(loss.item())
        done = step + 1
        if done % checkpoint_every == 0 or done == settings.steps:
            save(done)
        fault_point("pretrain_step")
        bar.update()
        if done % log_every == 0 or done == settings.steps:
            elapsed = time.perf_counter() - began
            rate = (done - start) / max(elapsed, 1e-9)
            recent = float(np.mean(losses[-log_every:]))
            log(
                f"SynthCLIP {settings.tower}: step {done}/{settings.steps} loss {recent:.3f} "
                f"lr {lr:.2e} temp {model.logit_scale.exp().item():.1f} | "
                f"{rate * settings.batch_size:.0f} img/s, elapsed {format_duration(elapsed)}, "
                f"ETA {format_duration((settings.steps - done) / max(rate, 1e-9))}"
            )
    bar.close()
    model.token_embedding = model.token_embedding.whole_table(
        initial_table, weight_decay_factor(settings)
    )
    return PretrainResult(
        model=model,
        losses=losses,
        steps_run=settings.steps - start,
        seconds=time.perf_counter() - began,
        resumed_from=start,
    )
