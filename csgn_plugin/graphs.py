"""CUDA graphs of calls whose shapes do not change: the host launches a whole pass at once.

The plugin's steps are host-bound on a fast GPU (Python, autograd and operator dispatch take
longer than the kernels they launch). A CUDA graph records the kernels of one call and replays
them with one launch. :class:`GraphedModule` wraps a module (the stage-2 model, a stage-1 text
pass) and replays its calls from graphs:

* with autograd on (training), the forward *and* backward passes
  (``torch.cuda.make_graphed_callables``): the first call captures them, later calls with the
  same key (the inputs' shapes, dtypes and strides, the modules' train/eval flags, which
  parameters require gradients, the autocast state) replay them; the loss, the optimiser and
  the rest of the step stay eager;
* with autograd off (evaluation), the forward pass, one graph per batch shape; a smaller batch
  (the last one of a split) is padded to the captured size and its outputs trimmed, which is
  exact for models that treat samples independently in eval mode (BatchNorm uses its running
  statistics; the plugin's models and torchreid's do).

The backward graph hands out its gradients in its own buffers: the step must drop them between
steps (``zero_grad(set_to_none=True)``, as the engine and the prompt stage do) rather than zero
them in place. Capture runs a few warm-up passes (``make_graphed_callables``: 3, then the
captured one); the module's buffers (BatchNorm's running statistics) are restored afterwards, so
a captured step leaves the weights and statistics of an eager step. Graphs need CUDA, a single
process (no DDP hooks) and autocast without its weight cache (``Runtime.autocast``); on a CPU
the wrapper calls the module. A call with a new key captures a new graph, up to ``max_graphs``
of each kind, then runs eagerly; so does a key whose capture failed (reported to ``record``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Callable, Optional

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_unflatten

__all__ = ["GraphedModule", "capture_inference", "capture_training"]

# (kind, seconds, what, error) of each capture; error: why it failed (the call then runs eagerly)
Recorder = Callable[[str, float, str, Optional[BaseException]], None]


class _Call(nn.Module):
    """The wrapped module as a fresh module, for ``make_graphed_callables``, which replaces the
    ``forward`` of what it is given: the user's module keeps its own."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args: torch.Tensor) -> Any:
        return self.module(*args)


def capture_training(module: nn.Module, args: Sequence[torch.Tensor]) -> Callable[..., Any]:
    """Forward and backward of ``module(*args)`` as CUDA graphs (an autograd function), after
    three warm-up passes (which, like the captured one, update BatchNorm's statistics)."""
    static = tuple(a.detach().clone() for a in args)
    return torch.cuda.make_graphed_callables(_Call(module), static, allow_unused_input=True)


def capture_inference(module: nn.Module, args: Sequence[torch.Tensor]) -> Callable[..., Any]:
    """The forward pass of ``module(*args)`` (autograd off) as a CUDA graph: a callable that
    copies its inputs into the captured ones (a smaller batch into their first rows), replays,
    and returns copies of the outputs (trimmed to the batch)."""
    static = tuple(a.detach().clone() for a in args)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up off the capture: autotuning, lazy initialisation
        for _ in range(2):
            module(*static)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = module(*static)
    leaves, spec = tree_flatten(outputs)

    def replay(*inputs: torch.Tensor) -> Any:
        batch = inputs[0].shape[0]
        for target, value in zip(static, inputs):
            target[: value.shape[0]].copy_(value)
        graph.replay()
        return tree_unflatten([leaf[:batch].clone() for leaf in leaves], spec)

    return replay


class GraphedModule(nn.Module):
    """``module`` with its calls replayed from CUDA graphs (see the module docstring).

    ``module`` is the wrapped module (``engine.unwrap_model`` finds it), ``name`` says what it
    is in logs and throughput (``'stage2'``, ``'stage1'``), ``record`` receives every capture.
    Calls whose first input is on ``device_type`` are graphed, the others run the module (the
    capture functions are parameters so that the routing can be tested without a GPU).
    """

    def __init__(
        self,
        module: nn.Module,
        name: str,
        record: Optional[Recorder] = None,
        max_graphs: int = 2,
        train_capture: Callable[..., Callable[..., Any]] = capture_training,
        inference_capture: Callable[..., Callable[..., Any]] = capture_inference,
        device_type: str = "cuda",
    ) -> None:
        super().__init__()
        self.module = module
        self.name = name
        self.record = record
        self.max_graphs = max_graphs
        self._train_capture = train_capture
        self._inference_capture = inference_capture
        self.device_type = device_type
        self._training: dict[tuple, Callable[..., Any]] = {}  # the module: eager
        self._inference: dict[tuple, tuple[int, Callable[..., Any]]] = {}

    def forward(self, *args: torch.Tensor) -> Any:
        graphable = args and all(torch.is_tensor(a) for a in args)
        if not graphable or args[0].device.type != self.device_type:
            return self.module(*args)
        if torch.is_grad_enabled():
            return self._train_call(args)
        return self._inference_call(args)

    def _autocast_key(self) -> tuple:
        device = self.device_type
        return (torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))

    def _train_call(self, args: Sequence[torch.Tensor]) -> Any:
        key = (
            tuple((a.shape, a.dtype, a.stride()) for a in args),
            tuple(m.training for m in self.module.modules()),
            tuple(p.requires_grad for p in self.module.parameters()),
            self._autocast_key(),
        )
        graphed = self._training.get(key)
        if graphed is None:
            if len(self._training) >= self.max_graphs:
                return self.module(*args)
            graphed = self._timed(self._train_capture, args, "training")
            self._training[key] = graphed
        return graphed(*args)

    def _inference_call(self, args: Sequence[torch.Tensor]) -> Any:
        key = (
            tuple((a.shape[1:], a.dtype, a.stride()[1:]) for a in args),
            tuple(m.training for m in self.module.modules()),
            self._autocast_key(),
        )
        batch = args[0].shape[0]
        found = self._inference.get(key)
        if found is None or found[0] < batch:
            if len(self._inference) >= self.max_graphs:
                return self.module(*args)
            found = (batch, self._timed(self._inference_capture, args, "inference"))
            self._inference[key] = found
        return found[1](*args)

    def _timed(
        self, capture: Callable[..., Callable[..., Any]], args: Sequence[torch.Tensor], kind: str
    ) -> Callable[..., Any]:
        """The graphed call, or the module itself when the capture fails (an operation that a
        graph cannot hold): that key then runs eagerly."""
        start = time.perf_counter()
        # the warm-up and captured passes must not count in the buffers (BatchNorm statistics)
        saved = [b.detach().clone() for b in self.module.buffers()]
        error = None
        try:
            graphed = capture(self.module, args)
        except RuntimeError as exc:
            graphed, error = self.module, exc
        with torch.no_grad():  # only those that changed: a write would invalidate saved views
            for buffer, value in zip(self.module.buffers(), saved):
                if not torch.equal(buffer, value):
                    buffer.copy_(value)
        if args[0].is_cuda:
            torch.cuda.synchronize()
        if self.record is not None:
            shapes = ", ".join("x".join(str(n) for n in a.shape) for a in args)
            self.record(kind, time.perf_counter() - start, f"{self.name} ({shapes})", error)
        return graphed
