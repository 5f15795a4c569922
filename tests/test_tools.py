"""tools/test.py on a trained checkpoint, and the clear errors of the wiring."""

import os

import pytest

from csgn_plugin.launcher import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def opts(tmp_path, save_dir, *extra):
    return [
        "--config-file", os.path.join(ROOT, "configs", "synthcc_osnet.yaml"),
        "data.root", str(tmp_path / "data"),
        "data.save_dir", str(save_dir),
        "data.height", "64", "data.width", "32",
        "cc_data.synthcc_preset", "tiny",
        "train.batch_size", "16",
        "train.max_epoch", "1",
        "test.visrank", "False",
        "runtime.plot", "False",
        "runtime.device", "cpu",
        *extra,
    ]  # fmt: skip


def test_evaluate_a_checkpoint_with_reranking_and_visrank(tmp_path, capsys):
    main(opts(tmp_path, tmp_path / "train"))
    best = str(tmp_path / "train" / "checkpoints" / "best.pth")
    capsys.readouterr()
    engine = main(
        opts(tmp_path, tmp_path / "eval", "model.load_weights", best, "test.rerank", "True",
             "test.visrank", "True"),
        test_only=True,
    )  # fmt: skip
    out = capsys.readouterr().out
    assert "Applying person re-ranking" in out and "synthcc         CC" in out
    assert os.listdir(tmp_path / "eval" / "visrank_synthcc")
    assert set(engine.last_results["synthcc"]) == {"general", "cc", "sc"}


def test_unknown_dataset_and_model_names_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown image dataset 'ltccc'"):
        main(opts(tmp_path, tmp_path / "a", "data.sources", "['ltccc']"))
    with pytest.raises(KeyError, match="unknown model 'osnet_x9'"):
        main(opts(tmp_path, tmp_path / "b", "model.name", "osnet_x9"))
