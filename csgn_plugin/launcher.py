"""What ``tools/train.py`` and ``tools/test.py`` run: torchreid main.py's flow, plus DDP.

config file + ``KEY VALUE`` overrides -> (evaluation: the checkpoint read, its model and
evaluation settings taken) -> pre-flight (``preflight.check_run``: every input checked before
anything is downloaded, generated or written) -> log tee into the run's folder -> seed ->
environment info -> runtime -> pretrained weights made local (``builders.resolve_weights``:
SynthCLIP, downloads) -> data (+ ``check_data``) -> model (+ weights) -> optimizer -> scheduler
-> engine (+ resume) -> ``engine.run``. An exception that stops the run is written into the log
file with its traceback; the tools then print it (``tools/_cli.py``): a
:class:`~csgn_plugin.errors.UserError` as one line, anything else with its traceback.

Training writes into ``data.save_dir``. Evaluation only (``tools/test.py``) writes into a folder
of its own, ``data.save_dir/eval/<time>/`` (log, ``results.json``, ranked images), and never
touches the training checkpoints there. It needs ``model.load_weights`` (or, explicitly,
``test.allow_untrained True``) and evaluates the model the checkpoint records (``model_spec``;
CLIP-ReID's released files are recognised): that model's architecture, input size and
normalisation, whatever the config says, and the feature comparison it was trained with
(``builders.EVALUATION_KEYS``) unless the command line sets it; every value replaced is logged,
and ``results.json`` records the checkpoint (path, sha256, epoch).

Under ``torchrun`` (WORLD_SIZE > 1) every process joins one process group (NCCL on GPUs, gloo on
CPUs) whose collectives give up after ``runtime.dist_timeout_s``: a rank that dies or hangs stops
the others (non-zero exit) instead of leaving them waiting; only rank 0 prints and writes.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
import traceback
from collections.abc import Sequence
from typing import Optional

import torch
import torch.distributed as dist
from yacs.config import CfgNode

from . import builders, checks, preflight
from .compat import torchreid_api
from .config import ConfigError, load_config
from .inference import CheckpointFacts, read_checkpoint_facts
from .modeling.spec import ModelSpec, build_model_from_spec
from .modeling.weights import load_weights_file
from .progress import LOG_FILE_ENV, get_logger
from .runtime import AVX2_KERNELS, set_cpu_numerics

tr = torchreid_api()


class Tee:
    """stdout copied into a log file (torchreid's Logger closes the console it wraps when it is
    garbage-collected, which breaks any caller that keeps using stdout)."""

    def __init__(self, console: object, path: str) -> None:
        self.console = console
        self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115  (closed by close())

    def write(self, text: str) -> None:
        self.console.write(text)
        self.file.write(text)

    def flush(self) -> None:
        self.console.flush()
        self.file.flush()

    def write_to_file(self, text: str) -> None:
        """Into the log file only (what the console gets otherwise, e.g. a traceback)."""
        self.file.write(text)
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def command_line(script: str, argv: Sequence[str] | None = None) -> str:
    """The command that runs ``script`` with ``argv`` (default: this process's arguments), for
    reports that say how they were made; the script's path is relative to the current folder."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    return " ".join(["python", os.path.relpath(script), *arguments])


def parse_args(argv: Sequence[str] | None, description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config-file", default="", help="YAML config (keys: defaults.py)")
    parser.add_argument("--root", default="", help="data root (overrides data.root)")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="on an error you can fix, show the traceback too (the log file always keeps it)",
    )
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides, e.g. train.max_epoch 10"
    )
    return parser.parse_args(argv)


def cpu_numerics_line(cfg: CfgNode, numerics: dict) -> str:
    """The log line saying which CPU kernels and how many torch threads the run computes with."""
    line = (
        f"=> CPU numerics: {numerics['kernels']} kernels, {numerics['threads']} torch threads "
        f"(runtime.cpu_kernels {cfg.runtime.cpu_kernels}, runtime.cpu_threads "
        f"{cfg.runtime.cpu_threads})"
    )
    if not numerics["as_asked"]:
        line += (
            "; not the AVX2 kernels asked for: this process had computed before the run "
            f"started, so its numbers may differ from an AVX2 run's (set "
            f"{' '.join(f'{k}={v}' for k, v in AVX2_KERNELS.items())} before starting Python)"
        )
    return line


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _init_distributed(use_gpu: bool, timeout_s: float) -> tuple[int, int]:
    world_size = _world_size()
    if world_size == 1:
        return 0, 1
    if use_gpu:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(
        backend="nccl" if use_gpu else "gloo", timeout=datetime.timedelta(seconds=timeout_s)
    )
    return dist.get_rank(), world_size


def _resume_path(resume: str, save_dir: str) -> str:
    if resume != "auto":
        return resume
    last = os.path.join(save_dir, "checkpoints", "last.pth")
    return last if os.path.isfile(last) else ""


def _evaluation_config(
    cfg: CfgNode, given: Sequence[str]
) -> tuple[CfgNode, Optional[CheckpointFacts], list[str]]:
    """An evaluation's config for its checkpoint (``None``: the model as initialised, when asked
    for explicitly) and the config values the checkpoint replaced
    (:func:`builders.config_for_checkpoint`; ``given``: the keys set on the command line)."""
    if not cfg.model.load_weights:
        if not cfg.test.allow_untrained:
            raise ConfigError(
                "an evaluation needs the trained weights: set model.load_weights PATH (a "
                "checkpoint, e.g. <data.save_dir>/checkpoints/best.pth), or test.allow_untrained "
                "True to evaluate the model as initialised"
            )
        return cfg, None, []
    facts = read_checkpoint_facts(cfg.model.load_weights)
    cfg, replaced = builders.config_for_checkpoint(cfg, facts.spec, facts.config, given)
    return cfg, facts, replaced


