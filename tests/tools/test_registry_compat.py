import importlib
import sys
import types

import numpy as np
import pytest
import torch

import csgn_plugin
from csgn_plugin import compat, registry
from csgn_plugin.compat import model_factory, torchreid_api


def test_register_is_idempotent_and_names_are_visible():
    csgn_plugin.register()
    csgn_plugin.register()
    registry._DONE = False  # force a second full pass over the registries
    csgn_plugin.register()
    datasets = vars(torchreid_api().data.datasets)["__image_datasets"]
    assert "synthcc" in datasets and "ltcc" in datasets and "prcc" in datasets
    assert "csgn" in model_factory() and "clipreid_vitb16" in model_factory()


def test_a_foreign_object_under_our_name_is_an_error():
    factory = model_factory()
    original = factory["csgn"]
    factory["csgn"] = lambda **kw: None
    registry._DONE = False
    try:
        with pytest.raises(ValueError, match="already has a model named 'csgn'"):
            csgn_plugin.register()
    finally:
        factory["csgn"] = original
        registry._DONE = False
        csgn_plugin.register()


def test_upstream_source_layout_is_found(monkeypatch):
    """deep-person-reid from source keeps its sub-packages directly under ``torchreid``."""
    real = importlib.import_module("torchreid.reid")
    fake = types.ModuleType("torchreid")
    for name in ("data", "engine", "losses", "metrics", "models", "optim", "utils"):
        setattr(fake, name, getattr(real, name))
    monkeypatch.setitem(sys.modules, "torchreid", fake)
    monkeypatch.setitem(sys.modules, "torchreid.reid", None)  # import of it fails
    monkeypatch.setattr(compat, "_API", None)
    assert compat.torchreid_api() is fake
    monkeypatch.setattr(compat, "_API", None)


def test_missing_torchreid_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchreid", None)
    monkeypatch.setitem(sys.modules, "torchreid.reid", None)
    monkeypatch.setattr(compat, "_API", None)
    with pytest.raises(ImportError, match="pip install torchreid"):
        compat.torchreid_api()
    monkeypatch.setattr(compat, "_API", None)


def test_torchreid_checkpoints_reload_under_weights_only(tmp_path):
    """torchreid's own save_checkpoint stores rank-1 as a numpy scalar; its own loader must
    read it back (torch >= 2.6 defaults to weights_only=True)."""
    tr = torchreid_api()
    model = torch.nn.Linear(3, 2)
    state = {"state_dict": model.state_dict(), "epoch": 3, "rank1": np.float32(0.5)}
    tr.utils.save_checkpoint(state, str(tmp_path))
    path = str(tmp_path / "model.pth.tar-3")
    loaded = tr.utils.load_checkpoint(path)
    assert loaded["epoch"] == 3 and float(loaded["rank1"]) == 0.5
    fresh = torch.nn.Linear(3, 2)
    tr.utils.load_pretrained_weights(fresh, path)
    assert torch.equal(fresh.weight, model.weight)
    assert compat.load_checkpoint(path)["epoch"] == 3


def test_checkpoint_loader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        compat.load_checkpoint(tmp_path / "nope.pth")
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(RuntimeError, match="empty"):
        compat.load_checkpoint(empty)
    torch.save({"w": torch.ones(100)}, tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(RuntimeError, match="truncated"):
        compat.load_checkpoint(tmp_path / "cut.pth")
