"""CAL end to end through tools/train.py's code path (tiny SynthCC, CPU): its second optimizer and
its clothes classifier are in every checkpoint, a run interrupted inside an epoch - across the
epoch where the adversarial term starts - resumes to the uninterrupted run's weights, and the
checkpoint alone evaluates through tools/test.py's path."""

import os

import pytest
import torch
from run_helpers import (
    COMMON,
    ROOT,
    assert_same_rng,
    assert_same_weights,
    checkpoint,
    stopped_after_step,
)

from csgn_plugin.launcher import main

pytestmark = pytest.mark.slow


def cal_opts(data_root, save_dir, *extra):
    return [
        "--config-file", os.path.join(ROOT, "configs", "synthcc_cal.yaml"),
        "data.root", str(data_root), "data.save_dir", str(save_dir), *COMMON,
        "sampler.num_instances", "4", "loss.cal.start_epoch_cc", "0",
        "loss.cal.start_epoch_adv", "1", "loss.cal.pair_weight", "0.5", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    root = tmp_path_factory.mktemp("cal")
    engine = main(cal_opts(root / "data", root / "straight"))
    return root, engine


def test_checkpoints_hold_the_objective_and_its_optimizer(straight):
    root, engine = straight
    state = checkpoint(root / "straight")
    assert state["model_spec"]["name"] == "cal_osnet_x0_25"
    weight = engine.objective.clothes_classifier.weight
    assert torch.equal(state["objective"]["clothes_classifier"]["weight"], weight)
    assert state["optimizer_clothes"]["state"]  # Adam moments of the clothes classifier
    # the adversarial term joined the logged sum in epoch 2 (START_EPOCH_ADV 1)
    history = engine.history
    assert {"Train/id", "Train/pair", "Train/adversarial", "Train/clothes"} <= set(history)


def test_resume_inside_the_epoch_where_the_adversarial_term_starts(straight):
    root, _ = straight
    save = root / "killed"
    with stopped_after_step(6), pytest.raises(KeyboardInterrupt):
        main(cal_opts(root / "data", save, "runtime.checkpoint_iters", "3"))
    stopped = checkpoint(save)
    assert stopped["epoch"] == 1 and stopped["batch"] > 0  # inside epoch 2
    main(cal_opts(root / "data", save, "model.resume", "auto", "runtime.checkpoint_iters", "3"))
    a, b = checkpoint(root / "straight"), checkpoint(save)
    assert_same_weights(a["state_dict"], b["state_dict"])
    assert_same_weights(a["objective"]["clothes_classifier"], b["objective"]["clothes_classifier"])
    for key in ("optimizer", "optimizer_clothes"):
        for index, moments in a[key]["state"].items():
            assert_same_weights(moments, b[key]["state"][index])
    assert_same_rng(a["rng"], b["rng"])


def test_the_checkpoint_alone_evaluates(straight):
    root, engine = straight
    path = root / "straight" / "checkpoints" / "last.pth"
    tested = main(cal_opts(root / "data", root / "eval", "model.load_weights", str(path)), True)
    for protocol, result in engine.last_results["synthcc"].items():
        assert tested.last_results["synthcc"][protocol].mAP == pytest.approx(result.mAP)
