"""Bad checkpoints: another model, another number of ids, another prompt length, a truncated
file, an old torchreid checkpoint. Loading reports exactly which keys were loaded, skipped and
missing; strict loading and resuming refuse, with the reason, before anything is changed."""

import os
import re

import numpy as np
import pytest
import torch
from run_helpers import checkpoint, opts

from csgn_plugin.builders import model_config as preset_config
from csgn_plugin.compat import load_checkpoint, torchreid_api
from csgn_plugin.errors import CheckpointReadError
from csgn_plugin.fileio import atomic_save
from csgn_plugin.launcher import main
from csgn_plugin.modeling import CSGN
from csgn_plugin.modeling.weights import CheckpointMismatchError, load_weights_file

tr = torchreid_api()
TINY = {"vit_arch": "csgn-tiny-vit", "resnet_arch": "csgn-tiny-rn", "image_size": (64, 32)}


def tiny_csgn(num_ids=8, **overrides):
    return CSGN(preset_config("csgn", **TINY, **overrides), num_ids)


def save_weights(model, path):
    atomic_save({"state_dict": model.state_dict(), "epoch": 1}, str(path))
    return str(path)


def differing_shapes(a, b):
    """Independent expectation: the keys of both models whose shapes differ."""
    sa, sb = a.state_dict(), b.state_dict()
    return sorted(k for k in sa.keys() & sb.keys() if sa[k].shape != sb[k].shape)


@pytest.mark.parametrize(
    ("name", "overrides", "expected", "architecture"),
    [
        ("other_ids", {"num_ids": 6}, ["classifiers.global", "classifiers.proj", "ctx.rgb"], []),
        (
            "other_prompt",
            {"prompt_n_ctx": 8},
            ["ctx.gray", "ctx.rgb", "token_suffix"],
            ["prompt_n_ctx (csgn.prompt_n_ctx): 4 -> 8"],
        ),
    ],
)
def test_a_checkpoint_of_another_configuration_is_reported_key_by_key(
    tmp_path, name, overrides, expected, architecture
):
    torch.manual_seed(1)
    source = tiny_csgn()
    path = save_weights(source, tmp_path / f"{name}.pth")
    target = tiny_csgn(**overrides)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    skipped = differing_shapes(source, target)
    assert all(any(e in k for k in skipped) for e in expected)

    with pytest.raises(CheckpointMismatchError, match=re.escape(path) + ".*refused") as err:
        load_weights_file(target, path, "strict")
    assert all(k in str(err.value) for k in skipped)  # the reason: every differing key
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())  # untouched

    report = load_weights_file(target, path, "partial")
    assert sorted(k.split(" ")[0] for k in report.shape_mismatch) == skipped
    # the architecture record ('_extra_state') is compared, not loaded as a weight
    assert sorted(report.loaded) == sorted(
        set(source.state_dict()) - set(skipped) - {"_extra_state"}
    )
    assert report.missing == [] and report.unexpected == []
    assert report.architecture_differences == architecture  # num_classes is not architecture
    for key in report.loaded:
        assert torch.equal(target.state_dict()[key], source.state_dict()[key]), key
    for key in skipped:
        assert torch.equal(target.state_dict()[key], before[key]), key


def test_a_checkpoint_of_another_model_is_refused(tmp_path):
    osnet = tr.models.build_model("osnet_x0_25", num_classes=8, pretrained=False)
    path = save_weights(osnet, tmp_path / "osnet.pth")
    with pytest.raises(CheckpointMismatchError, match="no tensor of .* fits the model"):
        load_weights_file(tiny_csgn(), path, "partial")


