"""Resources: out of GPU memory names the batch size and what to change; a disk that refuses a
checkpoint write (a real write error from the kernel, via the file-size limit) leaves the previous
checkpoint intact, and the run resumes from it to the weights of an uninterrupted run."""

import glob
import resource
import signal

import pytest
import torch
from run_helpers import assert_same_weights, checkpoint, opts

from csgn_plugin.engine.engine import CCEngine
from csgn_plugin.evaluation.evaluator import Evaluator
from csgn_plugin.fileio import CheckpointWriteError
from csgn_plugin.launcher import main

CUDA_OOM = "CUDA out of memory. Tried to allocate 20.00 GiB"


def test_out_of_memory_in_a_training_step_names_the_batch_size(tmp_path, monkeypatch):
    original = CCEngine._step

    def step(self, data):
        if self.global_step + 1 == 3:
            raise torch.OutOfMemoryError(CUDA_OOM)
        return original(self, data)

    monkeypatch.setattr(CCEngine, "_step", step)
    save = tmp_path / "run"
    with pytest.raises(torch.OutOfMemoryError) as err:
        main(opts(tmp_path / "data", save, "osnet", "runtime.checkpoint_iters", "2"))
    message = str(err.value)
    assert "a training step (train.batch_size=16, 16 per process, images 64x32" in message
    assert "lower train.batch_size" in message and "runtime.amp 'bf16'" in message
    assert CUDA_OOM in message  # the original error is kept
    assert checkpoint(save)["global_step"] == 2  # the last checkpoint is intact


def test_out_of_memory_in_evaluation_names_the_test_batch_size(tmp_path, monkeypatch):
    def features(self, model, data):
        raise torch.OutOfMemoryError(CUDA_OOM)

    monkeypatch.setattr(Evaluator, "_features", features)
    with pytest.raises(torch.OutOfMemoryError, match=r"test\.batch_size=128.*lower test\.batch"):
        main(opts(tmp_path / "data", tmp_path / "run", "osnet", "train.max_epoch", "1"))


@pytest.fixture
def file_size_limit():
    """Set a file-size limit on this process (the kernel then fails writes past it with EFBIG,
    as a full disk fails them with ENOSPC); restored afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an error, not a killed process

    def limit(size):
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))

    yield limit
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    signal.signal(signal.SIGXFSZ, handler)


@pytest.mark.slow
def test_a_failed_checkpoint_write_keeps_the_previous_one_and_the_run_resumes(
    tmp_path, file_size_limit
):
    main(opts(tmp_path / "data", tmp_path / "straight", "osnet"))
    save = tmp_path / "run"
    main(opts(tmp_path / "data", save, "osnet", "train.max_epoch", "1"))
    before = checkpoint(save)
    assert before["epoch"] == 1

    file_size_limit(512 * 1024)  # logs fit; a 3 MB checkpoint does not
    with pytest.raises(CheckpointWriteError) as err:
        main(opts(tmp_path / "data", save, "osnet", "model.resume", "auto"))
    file_size_limit(resource.RLIM_INFINITY)
    assert "File too large" in str(err.value)  # the kernel's reason, not torch's wrapper text
    assert "previous checkpoint, if any, is intact" in str(err.value)
    after = checkpoint(save)
    assert (after["epoch"], after["global_step"]) == (1, before["global_step"])
    assert_same_weights(before["state_dict"], after["state_dict"])
    assert not glob.glob(str(save / "checkpoints" / "*.tmp"))  # no partial file left

    main(opts(tmp_path / "data", save, "osnet", "model.resume", "auto"))
    assert_same_weights(
        checkpoint(tmp_path / "straight")["state_dict"], checkpoint(save)["state_dict"]
    )
