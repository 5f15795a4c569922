"""End-to-end training through tools/train.py's code path on the tiny SynthCC (CPU)."""

import glob
import json
import os

import pytest
import torch
from run_helpers import (
    assert_same_rng,
    assert_same_weights,
    checkpoint,
    opts,
    run_torchrun,
    stopped_after_step,
)

from csgn_plugin.compat import load_checkpoint
from csgn_plugin.launcher import main


def baseline_opts(tmp_path, save_dir, *extra):
    return opts(tmp_path / "data", save_dir, "osnet", *extra)


def assert_same_end(straight_dir, resumed_dir):
    """The resumed run ends with the uninterrupted run's weights and random generators."""
    straight, resumed = checkpoint(straight_dir), checkpoint(resumed_dir)
    assert_same_weights(straight["state_dict"], resumed["state_dict"])
    assert_same_rng(straight["rng"], resumed["rng"])


def test_baseline_trains_evaluates_and_writes_outputs(tmp_path, capsys):
    save = tmp_path / "run"
    engine = main(baseline_opts(tmp_path, save, "test.visrank", "True", "runtime.plot", "True"))
    out = capsys.readouterr().out
    for protocol in ("GENERAL", "CC", "SC"):
        assert f"synthcc         {protocol}" in out
    assert set(engine.last_results["synthcc"]) == {"general", "cc", "sc"}
    assert os.path.isfile(save / "checkpoints" / "last.pth")
    assert os.path.isfile(save / "checkpoints" / "best.pth")
    assert os.path.isfile(save / "training.png")
    assert glob.glob(str(save / "train.log-*"))
    # throughput counts every image the two epochs trained on and every one evaluated
    with open(save / "throughput.json") as f:
        throughput = json.load(f)
    sampler, loader = engine.datamanager.train_sampler, engine.datamanager.train_loader
    batches = 0
    for epoch in range(2):  # identity-balanced epochs differ in length
        sampler.set_epoch(epoch)
        batches += sampler.num_batches()
    # the first logging window (2 steps: worker start-up, autotuning) is counted apart
    warmup, steady = throughput["stage2_warmup_img"], throughput["stage2_train_img"]
    assert warmup["items"] == 2 * loader.batch_size
    assert warmup["items"] + steady["items"] == batches * loader.batch_size
    test = engine.datamanager.test_dataset["synthcc"]
    assert throughput["eval_extract_img"]["items"] == len(test["query"]) + len(test["gallery"])
    # ranked lists per protocol: one image per query the protocol scores
    for mode, res in engine.last_results["synthcc"].items():
        assert len(os.listdir(save / "visrank_synthcc" / mode)) == res.num_valid
    # torchreid's own loader reads our checkpoint's weights: every tensor of its model comes from
    # the file (it skips, with only a warning, whatever does not match by name and shape)
    from csgn_plugin.compat import torchreid_api

    model = torchreid_api().models.build_model("osnet_x0_25", num_classes=8, pretrained=False)
    saved = checkpoint(save, "best")["state_dict"]
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    torchreid_api().utils.load_pretrained_weights(model, str(save / "checkpoints" / "best.pth"))
    loaded = model.state_dict()
    not_loaded = [k for k in loaded if k not in saved or not torch.equal(loaded[k], saved[k])]
    assert not not_loaded, f"{len(not_loaded)} tensors not from the file, e.g. {not_loaded[:5]}"
    # and loading did change the model: the trained weights are not the fresh ones
    assert any(not torch.equal(fresh[k], loaded[k]) for k in loaded if k.endswith("conv.weight"))


@pytest.mark.slow
def test_resume_after_an_epoch_ends_with_the_same_weights(tmp_path):
    main(baseline_opts(tmp_path, tmp_path / "straight"))
    main(baseline_opts(tmp_path, tmp_path / "split", "train.max_epoch", "1"))
    main(baseline_opts(tmp_path, tmp_path / "split", "model.resume", "auto"))
    assert_same_end(tmp_path / "straight", tmp_path / "split")


@pytest.mark.slow
def test_resume_inside_an_epoch_ends_with_the_same_weights(tmp_path):
    """A checkpoint every 3 steps; training stopped by an exception after step 6 (epoch 2)."""
    main(baseline_opts(tmp_path, tmp_path / "straight"))
    save = tmp_path / "killed"
    with stopped_after_step(6), pytest.raises(KeyboardInterrupt):
        main(baseline_opts(tmp_path, save, "runtime.checkpoint_iters", "3"))
    state = load_checkpoint(save / "checkpoints" / "last.pth")
    assert state["global_step"] == 6 and state["batch"] > 0  # resumes inside an epoch
    main(baseline_opts(tmp_path, save, "model.resume", "auto", "runtime.checkpoint_iters", "3"))
    assert_same_end(tmp_path / "straight", save)


@pytest.mark.slow
def test_two_process_gloo_ddp_trains_and_evaluates(tmp_path):
    save = tmp_path / "ddp"
    proc = run_torchrun(baseline_opts(tmp_path, save, "train.max_epoch", "1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = glob.glob(str(save / "train.log-*"))
    text = open(logs[0]).read()
    assert "synthcc         CC" in text
    assert os.path.isfile(save / "checkpoints" / "last.pth")
