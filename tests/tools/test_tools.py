"""tools/test.py on a trained checkpoint, and the clear errors of the wiring."""

import glob
import hashlib
import json
import os

import pytest
from run_helpers import opts

from csgn_plugin.launcher import main


def run_opts(tmp_path, save_dir, *extra):
    return opts(tmp_path / "data", save_dir, "osnet", "train.max_epoch", "1", *extra)


def test_evaluate_a_checkpoint_with_reranking_and_visrank(tmp_path, capsys):
    main(run_opts(tmp_path, tmp_path / "train"))
    best = str(tmp_path / "train" / "checkpoints" / "best.pth")
    capsys.readouterr()
    engine = main(
        run_opts(tmp_path, tmp_path / "eval", "model.load_weights", best, "test.rerank", "True",
             "test.visrank", "True"),
        test_only=True,
    )  # fmt: skip
    out = capsys.readouterr().out
    assert "Applying person re-ranking" in out and "synthcc         CC" in out
    (run,) = glob.glob(str(tmp_path / "eval" / "eval" / "*"))  # an evaluation folder of its own
    assert os.listdir(os.path.join(run, "visrank_synthcc"))
    assert set(engine.last_results["synthcc"]) == {"general", "cc", "sc"}


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_evaluation_in_the_training_folder_writes_no_training_state(tmp_path, capsys):
    """The README's command shape: tools/test.py with the training config (same save_dir) and
    model.load_weights pointing at that run's best.pth."""
    save = tmp_path / "train"
    main(run_opts(tmp_path, save))
    checkpoints = save / "checkpoints"
    before = {name: digest(checkpoints / name) for name in os.listdir(checkpoints)}
    capsys.readouterr()
    best = str(checkpoints / "best.pth")
    main(run_opts(tmp_path, save, "model.load_weights", best), test_only=True)
    out = capsys.readouterr().out
    assert "New best" not in out
    assert {name: digest(checkpoints / name) for name in os.listdir(checkpoints)} == before
    (run,) = glob.glob(str(save / "eval" / "*"))
    with open(os.path.join(run, "results.json")) as f:
        results = json.load(f)["results"]["synthcc"]
    assert set(results) == {"general", "cc", "sc"}
    assert 0 <= results["cc"]["mAP"] <= 1 and len(results["cc"]["cmc"]) == 50
    assert glob.glob(os.path.join(run, "test.log-*"))


def test_unknown_dataset_and_model_names_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown image dataset 'ltccc'"):
        main(run_opts(tmp_path, tmp_path / "a", "data.sources", "['ltccc']"))
    with pytest.raises(KeyError, match="unknown model 'osnet_x9'"):
        main(run_opts(tmp_path, tmp_path / "b", "model.name", "osnet_x9"))
