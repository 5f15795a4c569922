"""tools/test.py on a trained checkpoint, and the clear errors of the wiring.

tools/test.py cannot mislead: it needs the trained weights (or an explicit opt-in, which the
table and results.json then state), records the checkpoint it evaluated, and compares features
as the checkpoint was trained to unless the command line says otherwise, so training's own
numbers come back."""

import glob
import hashlib
import json
import os

import pytest
from run_helpers import COMMON, ROOT, opts

from csgn_plugin.config import ConfigError
from csgn_plugin.launcher import main

OSNET_CONFIG = os.path.join(ROOT, "configs", "synthcc_osnet.yaml")  # normalize_feature false


def run_opts(tmp_path, save_dir, *extra):
    return opts(tmp_path / "data", save_dir, "osnet", "train.max_epoch", "1", *extra)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One epoch of OSNet on tiny SynthCC (evaluated with normalised features): the folder, the
    best checkpoint and training's results.json."""
    tmp = tmp_path_factory.mktemp("osnet")
    main(run_opts(tmp, tmp / "train"))
    with open(tmp / "train" / "results.json") as f:
        return tmp, tmp / "train" / "checkpoints" / "best.pth", json.load(f)


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def only_run(save_dir):
    (run,) = glob.glob(str(save_dir / "eval" / "*"))  # an evaluation folder of its own
    return run


def results_json(run):
    with open(os.path.join(run, "results.json")) as f:
        return json.load(f)


def evaluate(tmp, name, *extra):
    """tools/test.py with the torchreid baseline's config; returns its engine and results.json."""
    args = ["--config-file", OSNET_CONFIG, "data.root", str(tmp / "data")]
    engine = main([*args, "data.save_dir", str(tmp / name), *COMMON, *extra], test_only=True)
    return engine, results_json(only_run(tmp / name))


def test_evaluate_a_checkpoint_with_reranking_and_visrank(trained, capsys):
    tmp, best, _ = trained
    capsys.readouterr()
    engine = main(
        run_opts(tmp, tmp / "rerank", "model.load_weights", str(best), "test.rerank", "True",
                 "test.visrank", "True"),
        test_only=True,
    )  # fmt: skip
    out = capsys.readouterr().out
    assert "Applying person re-ranking" in out and "synthcc         CC" in out
    pictures = os.path.join(only_run(tmp / "rerank"), "visrank_synthcc")
    for mode, res in engine.last_results["synthcc"].items():  # one per scored query
        assert len(os.listdir(os.path.join(pictures, mode))) == res.num_valid
    assert set(engine.last_results["synthcc"]) == {"general", "cc", "sc"}


def test_evaluation_in_the_training_folder_writes_no_training_state(trained, capsys):
    """The README's command shape: tools/test.py with the training config (same save_dir) and
    model.load_weights pointing at that run's best.pth."""
    tmp, best, _ = trained
    save = tmp / "train"
    checkpoints = save / "checkpoints"
    before = {name: digest(checkpoints / name) for name in os.listdir(checkpoints)}
    capsys.readouterr()
    main(run_opts(tmp, save, "model.load_weights", str(best)), test_only=True)
    out = capsys.readouterr().out
    assert "New best" not in out
    assert {name: digest(checkpoints / name) for name in os.listdir(checkpoints)} == before
    run = only_run(save)
    results = results_json(run)["results"]["synthcc"]
    assert set(results) == {"general", "cc", "sc"}
    assert 0 <= results["cc"]["mAP"] <= 1 and len(results["cc"]["cmc"]) == 50
    assert glob.glob(os.path.join(run, "test.log-*"))
    assert os.path.isfile(os.path.join(run, "throughput.json"))


def test_the_checkpoints_evaluation_settings_win_and_trainings_numbers_come_back(trained, capsys):
    tmp, best, training = trained
    capsys.readouterr()
    engine, evaluation = evaluate(tmp, "eval", "model.load_weights", str(best))
    out = capsys.readouterr().out
    assert "test.normalize_feature: False -> True (the checkpoint's training config)" in out
    assert engine.evaluator.options.normalize_feature is True
    assert evaluation["results"] == training["results"]  # every protocol's CMC and mAP
    sha256 = digest(best)
    assert evaluation["checkpoint"] == {
        "path": str(best),
        "sha256": sha256,
        "epoch": 1,
        "model": "osnet_x0_25",
    }
    assert evaluation["untrained"] is False
    assert f"** Results ** of the checkpoint '{best}', after 1 epochs, sha256 {sha256[:12]}" in out


def test_the_command_line_overrides_the_checkpoints_settings(trained, capsys):
    tmp, best, _ = trained
    capsys.readouterr()
    args = ["model.load_weights", str(best), "test.normalize_feature", "False"]
    engine, _ = evaluate(tmp, "plain", *args)
    out = capsys.readouterr().out
    assert engine.evaluator.options.normalize_feature is False
    assert (
        "test.normalize_feature: False (command line; the checkpoint was trained with True)" in out
    )


def test_no_weights_is_refused_unless_asked_for_and_then_said(trained, capsys):
    tmp, _, _ = trained
    with pytest.raises(ConfigError, match=r"set model\.load_weights PATH"):
        evaluate(tmp, "refused")
    assert not (tmp / "refused").exists()
    capsys.readouterr()
    _, evaluation = evaluate(tmp, "untrained", "test.allow_untrained", "True")
    assert evaluation["checkpoint"] is None and evaluation["untrained"] is True
    assert "** Results ** of the UNTRAINED model" in capsys.readouterr().out


def test_unknown_dataset_and_model_names_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown image dataset 'ltccc'"):
        main(run_opts(tmp_path, tmp_path / "a", "data.sources", "['ltccc']"))
    with pytest.raises(ConfigError, match="unknown model 'osnet_x9'"):
        main(run_opts(tmp_path, tmp_path / "b", "model.name", "osnet_x9"))