def test_truncated_and_empty_files_are_refused_naming_the_file(tmp_path):
    path = save_weights(tiny_csgn(), tmp_path / "whole.pth")
    cut = tmp_path / "cut.pth"
    cut.write_bytes(open(path, "rb").read()[: os.path.getsize(path) // 2])
    with pytest.raises(RuntimeError, match=r"cut\.pth.*truncated or not a torch file"):
        load_weights_file(tiny_csgn(), str(cut), "strict")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(RuntimeError, match=r"empty\.pth.*0 bytes"):
        load_weights_file(tiny_csgn(), str(tmp_path / "empty.pth"), "strict")


def test_a_structure_only_read_maps_the_same_checkpoint_and_refuses_the_same_files(tmp_path):
    path = save_weights(tiny_csgn(), tmp_path / "whole.pth")
    read, mapped = load_checkpoint(path), load_checkpoint(path, mmap=True)
    assert read.keys() == mapped.keys()
    for key in read["state_dict"]:
        assert torch.equal(read["state_dict"][key], mapped["state_dict"][key]), key
    cut = tmp_path / "cut.pth"
    cut.write_bytes(open(path, "rb").read()[: os.path.getsize(path) // 2])
    with pytest.raises(CheckpointReadError, match=r"cut\.pth.*truncated or not a torch file"):
        load_checkpoint(cut, mmap=True)
    legacy = tmp_path / "legacy.pth"  # torch's pre-zip format cannot be mapped: it is read
    torch.save({"w": torch.arange(3)}, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(load_checkpoint(legacy, mmap=True)["w"], torch.arange(3))


def test_an_old_torchreid_checkpoint_loads_its_weights_and_cannot_be_resumed(tmp_path):
    """torchreid's own save_checkpoint (DataParallel 'module.' names, numpy rank-1), written in
    torch's legacy (pre-1.6, non-zip) format."""
    source = tr.models.build_model("osnet_x0_25", num_classes=8, pretrained=False)
    state = {
        "state_dict": {"module." + k: v for k, v in source.state_dict().items()},
        "epoch": 3,
        "rank1": np.float32(0.5),
        "optimizer": None,
    }
    old = tmp_path / "model.pth.tar-3"
    torch.save(state, old, _use_new_zipfile_serialization=False)
    target = tr.models.build_model("osnet_x0_25", num_classes=8, pretrained=False)
    report = load_weights_file(target, str(old), "strict")
    assert report.complete and len(report.loaded) == len(source.state_dict())
    assert torch.equal(target.conv1.conv.weight, source.conv1.conv.weight)

    save = tmp_path / "run"
    with pytest.raises(RuntimeError, match="not a full training checkpoint.*model.load_weights"):
        main(opts(tmp_path / "data", save, "osnet", "model.resume", str(old)))


def test_strict_load_through_the_launcher_refuses_before_training(tmp_path, capsys):
    six_ids = save_weights(
        tr.models.build_model("osnet_x0_25", num_classes=6, pretrained=False), tmp_path / "w.pth"
    )
    save = tmp_path / "strict"
    args = opts(tmp_path / "data", save, "osnet", "model.load_weights", six_ids)
    with pytest.raises(CheckpointMismatchError, match="classifier.weight"):
        main(args)  # strict by default
    assert not os.path.exists(save / "checkpoints")  # refused before any training step
    # partial loading is an explicit opt-in: loads what fits, says what it skipped
    main([*args, "model.strict_load", "False", "train.max_epoch", "1"])
    out = capsys.readouterr().out
    assert re.search(r"=> Weights from .*skipped \(shape differs\): classifier\.weight", out)


def test_resume_refuses_a_checkpoint_of_another_configuration_naming_the_keys(tmp_path):
    save = tmp_path / "run"
    short = ["train.max_epoch", "1", "stage1.max_epoch", "1"]
    main(opts(tmp_path / "data", save, "csgn", *short))
    before = checkpoint(save)
    with pytest.raises(CheckpointMismatchError) as err:
        main(opts(tmp_path / "data", save, "csgn", *short, "csgn.prompt_n_ctx", "8",
                  "model.resume", "auto"))  # fmt: skip
    message = str(err.value)
    assert "prompt_learner.ctx.rgb" in message  # which weights do not fit
    assert "csgn.prompt_n_ctx: 4 -> 8" in message  # and the config value that explains it
    assert checkpoint(save)["global_step"] == before["global_step"]  # nothing overwritten

    cut = save / "checkpoints" / "last.pth"
    cut.write_bytes(cut.read_bytes()[:1000])  # e.g. a copy that stopped half-way
    with pytest.raises(RuntimeError, match=r"last\.pth.*truncated"):
        main(opts(tmp_path / "data", save, "csgn", *short, "model.resume", "auto"))
