"""The loading policy: strict by default (naming every tensor), partial as an explicit opt-in with
a warning block, the architecture record compared, files older than the record still loading."""

import pytest
import torch
from torch import nn

from csgn_plugin.builders import model_config as preset_config
from csgn_plugin.engine.checkpoint import atomic_save
from csgn_plugin.modeling import CSGN
from csgn_plugin.modeling.spec import input_spec, model_spec_for
from csgn_plugin.modeling.weights import (
    CheckpointMismatchError,
    LoadReport,
    load_model_weights,
    load_weights_file,
    match_state_dict,
)

TINY = {"vit_arch": "csgn-tiny-vit", "resnet_arch": "csgn-tiny-rn", "image_size": (64, 32)}
INPUT = input_spec(64, 32, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def tiny(num_classes=4, **overrides):
    return CSGN(preset_config("csgn", **{**TINY, **overrides}), num_classes)


def two_layers(out=2):
    return nn.Sequential(nn.Linear(4, 3), nn.Linear(3, out))


def test_strict_names_every_tensor_and_loads_nothing():
    source = {**two_layers(5).state_dict(), "extra.weight": torch.zeros(1)}
    del source["0.bias"]
    target = two_layers()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointMismatchError) as err:
        load_model_weights(target, source, "strict", "w.pth")
    message = str(err.value)
    for expected in (
        "strict loading of 'w.pth' refused",
        "1.weight (5, 3) vs model (2, 3)",
        "1.bias (5,) vs model (2,)",
        "missing from the checkpoint: 0.bias;",
        "unexpected (not in the model): extra.weight",
        "Partial loading",
    ):
        assert expected in message
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


def test_partial_loads_what_fits_and_lists_the_rest():
    source = two_layers(5)
    state = {**source.state_dict(), "extra.weight": torch.zeros(1)}
    target = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2), nn.Linear(2, 1))
    report = load_model_weights(target, state, "partial", "w.pth")
    assert report.loaded == ["0.weight", "0.bias"]
    assert torch.equal(target[0].weight, source[0].weight)
    assert report.warning_block().splitlines() == [
        "=" * 78,
        "WARNING: partial load of 'w.pth': 2 tensors loaded",
        "  2 kept their initial (random or pretrained) values, not in the checkpoint:",
        "    - 2.weight",
        "    - 2.bias",
        "  2 kept their initial values, the checkpoint's shape differs:",
        "    - 1.weight (5, 3) vs model (2, 3)",
        "    - 1.bias (5,) vs model (2,)",
        "  1 in the checkpoint but not in the model, ignored:",
        "    - extra.weight",
        "=" * 78,
    ]
    assert LoadReport(loaded=["a"]).warning_block() == ""  # a complete load warns nothing
    with pytest.raises(CheckpointMismatchError, match="no tensor of the state dict fits"):
        load_model_weights(nn.Linear(7, 7), state, "partial")
    with pytest.raises(ValueError, match="policy must be one of"):
        load_model_weights(target, state, "lenient")


def test_a_csgn_checkpoint_loads_strictly_and_exactly(tmp_path):
    source = tiny()
    path = str(tmp_path / "ck.pth")
    atomic_save(
        {
            "state_dict": source.state_dict(),
            "model_spec": model_spec_for("csgn", source, INPUT).to_dict(),
            "epoch": 3,
        },
        path,
    )
    target = tiny()
    report = load_weights_file(target, path, "strict")
    assert report.complete and "_extra_state" not in report.loaded
    assert len(report.loaded) == len(source.state_dict()) - 1
    imgs = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(target.eval()(imgs), source.eval()(imgs), rtol=0, atol=0)


def test_same_shapes_other_architecture_is_refused_strictly_reported_partially(tmp_path):
    """QuickGELU vs GELU changes no shape: only the architecture record tells them apart."""
    source = tiny(activation="quick_gelu")
    path = str(tmp_path / "quick.pth")
    torch.save({"state_dict": source.state_dict()}, path)
    target = tiny()
    with pytest.raises(CheckpointMismatchError, match="activation .*'quick_gelu' -> 'gelu'"):
        load_weights_file(target, path, "strict")
    report = load_weights_file(target, path, "partial")
    assert report.architecture_differences == [
        "activation (clip.quick_gelu on|off): 'quick_gelu' -> 'gelu'"
    ]
    assert len(report.loaded) == len(source.state_dict()) - 1  # every weight fits
    assert "architecture fields that differ" in report.warning_block()


def test_files_without_the_record_load_and_the_spec_is_compared(tmp_path):
    source = tiny(activation="quick_gelu")
    weights = {k: v for k, v in source.state_dict().items() if k != "_extra_state"}
    # a file written before models recorded their architecture: nothing to compare
    torch.save({"state_dict": weights}, tmp_path / "old.pth")
    assert load_weights_file(tiny(), str(tmp_path / "old.pth"), "strict").complete
    # the model_spec of a plugin checkpoint records it too
    spec = model_spec_for("csgn", source, INPUT).to_dict()
    torch.save({"state_dict": weights, "model_spec": spec}, tmp_path / "spec.pth")
    with pytest.raises(CheckpointMismatchError, match="activation"):
        load_weights_file(tiny(), str(tmp_path / "spec.pth"), "strict")
    # and the engine's resume path (match_state_dict + load_state_dict) takes old files too
    target = tiny(activation="quick_gelu")
    matched, report = match_state_dict(target, weights)
    assert report.complete and "_extra_state" in matched
    target.load_state_dict(matched)
    torch.testing.assert_close(target.vss.vit.proj, source.vss.vit.proj)
