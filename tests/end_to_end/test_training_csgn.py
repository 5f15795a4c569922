"""Two-stage CSGN training through the launcher (tiny towers, tiny SynthCC, CPU)."""

import pytest
import torch
from run_helpers import assert_same_rng, assert_same_weights, checkpoint, opts

from csgn_plugin.compat import load_checkpoint
from csgn_plugin.engine import stages
from csgn_plugin.engine.engine import CCEngine
from csgn_plugin.launcher import main


def csgn_opts(tmp_path, save_dir, *extra):
    return opts(tmp_path / "data", save_dir, "csgn", *extra)


def final_weights(save_dir):
    return checkpoint(save_dir)["state_dict"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """One uninterrupted run; returns (tmp root, its engine, its final weights)."""
    tmp = tmp_path_factory.mktemp("csgn")
    engine = main(csgn_opts(tmp, tmp / "straight"))
    return tmp, engine, final_weights(tmp / "straight")


def assert_same_end(tmp, save):
    """A resumed run ends with the uninterrupted run's weights and random generators."""
    straight, resumed = checkpoint(tmp / "straight"), checkpoint(save)
    assert_same_weights(straight["state_dict"], resumed["state_dict"])
    assert_same_rng(straight["rng"], resumed["rng"])


def test_both_stages_run_and_frozen_parts_stay_frozen(straight):
    tmp, engine, weights = straight
    model = engine.unwrapped_model
    assert [s.name for s in engine.stages] == ["prompt"] and engine.stages[0].finished
    assert set(engine.last_results["synthcc"]) == {"general", "cc", "sc"}
    history = engine.history
    assert len(history["stage1/loss"]) == 3
    assert {"Train/id", "Train/triplet", "Train/hsf_rgb", "Train/hsf_gray"} <= set(history)
    # both stages lower their loss (logged per epoch in stage 1, per 2-step window in stage 2)
    stage1 = [loss for _, loss in history["stage1/loss"]]
    assert stage1[-1] < 0.8 * stage1[0], stage1
    stage2 = [sum(history[f"Train/{k}"][i][1] for k in ("id", "triplet", "hsf")) for i in (0, -1)]
    assert stage2[-1] < 0.8 * stage2[0], stage2
    # the prompts and the text tower end stage 2 exactly as stage 1 left them (a run that stops
    # after stage 1 gives that state: stage 1 does not depend on the stage-2 settings)
    main(csgn_opts(tmp, tmp / "stage1_only", "train.max_epoch", "0"))
    stage1_end = final_weights(tmp / "stage1_only")
    assert not torch.equal(stage1_end["vss.resnet.bn1.weight"], weights["vss.resnet.bn1.weight"])
    frozen = [k for k in weights if k.startswith("prompt_learner.") or k.startswith("text")]
    assert frozen and all(torch.equal(weights[k], stage1_end[k]) for k in frozen)
    assert any(k.startswith("prompt_learner.ctx") for k in frozen)
    # the text bank the engine holds is the one of the final prompts
    with torch.no_grad():
        ids = torch.arange(model.num_ids)
        for modality, bank in engine.objective.text_bank.items():
            torch.testing.assert_close(model.prompt_features(ids, modality).float(), bank)


def test_interrupted_in_stage_1_resumes_to_the_same_weights(straight, monkeypatch):
    tmp = straight[0]
    save = tmp / "stage1_killed"
    original = stages.PromptStage.step_loss

    def stop_at_epoch_2(self, *args, **kwargs):
        if self.epoch == 2:
            raise KeyboardInterrupt("simulated kill in stage 1")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(stages.PromptStage, "step_loss", stop_at_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        main(csgn_opts(tmp, save))
    monkeypatch.undo()
    state = load_checkpoint(save / "checkpoints" / "last.pth")
    assert state["stages"]["prompt"] == {**state["stages"]["prompt"], "epoch": 2, "finished": False}
    main(csgn_opts(tmp, save, "model.resume", "auto"))
    assert_same_end(tmp, save)


def test_interrupted_in_stage_2_skips_stage_1_and_resumes_to_the_same_weights(
    straight, monkeypatch
):
    tmp = straight[0]
    save = tmp / "stage2_killed"
    original = CCEngine.forward_backward

    def stop_at_step_6(self, data):
        if self.global_step == 6:
            raise KeyboardInterrupt("simulated kill in stage 2")
        return original(self, data)

    monkeypatch.setattr(CCEngine, "forward_backward", stop_at_step_6)
    with pytest.raises(KeyboardInterrupt):
        main(csgn_opts(tmp, save))
    monkeypatch.undo()
    ran = []
    monkeypatch.setattr(stages.PromptStage, "cache_features", lambda *a: ran.append(1))
    main(csgn_opts(tmp, save, "model.resume", "auto"))
    assert ran == []  # the finished prompt stage is not run again
    assert_same_end(tmp, save)


def test_bf16_autocast_runs_on_cpu(tmp_path):
    engine = main(
        csgn_opts(
            tmp_path, tmp_path / "bf16", "runtime.amp", "bf16", "stage1.max_epoch", "1",
            "train.max_epoch", "1",
        )
    )  # fmt: skip
    assert engine.runtime.amp == "bf16"
    assert all(torch.isfinite(torch.tensor(v)).all() for _, v in engine.history["Train/hsf"])
