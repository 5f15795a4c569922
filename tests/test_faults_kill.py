"""Killed runs: ``kill -9`` of tools/train.py in stage 1, in stage 2 and in the middle of a
checkpoint write, then ``model.resume auto``: the checkpoint on disk is always complete and the
resumed run ends with the weights of an uninterrupted one (tiny CSGN, CPU, fixed seed)."""

import glob
import os
import random
import time

import pytest
from run_helpers import (
    STATE_KEYS,
    assert_same_weights,
    checkpoint,
    opts,
    run_train,
    start_train,
)

from csgn_plugin.launcher import main

KILLED = -9  # exit status of a process ended by SIGKILL


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run (in this process: same numbers as a one-thread subprocess)."""
    root = tmp_path_factory.mktemp("reference")
    main(opts(root / "data", root / "run", "csgn", "runtime.checkpoint_iters", "2"))
    return root


def assert_complete(save_dir):
    state = checkpoint(save_dir)
    assert STATE_KEYS <= set(state), set(state)
    return state


def test_kill_9_in_stage_1_in_stage_2_and_inside_a_checkpoint_write(tmp_path, reference):
    data = reference / "data"  # already generated; read only
    save = tmp_path / "run"
    log = tmp_path / "out.txt"
    args = opts(data, save, "csgn", "runtime.checkpoint_iters", "2", "model.resume", "auto")

    # 1. stage 1, after its 2nd epoch's steps, before that epoch's checkpoint
    assert run_train(args, log, {"CSGN_FAULT_KILL": "stage1_epoch:2"}) == KILLED
    state = assert_complete(save)
    assert state["stages"]["prompt"]["epoch"] == 1 and not state["stages"]["prompt"]["finished"]

    # 2. resumed: stage 1 ends, stage 2 dies after its 3rd step (checkpoints every 2 steps)
    assert run_train(args, log, {"CSGN_FAULT_KILL": "train_step:3"}) == KILLED
    state = assert_complete(save)
    assert state["stages"]["prompt"]["finished"]
    assert (state["epoch"], state["batch"], state["global_step"]) == (0, 2, 2)

    # 3. resumed at step 2: killed inside its 2nd checkpoint write (the file is half written);
    #    the 1st was the end of epoch 1 (step 4; the epoch has 4 steps)
    assert run_train(args, log, {"CSGN_FAULT_KILL": "checkpoint_write:2"}) == KILLED
    assert glob.glob(str(save / "checkpoints" / "last.pth.*.tmp"))  # the interrupted write
    state = assert_complete(save)
    assert (state["epoch"], state["batch"], state["global_step"]) == (1, 0, 4)

    # 4. resumed to the end
    assert run_train(args, log) == 0, log.read_text()[-3000:]
    assert not glob.glob(str(save / "checkpoints" / "*.tmp"))  # stale partial file removed
    final = assert_complete(save)
    assert (final["epoch"], final["global_step"]) == (2, 9)
    assert_same_weights(checkpoint(reference / "run")["state_dict"], final["state_dict"])


def test_kill_9_at_a_random_moment_then_resume(tmp_path, reference):
    """An outside ``kill -9`` (no hook) at a random time once the first checkpoint exists."""
    save = tmp_path / "run"
    log = tmp_path / "out.txt"
    args = opts(reference / "data", save, "csgn", "runtime.checkpoint_iters", "2")
    args += ["model.resume", "auto"]
    proc = start_train(args, log)
    deadline = time.time() + 60
    while not os.path.exists(save / "checkpoints" / "last.pth") and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(random.Random(time.time_ns()).uniform(0.0, 2.0))
    proc.kill()
    proc.wait()
    assert_complete(save)  # whatever the moment, the file on disk is a whole checkpoint
    assert run_train(args, log) == 0, log.read_text()[-3000:]
    assert_same_weights(
        checkpoint(reference / "run")["state_dict"], assert_complete(save)["state_dict"]
    )
