"""Shared helpers of the tests that run training through the launcher; holds no test itself.

Runs are the tiny SynthCC preset at 64x32 on the CPU, through the launcher that tools/train.py
runs: in-process (``main``) where the fault is injected in Python, as a subprocess where the
process itself must die (``kill -9``) or be one of several DDP ranks.
"""

import contextlib
import os
import socket
import subprocess
import sys

import torch

from csgn_plugin.compat import load_checkpoint
from csgn_plugin.data.synth import ensure_synthcc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "tools", "train.py")

# what every run shares: tiny data, small images, no plots, no visrank, CPU
COMMON = [
    "data.height", "64", "data.width", "32", "data.workers", "0",
    "cc_data.synthcc_preset", "tiny", "train.batch_size", "16", "train.max_epoch", "2",
    "train.print_freq", "2", "test.eval_freq", "-1", "test.visrank", "False",
    "runtime.plot", "False", "runtime.device", "cpu", "runtime.cpu_threads", "1",
]  # fmt: skip
# tiny CSGN from random towers (the main job's SynthCLIP pretraining takes minutes), both
# stages: 3 prompt epochs, then 2 epochs of 4 and 5 steps
CSGN = [
    "model.pretrained", "False", "clip.vit_arch", "csgn-tiny-vit",
    "clip.resnet_arch", "csgn-tiny-rn",
    "stage1.max_epoch", "3", "stage1.batch_size", "16", "stage1.warmup_epochs", "1",
    "stage1.print_freq", "1", "train.warmup_epochs", "0",
]  # fmt: skip
# the OSNet runs exercise the engine with both loss terms and an identity sampler (the shipped
# SynthCC baseline is softmax-only: these keys pin what the tests were written for)
OSNET = [
    "loss.name", "triplet", "loss.triplet.weight_x", "1.0", "sampler.train_sampler",
    "ClothesIdentitySampler", "train.optim", "adam", "train.lr", "0.00035",
    "train.warmup_epochs", "1", "test.normalize_feature", "True",
]  # fmt: skip
# checkpoint files that must be present for a resume to be exact
STATE_KEYS = {"state_dict", "epoch", "batch", "global_step", "optimizer", "stages", "rng"}


def opts(data_root, save_dir, model="osnet", *extra):
    """Launcher arguments of a tiny run of 'osnet' (OSNet x0.25, softmax + triplet) or 'csgn'."""
    config = "synthcc_osnet.yaml" if model == "osnet" else "csgn_synthcc.yaml"
    args = ["--config-file", os.path.join(ROOT, "configs", config)]
    args += ["data.root", str(data_root), "data.save_dir", str(save_dir), *COMMON]
    return args + (CSGN if model == "csgn" else OSNET) + list(extra)


def start_train(args, log_path, env=None):
    """``python tools/train.py ARGS`` on one thread (a ``subprocess.Popen``), output to a file."""
    full_env = {k: v for k, v in os.environ.items() if k != "CSGN_FAULT_KILL"}
    full_env.update({"OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT, **(env or {})})
    with open(log_path, "a") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, TRAIN, *args], env=full_env, cwd=ROOT, stdout=log, stderr=log
        )


def run_train(args, log_path, env=None, timeout=120):
    """:func:`start_train`, waited for; returns the exit code (-9: killed by SIGKILL)."""
    proc = start_train(args, log_path, env)
    try:
        return proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def stopped_after_step(step):
    """Training runs inside this stop with a KeyboardInterrupt (as a kill would) once ``step``
    steps have run."""
    from csgn_plugin.engine.engine import CCEngine

    original = CCEngine.forward_backward

    def stop(self, data):
        if self.global_step == step:
            raise KeyboardInterrupt("simulated kill")
        return original(self, data)

    CCEngine.forward_backward = stop
    try:
        yield
    finally:
        CCEngine.forward_backward = original


def checkpoint(save_dir, which="last"):
    return load_checkpoint(os.path.join(save_dir, "checkpoints", f"{which}.pth"))


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def assert_same_rng(a, b):
    """Two checkpoints' ``rng`` entries hold the same state of every random generator."""
    assert a.keys() == b.keys()
    assert list(a["python"][1]) == list(b["python"][1]), "Python's random differs"
    assert a["python"][2] == b["python"][2], "Python's random differs"
    assert torch.equal(a["numpy"][1], b["numpy"][1]), "numpy's generator differs"
    assert a["numpy"][2:] == b["numpy"][2:], "numpy's generator differs"
    assert torch.equal(a["torch"], b["torch"]), "torch's generator differs"


# ------------------------------------------------------------------ DDP (2 gloo processes)
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_torchrun(args, nproc=2, timeout=300):
    """``torchrun --nproc_per_node=NPROC tools/train.py ARGS`` on a free port, one thread per
    rank; returns the finished ``subprocess.CompletedProcess`` (output captured)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    cmd += [f"--master_port={free_port()}", TRAIN, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def start_ranks(args, log_dir, env=None):
    """Two ranks started by hand (no torchrun agent to clean up after them)."""
    port = str(free_port())
    procs = []
    for rank in range(2):
        rank_env = {k: v for k, v in os.environ.items() if k != "CSGN_FAULT_KILL"}
        rank_env.update(
            OMP_NUM_THREADS="1",
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            **(env or {}),
        )
        with open(os.path.join(log_dir, f"rank{rank}.txt"), "w") as out:
            procs.append(
                subprocess.Popen(
                    [sys.executable, TRAIN, *args], env=rank_env, cwd=ROOT, stdout=out, stderr=out
                )
            )
    return procs


def kill_all(procs):
    for p in procs:
        if p.poll() is None:
            p.kill()  # also ends a stopped process
        p.wait()


def ddp_opts(tmp_path, save, *extra):
    ensure_synthcc(str(tmp_path / "data"), "tiny", 0)  # once, not by two ranks at a time
    base = opts(tmp_path / "data", save, "osnet", "train.max_epoch", "1", "train.print_freq", "1")
    return base + ["runtime.dist_timeout_s", "30", *extra]
