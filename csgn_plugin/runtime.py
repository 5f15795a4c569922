"""Where and how work runs: device, precision, processes, failures that say what to change.

:class:`Runtime` sits below the engine, the prompt stage and the evaluator; none of them touches
``torch.distributed``, autocast or out-of-memory handling directly. It owns:

* the device, mixed precision (``bf16``, ``fp16`` with a gradient scaler, ``off``),
  ``channels_last`` and CUDA graphs (``graphs``: the static-shape passes replayed from graphs,
  ``graphs.py``);
* DDP: this rank's contiguous shard of an in-order loader, gathers of *tensors* (padded to
  the largest shard and all-gathered, never pickled: a LaST-size gallery is 1.7 GB as objects),
  and the mean over ranks of gradients the DDP wrapper does not see (an objective's parameters);
* out-of-memory errors re-raised with the batch size and what to change, non-finite losses
  reported with the step and the loss terms;
* the throughput of each phase (``throughput.json``) and the images that could not be read
  (``unreadable_images.txt``), both counted over all ranks;
* logging on the main process only;
* what a CPU result depends on besides its inputs (:func:`set_cpu_numerics`): the kernel set
  and the number of torch threads.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Subset

from .errors import UserError
from .fileio import atomic_write_text
from .graphs import GraphedModule
from .progress import Progress, get_logger

__all__ = [
    "CPU_KERNELS",
    "NonFiniteLossError",
    "OutOfMemoryAdvice",
    "Runtime",
    "Throughput",
    "UnreadableImages",
    "set_cpu_numerics",
]

#: ``runtime.cpu_kernels``: 'avx2' (the kernels every x86 CPU with AVX2 runs, Intel or AMD,
#: with or without AVX-512: the same numbers on all of them) or 'native' (the CPU's best)
CPU_KERNELS = ("avx2", "native")
#: the environment that makes torch run its AVX2 kernels: ATen's own dispatch, oneDNN's
#: (convolutions) and MKL's (matrix products, in its reproducible AVX2 mode). Each library reads
#: it when it first computes, so it must be set before any tensor work of the process.
AVX2_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "DNNL_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"}


def set_cpu_numerics(kernels: str, threads: int = 0) -> dict[str, Any]:
    """Fix the kernel set and the torch thread count, the two things besides its inputs that a
    CPU result depends on: on a CPU with AVX-512 the native kernels round otherwise than AVX2
    ones, and more threads split (and so add up) sums otherwise.

    ``kernels``: one of :data:`CPU_KERNELS`; ``threads``: torch's intra-op threads (0: leave
    torch's default, one per core). Returns what this process runs with: ``{'kernels': ATen's
    CPU capability, 'threads': n, 'as_asked': bool}``; ``as_asked`` is False when 'avx2' was
    asked on a CPU that has AVX2 but the process had already chosen other kernels (it computed
    before this call: the choice is made once per process).
    """
    if kernels not in CPU_KERNELS:
        raise ValueError(f"CPU kernels must be one of {CPU_KERNELS}, got {kernels!r}")
    if threads < 0:
        raise ValueError(f"CPU threads must be >= 0 (0: one per core), got {threads}")
    wanted = kernels == "avx2" and torch.cpu._is_avx2_supported()
    if wanted:
        os.environ.update(AVX2_KERNELS)
    if threads:
        torch.set_num_threads(threads)
    capability = torch.backends.cpu.get_cpu_capability()  # decided now if not before
    return {
        "kernels": capability,
        "threads": torch.get_num_threads(),
        "as_asked": capability == "AVX2" or not wanted,
    }


class NonFiniteLossError(UserError, FloatingPointError):
    """A loss (or a weight) became NaN or Inf; the message names where and what to change."""


class OutOfMemoryAdvice(UserError, torch.OutOfMemoryError):
    """Out of GPU memory; the message names the batch size and what to change."""


class Throughput:
    """Items and seconds per phase (items over all ranks, seconds of this process)."""

    def __init__(self) -> None:
        self.phases: dict[str, list[float]] = {}

    def count(self, phase: str, items: float, seconds: float) -> None:
        total = self.phases.setdefault(phase, [0.0, 0.0])
        total[0] += items
        total[1] += seconds

    def clear(self) -> None:
        self.phases.clear()

    def report(self) -> dict[str, dict[str, float]]:
        return {
            phase: {"items": items, "seconds": seconds, "per_second": items / max(seconds, 1e-9)}
            for phase, (items, seconds) in self.phases.items()
        }

    def summary(self) -> str:
        return "Throughput: " + "; ".join(
            f"{phase} {r['per_second']:.1f}/s ({r['items']:.0f} in {r['seconds']:.1f}s)"
            for phase, r in self.report().items()
        )


class UnreadableImages:
    """Images replaced or left out under ``cc_data.image_policy 'skip'``: split -> path -> times."""

    def __init__(self) -> None:
        self.counts: dict[str, Counter] = {}

    def add(self, split: str, paths: list[str]) -> None:
        if paths:
            self.counts.setdefault(split, Counter()).update(paths)

    def write(self, save_dir: str) -> Optional[str]:
        """``save_dir/unreadable_images.txt`` (tab-separated), or None when there were none."""
        if not self.counts:
            return None
        path = os.path.join(save_dir, "unreadable_images.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write("# split\ttimes replaced or left out\tpath (cc_data.image_policy 'skip')\n")
            for split, counts in sorted(self.counts.items()):
                for image, times in sorted(counts.items()):
                    f.write(f"{split}\t{times}\t{image}\n")
        return path

    def state_dict(self) -> dict:
        return {split: dict(counts) for split, counts in self.counts.items()}

    def load_state_dict(self, state: dict) -> None:
        self.counts = {split: Counter(counts) for split, counts in state.items()}


class Runtime:
    """Device, precision and process group of a run (see the module docstring)."""

    def __init__(
        self,
        device: torch.device,
        amp: str,
        channels_last: bool,
        rank: int,
        world_size: int,
        image_size: tuple[int, int],
        graphs: bool = False,
    ) -> None:
        if amp not in ("bf16", "fp16", "off"):
            raise ValueError(f"runtime.amp must be resolved to 'bf16', 'fp16' or 'off', got {amp}")
        self.device = device
        self.amp = amp
        self.channels_last = channels_last
        self.rank = rank
        self.world_size = world_size
        self.image_size = tuple(image_size)
        if graphs and (device.type != "cuda" or world_size > 1):
            raise ValueError("CUDA graphs need a CUDA device and a single process")
        self.graphs = graphs
        self.save_dir = ""  # where the last good checkpoint is, for error messages
        self.throughput = Throughput()
        self.unreadable = UnreadableImages()
        self.logger = get_logger()

    # ------------------------------------------------------------------ processes and logging
    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def log(self, message: str) -> None:
        if self.is_main:
            self.logger.info(message)

    def progress(self, total: Optional[int], desc: str, unit: str) -> Progress:
        """Progress of long work, shown by the main process only."""
        return Progress(total, desc, unit, enabled=self.is_main)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    # ------------------------------------------------------------------ precision and memory
    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp == "off":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.amp == "bf16" else torch.float16
        # a graph replays the casts it captured: autocast's cache of cast weights must be off
        return torch.autocast(
            device_type=self.device.type, dtype=dtype, cache_enabled=not self.graphs
        )

    def make_scaler(self) -> Optional[torch.amp.GradScaler]:
        """fp16's gradient scaler (None for bf16 and fp32, which need none)."""
        return torch.amp.GradScaler(self.device.type) if self.amp == "fp16" else None

    def backward_and_step(
        self,
        loss: torch.Tensor,
        optimizer: torch.optim.Optimizer,
        scaler: Optional[torch.amp.GradScaler],
        average_over_ranks: bool = False,
        update_scaler: bool = True,
    ) -> None:
        """``loss.backward()`` then ``optimizer.step()``; through ``scaler`` when there is one
        (fp16: the loss is scaled before the backward pass, the gradients unscaled before the
        step, and a step whose gradients overflowed is skipped while the scale shrinks).

        ``average_over_ranks``: the gradients of the optimizer's parameters are first averaged
        over the ranks (parameters outside the DDP-wrapped model). ``update_scaler`` False: a step
        with several optimizers updates the scaler once, after its last optimizer (PyTorch's
        recipe for several losses and optimizers)."""
        (loss if scaler is None else scaler.scale(loss)).backward()
        if average_over_ranks:
            self.average_gradients(p for group in optimizer.param_groups for p in group["params"])
        if scaler is None:
            optimizer.step()
            return
        scaler.step(optimizer)
        if update_scaler:
            scaler.update()

    def images(self, imgs: torch.Tensor) -> torch.Tensor:
        """A batch of images on the device, in the memory format the model runs in."""
        imgs = imgs.to(self.device, non_blocking=True)
        if self.channels_last and imgs.dim() == 4:
            imgs = imgs.contiguous(memory_format=torch.channels_last)
        return imgs

    def graphed(self, module: nn.Module, name: str) -> nn.Module:
        """``module`` replayed from CUDA graphs where shapes are static (``graphs``), else itself;
        every capture is logged and timed (``<name>_graph_capture`` in ``throughput.json``)."""
        if not self.graphs:
            return module

        def record(kind: str, seconds: float, what: str, error: Optional[BaseException]) -> None:
            if error is not None:
                reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
                self.log(
                    f"Warning: the {kind} pass of {what} could not be captured as a CUDA graph "
                    f"({type(error).__name__}: {reason}); it runs eagerly"
                )
                return
            phase = f"{name}_graph_capture" if kind == "training" else "eval_graph_capture"
            self.throughput.count(phase, 1, seconds)
            self.log(f"=> CUDA graph of the {kind} pass of {what} captured in {seconds:.1f}s")

        return GraphedModule(module, name, record)

    @contextlib.contextmanager
    def explain_out_of_memory(self, what: str, batch: str, advice: str) -> Iterator[None]:
        """Re-raise a GPU out-of-memory error with the batch size and what to change."""
        try:
            yield
        except torch.OutOfMemoryError as exc:
            height, width = self.image_size
            raise OutOfMemoryAdvice(
                f"out of GPU memory in {what} ({batch}, images {height}x{width}, "
                f"amp '{self.amp}'). To fit: {advice}. Original error: {exc}"
            ) from exc

    # ------------------------------------------------------------------ numerics
    def check_finite(self, value: float, where: str, terms: dict[str, float]) -> None:
        if math.isfinite(value):
            return
        detail = ", ".join(f"{k}={v:.4g}" for k, v in terms.items())
        raise NonFiniteLossError(
            f"non-finite loss at {where} ({detail}). Training stopped; the last checkpoint in "
            f"'{self.save_dir}' is the last good state. Lower the learning rate, use "
            "runtime.amp 'bf16' or 'off', or set runtime.nan_policy 'skip'."
        )

    def all_finite(self, value: torch.Tensor) -> bool:
        """Whether ``value`` is finite on every rank (all must agree before a collective)."""
        finite = torch.isfinite(value.detach()).all().float().reshape(1)
        if self.distributed:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        return bool(finite.item())

    def average_gradients(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Each gradient replaced by its mean over the ranks, as DDP does for the wrapped model's
        parameters (for trained parameters outside it, e.g. an objective's); nothing alone."""
        if not self.distributed:
            return
        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        for grad, mean in zip(grads, flat.split([g.numel() for g in grads])):
            grad.copy_(mean.view_as(grad))

    def mean_over_ranks(self, value: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            value = value.clone()
            dist.all_reduce(value)
            value /= self.world_size
        return value

    # ------------------------------------------------------------------ sharded work
    def shard(self, loader: DataLoader) -> DataLoader:
        """This rank's contiguous share of an in-order loader (the loader itself when alone)."""
        if not self.distributed:
            return loader
        n = len(loader.dataset)
        lo, hi = n * self.rank // self.world_size, n * (self.rank + 1) // self.world_size
        if hasattr(loader, "subset"):  # batches of decoded images (data.cache)
            return loader.subset(range(lo, hi))
        return DataLoader(
            Subset(loader.dataset, range(lo, hi)),
            batch_size=loader.batch_size,
            shuffle=False,
            num_workers=loader.num_workers,
            pin_memory=loader.pin_memory,
            generator=loader.generator,  # not torch's global one (see the data manager)
        )

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate the ranks' shards (dim 0) in rank order, as tensors (identity when alone).

        Shards may differ in length: each is padded to the longest, all-gathered, then trimmed.
        """
        if not self.distributed:
            return tensor
        home = tensor.device
        local = tensor.to(self.device).contiguous()
        length = torch.tensor([local.shape[0]], device=self.device)
        lengths = [torch.zeros_like(length) for _ in range(self.world_size)]
        dist.all_gather(lengths, length)
        longest = int(max(int(n) for n in lengths))
        padded = local.new_zeros((longest, *local.shape[1:]))
        padded[: local.shape[0]] = local
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded)
        return torch.cat([p[: int(n)] for p, n in zip(parts, lengths)]).to(home)

    def gather_strings(self, items: list[str]) -> list[str]:
        """All ranks' short lists of strings (file names), in rank order."""
        if not self.distributed:
            return items
        parts: list[Any] = [None] * self.world_size
        dist.all_gather_object(parts, items)
        return [item for part in parts for item in part]

    def map_loader(
        self,
        loader: DataLoader,
        fn: Callable[[dict], dict[str, torch.Tensor]],
        what: str,
        unit: str = "img",
    ) -> dict[str, torch.Tensor]:
        """``fn(batch) -> {key: tensor}`` over this rank's shard of an in-order loader, each key
        concatenated and gathered over ranks in dataset order, with progress; an out-of-memory
        error names ``what`` and ``test.batch_size``."""
        outputs: dict[str, list[torch.Tensor]] = {}
        shard = self.shard(loader)
        oom = self.explain_out_of_memory(
            what,
            f"test.batch_size={loader.batch_size}",
            "lower test.batch_size or use runtime.amp 'bf16'",
        )
        with oom, self.progress(len(shard.dataset), what, unit) as progress:
            for data in shard:
                for key, value in fn(data).items():
                    outputs.setdefault(key, []).append(value)
                progress.update(len(data["pid"]))
        return {key: self.gather(torch.cat(values)) for key, values in outputs.items()}

    # ------------------------------------------------------------------ bookkeeping
    def report_unreadable(self, paths: list[str], split: str, where: str) -> None:
        """Count the images a pass over ``split`` replaced (all ranks') and warn once."""
        paths = self.gather_strings(paths)
        if not paths:
            return
        self.unreadable.add(split, paths)
        files = sorted(set(paths))
        self.log(
            f"Warning: {where}: {len(paths)} item(s) replaced by another image of the same "
            f"identity because {len(files)} image(s) cannot be read (cc_data.image_policy "
            f"'skip'): {', '.join(files[:10])}{', ...' if len(files) > 10 else ''}"
        )

    def write_reports(self, save_dir: str) -> None:
        """``throughput.json`` and ``unreadable_images.txt`` (main process)."""
        if not self.is_main:
            return
        if self.throughput.phases:
            self.log(self.throughput.summary())
            report = json.dumps(self.throughput.report(), indent=2)
            atomic_write_text(os.path.join(save_dir, "throughput.json"), report)
        path = self.unreadable.write(save_dir)
        if path:
            total = sum(len(c) for c in self.unreadable.counts.values())
            self.log(f"Warning: {total} unreadable image(s) in this run; the list is in '{path}'")
