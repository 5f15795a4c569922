"""DDP faults (2 gloo processes on the CPU): a rank that stops answering (SIGSTOP: no crash, its
sockets stay open) ends the other rank's wait after ``runtime.dist_timeout_s``, not never."""

import glob
import os
import signal
import time

import pytest
from run_helpers import ddp_opts, kill_all, start_ranks

pytestmark = pytest.mark.slow  # processes killed and resumed: tens of seconds each


def test_a_frozen_rank_stops_the_job_after_the_timeout(tmp_path):
    """SIGSTOP: the peer neither answers nor closes its sockets; the timeout ends the wait."""
    save = tmp_path / "run"
    procs = start_ranks(ddp_opts(tmp_path, save, "runtime.dist_timeout_s", "5"), tmp_path)
    try:
        deadline = time.time() + 90
        while time.time() < deadline:  # until rank 0 has logged its first step
            logs = glob.glob(str(save / "train.log-*"))
            if logs and "epoch: [1/1][1/" in open(logs[0]).read():
                break
            time.sleep(0.05)
        os.kill(procs[1].pid, signal.SIGSTOP)
        frozen = time.time()
        assert procs[0].wait(timeout=60) == 1
        assert time.time() - frozen < 5 + 20  # the timeout plus shutdown, not a hang
        assert "Timed out" in (tmp_path / "rank0.txt").read_text()
    finally:
        kill_all(procs)
