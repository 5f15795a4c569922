import os
import random

import numpy as np
import pytest
import torch

from csgn_plugin.engine.checkpoint import rng_state, set_rng_state
from csgn_plugin.fileio import atomic_save
from csgn_plugin.modeling.weights import load_weights_file


class Unpicklable:
    def __reduce__(self):
        raise OSError(28, "No space left on device")


def test_atomic_save_round_trip(tmp_path):
    path = tmp_path / "ck" / "last.pth"
    atomic_save({"w": torch.arange(4)}, str(path))
    assert torch.equal(torch.load(path)["w"], torch.arange(4))
    assert os.listdir(path.parent) == ["last.pth"]  # no temporary file left behind


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pth"
    atomic_save({"epoch": 1}, str(path))
    with pytest.raises(OSError, match="previous checkpoint, if any, is intact"):
        atomic_save({"epoch": 2, "bad": Unpicklable()}, str(path))
    assert torch.load(path)["epoch"] == 1
    assert os.listdir(tmp_path) == ["last.pth"]


def test_rng_state_round_trip_through_a_weights_only_file(tmp_path):
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    atomic_save({"rng": rng_state()}, str(tmp_path / "r.pth"))
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    from csgn_plugin.compat import load_checkpoint

    set_rng_state(load_checkpoint(tmp_path / "r.pth")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_partial_loading_reports_loaded_skipped_missing_unexpected(tmp_path):
    source = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    state = {"state_dict": {"module." + k: v for k, v in source.state_dict().items()}}
    state["state_dict"]["module.extra"] = torch.zeros(1)
    torch.save(state, tmp_path / "w.pth")
    target = torch.nn.Sequential(
        torch.nn.Linear(4, 3), torch.nn.Linear(3, 5), torch.nn.Linear(5, 1)
    )
    report = load_weights_file(target, str(tmp_path / "w.pth"), "partial")
    assert sorted(report.loaded) == ["0.bias", "0.weight"]
    assert len(report.shape_mismatch) == 2 and report.shape_mismatch[0].startswith("1.")
    assert sorted(report.missing) == ["2.bias", "2.weight"]  # shape-mismatched ones are skipped
    assert report.unexpected == ["extra"]
    assert torch.equal(target[0].weight, source[0].weight)
    with pytest.raises(RuntimeError, match="strict loading .* refused"):
        load_weights_file(target, str(tmp_path / "w.pth"), "strict")


def test_load_weights_refuses_a_file_without_tensors(tmp_path):
    torch.save({"epoch": 3}, tmp_path / "x.pth")
    with pytest.raises(RuntimeError, match="no model state dict"):
        load_weights_file(torch.nn.Linear(2, 2), str(tmp_path / "x.pth"), "strict")


def test_atomic_write_text_replaces_whole_files_and_leaves_no_temporary(tmp_path, monkeypatch):
    import os

    from csgn_plugin.fileio import atomic_write_text

    path = tmp_path / "report.json"
    atomic_write_text(str(path), "old")
    atomic_write_text(str(path), "new")
    assert path.read_text() == "new"

    def broken_rename(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_rename)
    with pytest.raises(OSError):
        atomic_write_text(str(path), "never")
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["report.json"]
