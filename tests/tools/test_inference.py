"""A trained model travels intact: the checkpoint alone rebuilds it (csgn_plugin.load_extractor,
tools/test.py), with the features and the results of the run that trained it."""

import glob
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from run_helpers import COMMON, ROOT, checkpoint, opts

import csgn_plugin
from csgn_plugin.inference import Extractor
from csgn_plugin.launcher import main
from csgn_plugin.modeling.spec import ModelSpec, build_model_from_spec, input_spec

SHORT = ["train.max_epoch", "1", "stage1.max_epoch", "1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny CSGN run of the main job's kind (its config, both stages, SynthCC)."""
    tmp = tmp_path_factory.mktemp("travel")
    engine = main(opts(tmp / "data", tmp / "run", "csgn", *SHORT))
    return tmp, engine


def test_the_extractor_gives_the_engines_own_evaluation_features(trained):
    tmp, engine = trained
    best = str(tmp / "run" / "checkpoints" / "best.pth")
    spec = checkpoint(tmp / "run", "best")["model_spec"]
    assert spec["name"] == "csgn" and spec["input"]["height"] == 64
    assert spec["architecture"]["vit_arch"] == "csgn-tiny-vit"
    extractor = csgn_plugin.load_extractor(best, "cpu")
    loader = engine.datamanager.test_loader["synthcc"]["query"]
    expected, labels = engine.evaluator.extract(engine.model, loader, "query")
    paths = [item[0] for item in engine.datamanager.test_dataset["synthcc"]["query"]]
    features = extractor(paths)
    assert features.shape == expected.shape  # 64 + 32 + 64: the tiny towers' parts
    torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-5)
    # and the same for a preprocessed batch and a single image
    torch.testing.assert_close(extractor(paths[0]), expected[:1], rtol=1e-5, atol=1e-5)


def test_tools_test_evaluates_the_recorded_model_whatever_the_config_says(trained, capsys):
    tmp, engine = trained
    best = str(tmp / "run" / "checkpoints" / "best.pth")
    capsys.readouterr()
    # the real-size config of another data set, pointed at the tiny checkpoint and SynthCC
    evaluated = main(
        [
            "--config-file", os.path.join(ROOT, "configs", "csgn_ltcc.yaml"),
            "data.root", str(tmp / "data"), "data.save_dir", str(tmp / "eval"),
            "data.sources", "['synthcc']", "data.targets", "['synthcc']",
            "cc_data.synthcc_preset", "tiny", "data.workers", "0", "model.pretrained", "False",
            "runtime.device", "cpu", "model.load_weights", best,
        ],
        test_only=True,
    )  # fmt: skip
    out = capsys.readouterr().out
    assert "data.height: 256 -> 64" in out and "data.norm_mean" in out
    assert evaluated.unwrapped_model.architecture() == engine.unwrapped_model.architecture()
    (run,) = glob.glob(str(tmp / "eval" / "eval" / "*"))
    with open(os.path.join(run, "results.json")) as f:
        results = json.load(f)["results"]["synthcc"]
    for mode, res in engine.last_results["synthcc"].items():
        assert results[mode]["mAP"] == pytest.approx(float(res.mAP), abs=1e-6)
        assert results[mode]["r1"] == pytest.approx(float(res.cmc[0]), abs=1e-6)


def test_a_csgn_checkpoint_is_evaluated_with_the_torchreid_baselines_config(trained):
    """Only evaluation's checks apply: that config's training sampler cannot form the triplets
    CSGN trains with, which does not matter to an evaluation; the checkpoint's feature settings
    (normalised, where that config says raw) give training's numbers back."""
    tmp, engine = trained
    best = str(tmp / "run" / "checkpoints" / "best.pth")
    evaluated = main(
        ["--config-file", os.path.join(ROOT, "configs", "synthcc_osnet.yaml"),
         "data.root", str(tmp / "data"), "data.save_dir", str(tmp / "osnet_config"), *COMMON,
         "model.load_weights", best],
        test_only=True,
    )  # fmt: skip
    assert evaluated.evaluator.options.normalize_feature is True
    for mode, res in engine.last_results["synthcc"].items():
        assert float(evaluated.last_results["synthcc"][mode].mAP) == float(res.mAP)