def main(argv: Sequence[str] | None = None, test_only: bool = False) -> object:
    """Train (or, with ``test_only``, evaluate) as the config says; returns the engine."""
    args = parse_args(argv, "Evaluate a model" if test_only else "Train a model")
    opts = list(args.opts)
    if args.root:
        opts += ["data.root", args.root]
    if test_only:
        opts += ["test.evaluate", "True"]
    cfg = load_config(args.config_file, opts)
    checks.check_cpu_numerics(cfg)  # fixed before anything computes (the preflight does)
    numerics = set_cpu_numerics(cfg.runtime.cpu_kernels, cfg.runtime.cpu_threads)
    facts, evaluated, replaced = None, None, []
    if cfg.test.evaluate:
        cfg, facts, replaced = _evaluation_config(cfg, opts[0::2])
        evaluated = {"checkpoint": facts.record() if facts else None, "untrained": facts is None}
    spec = facts.spec if facts is not None else None
    preflight.check_run(cfg, _world_size(), spec)
    use_gpu = checks.resolve_device(cfg)
    checks.resolve_amp(cfg, use_gpu)
    rank, world_size = _init_distributed(use_gpu, cfg.runtime.dist_timeout_s)
    stamp = time.strftime("%Y-%m-%d-%H-%M-%S")
    if cfg.test.evaluate:
        run_dir = os.path.join(cfg.data.save_dir, "eval", stamp)
    else:
        run_dir = cfg.data.save_dir

    original_stdout = sys.stdout
    if rank == 0:
        os.makedirs(run_dir, exist_ok=True)
        name = "test.log" if cfg.test.evaluate else "train.log"
        log_path = os.path.join(run_dir, f"{name}-{stamp}")
        sys.stdout = Tee(original_stdout, log_path)
        # worker processes (SynthCLIP's towers) append their log lines to the same file
        os.environ[LOG_FILE_ENV] = os.path.abspath(log_path)
    else:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (one writer: rank 0)
    try:
        get_logger().info(cpu_numerics_line(cfg, numerics))
        if replaced:
            get_logger().info(
                f"=> Evaluating the checkpoint '{cfg.model.load_weights}'; values that differ "
                f"from the config file's: {'; '.join(replaced)}"
            )
        return _run(cfg, use_gpu, rank, world_size, run_dir, spec, evaluated)
    except Exception as exc:
        if isinstance(sys.stdout, Tee):  # the log file keeps the whole story
            sys.stdout.write_to_file(
                f"=> Stopped by {type(exc).__name__}: {exc}\n{traceback.format_exc()}"
            )
        raise
    finally:
        os.environ.pop(LOG_FILE_ENV, None)
        sys.stdout.close()
        sys.stdout = original_stdout
        if world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _run(
    cfg: CfgNode,
    use_gpu: bool,
    rank: int,
    world_size: int,
    run_dir: str,
    spec: Optional[ModelSpec] = None,
    evaluated: Optional[dict] = None,
) -> object:
    log = get_logger().info
    log(f"Show configuration\n{cfg}\n")
    log(f"Collecting env info ...\n** System info **\n{tr.utils.collect_env_info()}\n")
    log(checks.describe_model_choice(cfg))
    tr.utils.set_random_seed(cfg.train.seed)
    if use_gpu:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    runtime = builders.build_runtime(cfg, use_gpu, rank, world_size)
    if spec is None:
        log(builders.describe_pretrained(cfg))
        cfg, lines = builders.resolve_weights(cfg)
        for line in lines:
            log(line)
    datamanager = builders.build_datamanager(cfg, use_gpu, rank, world_size)
    checks.check_data(cfg, datamanager)
    if spec is not None:
        model = build_model_from_spec(spec)
    else:
        model = builders.build_model(cfg, datamanager, use_gpu)
    if cfg.model.load_weights:
        policy = "strict" if cfg.model.strict_load else "partial"
        report = load_weights_file(model, cfg.model.load_weights, policy)
        log(f"=> Weights from '{cfg.model.load_weights}': {report.summary()}")
        if not report.complete:
            get_logger().warning(report.warning_block())
    device = runtime.device
    model = model.to(device)
    runtime.channels_last = checks.resolve_channels_last(cfg, model, use_gpu)
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = scheduler = None  # an evaluation trains nothing
    if not cfg.test.evaluate:
        optimizer = builders.build_optimizer(cfg, model)
        scheduler = builders.build_scheduler(cfg, optimizer)
    if world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if use_gpu else None
        )
    model = builders.accelerate(cfg, model, runtime, datamanager)  # runtime.compile
    spec_dict = builders.model_spec(cfg, model, datamanager.num_train_pids)
    engine = builders.build_engine(
        cfg, datamanager, model, optimizer, scheduler, runtime, spec_dict, evaluated
    )
    resume = _resume_path(cfg.model.resume, cfg.data.save_dir)
    if resume and not cfg.test.evaluate:
        engine.resume(resume)
    engine.run(**{**builders.engine_run_kwargs(cfg), "save_dir": run_dir})
    if world_size > 1:
        dist.barrier()
    return engine
