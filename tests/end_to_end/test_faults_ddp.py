"""DDP faults (2 gloo processes on the CPU): a rank killed with ``kill -9`` stops the other rank
at once (non-zero exit, the reason in the run's log), and the job resumes from the last
checkpoint under torchrun."""

import glob
import os
import signal
import subprocess
import sys
import time

import pytest
from run_helpers import (
    ROOT,
    TRAIN,
    checkpoint,
    ddp_opts,
    free_port,
    kill_all,
    start_ranks,
)

pytestmark = pytest.mark.slow  # processes killed and resumed: tens of seconds each


def test_a_killed_rank_stops_the_job_and_the_job_resumes(tmp_path):
    save = tmp_path / "run"
    args = ddp_opts(tmp_path, save, "runtime.checkpoint_iters", "2", "model.resume", "auto")
    procs = start_ranks(args, tmp_path, {"CSGN_FAULT_KILL": "train_step:3:1"})
    try:
        assert procs[1].wait(timeout=120) == -signal.SIGKILL  # rank 1 died after its 3rd step
        died = time.time()
        assert procs[0].wait(timeout=60) == 1, (tmp_path / "rank0.txt").read_text()[-3000:]
        # rank 0 noticed the closed connection; it did not sit out runtime.dist_timeout_s (30)
        assert time.time() - died < 15
    finally:
        kill_all(procs)
    log = open(glob.glob(str(save / "train.log-*"))[0]).read()
    assert "=> Stopped by" in log  # rank 0 says why, in the run's log
    assert checkpoint(save)["global_step"] == 2  # the last checkpoint before the kill

    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    torchrun += [f"--master_port={free_port()}", TRAIN, *args]
    env = {k: v for k, v in os.environ.items() if k != "CSGN_FAULT_KILL"}
    proc = subprocess.run(
        torchrun, cwd=ROOT, env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
        timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = checkpoint(save)
    assert (final["epoch"], final["batch"], final["global_step"]) == (1, 0, 4)
    assert "Resumed from" in open(sorted(glob.glob(str(save / "train.log-*")))[-1]).read()
