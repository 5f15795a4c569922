"""tools/test.py on a trained checkpoint, and the clear errors of the wiring."""

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
    assert os.listdir(tmp_path / "eval" / "visrank_synthcc")
    assert set(engine.last_results["synthcc"]) == {"general", "cc", "sc"}


def test_unknown_dataset_and_model_names_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown image dataset 'ltccc'"):
        main(run_opts(tmp_path, tmp_path / "a", "data.sources", "['ltccc']"))
    with pytest.raises(KeyError, match="unknown model 'osnet_x9'"):
        main(run_opts(tmp_path, tmp_path / "b", "model.name", "osnet_x9"))