def test_a_file_without_a_spec_is_refused_by_the_extractor(tmp_path):
    path = tmp_path / "bare.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    with pytest.raises(ValueError, match="records no model_spec"):
        csgn_plugin.load_extractor(str(path))


def test_a_picture_gives_the_same_features_as_a_file_an_array_or_a_pil_image(tmp_path):
    """An RGBA picture (alpha 0, 128 and 255 over coloured stripes) and a 16-bit one (values up
    to 65535), each given as a file, as the array it decodes to and as the PIL image: one
    conversion (alpha over black, 16 bits scaled to 8) whatever the kind of input."""
    spec = ModelSpec(
        "osnet_x0_25", 6, {"loss": "softmax"}, input_spec(64, 32, [0.5] * 3, [0.5] * 3)
    )
    torch.manual_seed(0)
    extractor = Extractor(build_model_from_spec(spec), spec)
    rgba = np.zeros((64, 32, 4), dtype=np.uint8)
    rgba[..., 0] = np.arange(32, dtype=np.uint8) * 8
    rgba[..., 1] = 200
    rgba[..., 2] = np.arange(64, dtype=np.uint8)[:, None] * 4
    rgba[..., 3] = np.repeat([0, 128, 255, 255], 16)[:, None]
    sixteen = (np.arange(64 * 32, dtype=np.uint32).reshape(64, 32) * 32).astype(np.uint16)
    assert sixteen.max() > 60000
    for name, pixels in (("rgba.png", rgba), ("sixteen.png", sixteen)):
        path = str(tmp_path / name)
        Image.fromarray(pixels).save(path)
        with Image.open(path) as opened:
            opened.load()
            decoded = np.asarray(opened)
            features = [extractor(given) for given in (path, decoded, opened)]
        np.testing.assert_array_equal(decoded.astype(np.int64), pixels.astype(np.int64))
        torch.testing.assert_close(features[1], features[0], rtol=0, atol=0)
        torch.testing.assert_close(features[2], features[0], rtol=0, atol=0)
    # and the conversion is the one that matters: without the alpha the features differ
    assert not torch.equal(extractor(rgba[..., :3].copy()), extractor(rgba))


def test_a_clip_model_trains_and_is_evaluated_on_torchreids_own_market1501(tmp_path):
    """torchreid's Market-1501 class under the plugin's data manager: a tiny clipreid_vitb16
    trains an epoch, then tools/test.py evaluates its checkpoint with the Market-1501 config
    (general protocol only: the data set has no clothes labels)."""
    from dataset_trees import build_market1501

    tree = build_market1501(tmp_path)
    common = [
        "data.root", tree.root, "data.height", "64", "data.width", "32", "data.workers", "0",
        "model.pretrained", "False", "clip.vit_arch", "csgn-tiny-vit", "runtime.device", "cpu",
        "train.batch_size", "8", "test.batch_size", "16", "runtime.plot", "False",
        "test.visrank", "False",
    ]  # fmt: skip
    config = os.path.join(ROOT, "configs", "clipreid_vitb16_market1501.yaml")
    args = ["--config-file", config, *common, "data.save_dir", str(tmp_path / "run")]
    main([*args, "train.max_epoch", "1", "stage1.max_epoch", "1", "stage1.batch_size", "8"])
    best = str(tmp_path / "run" / "checkpoints" / "best.pth")
    engine = main([*args, "model.load_weights", best], test_only=True)
    assert set(engine.last_results["market1501"]) == {"general"}
    assert engine.last_results["market1501"]["general"].num_valid == 6  # 3 ids x 2 cameras
