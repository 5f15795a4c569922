"""Killed runs: ``kill -9`` of tools/train.py in stage 1, in stage 2 and in the middle of a
checkpoint write, then ``model.resume auto``: the checkpoint on disk is always complete and the
resumed run ends with the weights and random generators of an uninterrupted one (tiny CSGN, CPU,
fixed seed). The random kill moments come from a seed that a failure prints; setting
``CSGN_TEST_KILL_SEED`` to it replays them."""

import glob
import os
import random
import time

import pytest
from run_helpers import (
    STATE_KEYS,
    assert_same_rng,
    assert_same_weights,
    checkpoint,
    opts,
    run_train,
    start_train,
)

from csgn_plugin.launcher import main

pytestmark = pytest.mark.slow  # processes killed and resumed: tens of seconds each


KILLED = -9  # exit status of a process ended by SIGKILL
KILL_SEED_ENV = "CSGN_TEST_KILL_SEED"
# CSGN_FAULT_KILL values the random kill draws from: after stage 1's 2nd or 3rd epoch, in its
# 2nd..5th checkpoint write (stage 1's 2nd and 3rd, stage 2's at step 2 and at the end of epoch
# 1), after stage 2's step 1..4. A checkpoint exists at each, and the resumed run still has
# several steps to do when the second, outside kill comes.
KILL_MOMENTS = (
    [f"stage1_epoch:{n}" for n in (2, 3)]
    + [f"checkpoint_write:{n}" for n in range(2, 6)]
    + [f"train_step:{n}" for n in range(1, 5)]
)


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
    straight = checkpoint(reference / "run")
    assert_same_weights(straight["state_dict"], final["state_dict"])
    assert_same_rng(straight["rng"], final["rng"])


def kill_seed() -> int:
    """The seed of the random kill moments: ``CSGN_TEST_KILL_SEED`` to replay a failure, else a
    fresh one (the conftest fixture seeds the global generators identically for every test)."""
    value = os.environ.get(KILL_SEED_ENV)
    return int(value) if value else random.SystemRandom().randrange(2**31)


def test_kill_9_at_seeded_random_moments_then_resume(tmp_path, reference):
    """Two ``kill -9`` at moments drawn from a seed that every failure message names.

    1. the fault point kills the process at a random place (a pass count of a fault point, in
       stage 1 or in stage 2 up to step 4): exactly replayable from the seed;
    2. the resumed run is killed from outside (no hook), a random delay after its first own
       checkpoint write; it must still be running when the kill lands (exit status -9);
    3. resumed to the end: the weights and generators of the uninterrupted run.
    """
    seed = kill_seed()
    replay = f"(kill seed {seed}; replay with {KILL_SEED_ENV}={seed})"
    print(f"kill moments drawn from seed {seed}")
    rng = random.Random(seed)
    point = rng.choice(KILL_MOMENTS)
    delay = rng.uniform(0.0, 0.5)
    save = tmp_path / "run"
    log = tmp_path / "out.txt"
    args = opts(reference / "data", save, "csgn", "runtime.checkpoint_iters", "2")
    args += ["model.resume", "auto"]

    status = run_train(args, log, {"CSGN_FAULT_KILL": point})
    assert status == KILLED, f"{point}: exit status {status}, not SIGKILL {replay}"
    assert_complete(save)

    last = save / "checkpoints" / "last.pth"
    written = last.stat().st_mtime_ns
    proc = start_train(args, log)
    deadline = time.time() + 120
    while last.stat().st_mtime_ns == written and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    wrote = last.stat().st_mtime_ns != written
    time.sleep(delay)
    alive = proc.poll() is None
    proc.kill()
    status = proc.wait()
    assert wrote and alive and status == KILLED, (
        f"the resumed run wrote a checkpoint: {wrote}; was running {delay:.3f}s later: {alive}; "
        f"exit status {status} {replay}\n{log.read_text()[-2000:]}"
    )
    assert_complete(save)  # whatever the moment, the file on disk is a whole checkpoint

    status = run_train(args, log)
    assert status == 0, f"exit status {status} {replay}\n{log.read_text()[-3000:]}"
    final = assert_complete(save)
    straight = checkpoint(reference / "run")
    assert_same_weights(straight["state_dict"], final["state_dict"])
    assert_same_rng(straight["rng"], final["rng"])
