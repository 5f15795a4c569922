"""Bad configs: unknown keys (with a did-you-mean), wrong types and incompatible options are
refused before any work starts (no data generated, nothing written); what can only be checked on
the data or the built model is refused before the first training step."""

import os
from types import SimpleNamespace

import pytest
from run_helpers import opts

from csgn_plugin import checks, launcher
from csgn_plugin.config import ConfigError, load_config
from csgn_plugin.launcher import main


def assert_refused_early(tmp_path, error, match, *extra, config_file=None):
    args = opts(tmp_path / "data", tmp_path / "run", "osnet", *extra)
    if config_file:
        args[1] = str(config_file)
    with pytest.raises(error, match=match):
        main(args)
    assert not os.path.exists(tmp_path / "data")  # the dataset was not even generated
    assert not os.path.exists(tmp_path / "run")  # no log, no checkpoint


def test_unknown_key_in_a_file_gets_a_did_you_mean(tmp_path):
    config = tmp_path / "typo.yaml"
    config.write_text("sampler:\n  num_instance: 4\n")
    assert_refused_early(
        tmp_path, ConfigError, r"typo\.yaml.*'sampler\.num_instance'.*'sampler\.num_instances'",
        config_file=config,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["train.max_epochs", "3"], r"did you mean 'train\.max_epoch'"),
        (["train.batch_size", "sixteen"], r"train\.batch_size"),  # wrong type
        (["runtime.nan_policy", "ignore"], r"runtime\.nan_policy must be one of"),
        (["cc_data.image_policy", "skp"], r"cc_data\.image_policy.*did you mean 'skip'"),
        (["data.sources", "['synthc']"], r"data\.sources.*did you mean 'synthcc'"),
        (["model.name", "osnet_x0_2"], r"model\.name.*did you mean 'osnet_x0_25'"),
        (["train.optim", "adamm"], r"train\.optim.*did you mean 'adam'"),
        (["runtime.checkpoint_iters", "-1"], r"runtime\.checkpoint_iters must be a number >= 0"),
        (["runtime.amp", "fp16"], r"'fp16' needs CUDA"),  # the scaler needs a GPU
        # a triplet loss without an identity sampler has no positives
        (["sampler.train_sampler", "RandomSampler"], r"needs positives in every batch"),
        # an identity sampler cannot fill a batch with whole groups of K
        (["train.batch_size", "18"], r"train\.batch_size=18 must be a multiple of .*=4"),
    ],
)
def test_bad_values_and_incompatible_options_are_refused_before_any_work(tmp_path, extra, match):
    assert_refused_early(tmp_path, (ConfigError, ValueError, KeyError, RuntimeError), match, *extra)


def test_ddp_batch_split_and_video_skip_are_refused_by_the_checks():
    cfg = load_config("", ["train.batch_size", "32", "sampler.train_sampler",
                           "RandomIdentitySampler"])  # fmt: skip
    checks.check_config(cfg, world_size=2)  # 16 per process: 4 groups of 4
    with pytest.raises(ValueError, match="divisible by the number of processes"):
        checks.check_config(cfg, world_size=3)
    with pytest.raises(ValueError, match=r"per process \(32 / 16\) must be a multiple of"):
        checks.check_config(cfg, world_size=16)  # 2 per process: not one group of 4
    video = ["data.type", "video", "data.sources", "['ccvid']", "data.targets", "['ccvid']"]
    video = load_config("", [*video, "cc_data.image_policy", "skip"])
    with pytest.raises(ValueError, match="image datasets only"):
        checks.check_config(video)


@pytest.mark.parametrize(
    ("model", "extra", "match"),
    [
        # more identities per batch than the training set has (tiny: 8 ids; 64 / 4 = 16)
        ("osnet", ["train.batch_size", "64"], r"needs 16 identities.*has 8"),
        # a plain random sampler with a batch larger than the 103 training images
        ("osnet", ["loss.name", "softmax", "sampler.train_sampler", "RandomSampler",
                   "train.batch_size", "128"], r"train\.batch_size=128 cannot be filled"),
        # sizes the backbone cannot take: OSNet's pooling, CSGN's ViT patch (16 px)
        ("osnet", ["data.height", "16", "data.width", "8"],
         r"'osnet_x0_25' cannot take images of data\.height x data\.width = 16x8"),
        ("csgn", ["data.height", "12", "data.width", "12"],
         r"data\.height x data\.width = 12x12.*smaller than the patch size 16"),
    ],
)  # fmt: skip
def test_what_needs_the_data_or_the_model_is_refused_before_training(tmp_path, model, extra, match):
    save = tmp_path / "run"
    with pytest.raises(ValueError, match=match):
        main(opts(tmp_path / "data", save, model, *extra))
    assert not os.path.exists(save / "checkpoints")


def test_more_instances_than_an_identity_has_is_accepted(tmp_path):
    """K = 8 > the 5 and 6 images of the smallest tiny identities: they repeat (torchreid's
    rule), which is not an error."""
    engine = main(opts(tmp_path / "data", tmp_path / "run", "osnet", "train.max_epoch", "1",
                       "sampler.num_instances", "8"))  # fmt: skip
    assert engine.global_step > 0


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("data.k_tfm", "2"),
        ("market1501.use_500k_distractors", "True"),
        ("cuhk03.use_metric_cuhk03", "True"),
        ("sampler.num_cams", "2"),
        ("data.load_train_targets", "True"),
    ],
)
def test_torchreid_keys_the_plugin_does_not_implement_are_refused_unless_default(key, value):
    checks.check_config(load_config("", []))  # their defaults load (torchreid configs keep working)
    with pytest.raises(ConfigError, match=rf"{key}.*not implemented by csgn_plugin"):
        checks.check_config(load_config("", [key, value]))


def test_switching_to_a_torchreid_model_says_what_no_longer_applies():
    cfg = load_config(
        os.path.join(os.path.dirname(__file__), "..", "..", "configs", "csgn_synthcc.yaml"),
        ["model.name", "osnet_x0_25", "loss.name", "triplet"],
    )
    text = checks.describe_model_choice(cfg)
    assert "torchreid model" in text and "loss 'triplet'" in text
    assert "clip, csgn, stage1, loss.clip, loss.hsf, loss.cal do not apply" in text
    assert "values set in clip, stage1, loss.clip are ignored" in text
    clip = checks.describe_model_choice(load_config("", ["model.name", "csgn"]))
    assert "loss.name, loss.triplet.weight_x/weight_t and loss.cal do not apply" in clip
    cal = checks.describe_model_choice(load_config("", ["model.name", "cal_resnet50"]))
    assert "(CAL): loss.cal and loss.softmax.label_smooth apply" in cal


CAL = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "synthcc_cal.yaml")


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["loss.cal.id_loss", "arcface"], r"loss\.cal\.id_loss must be one of"),
        (["loss.cal.id_loss", "cosface"], r"'cosface' has no label smoothing.*label_smooth False"),
        (["loss.cal.epsilon", "1.5"], r"loss\.cal\.epsilon must be in \[0, 1\]"),
        (["loss.cal.scale", "0.0"], r"loss\.cal\.scale must be a number > 0"),
        (["loss.cal.start_epoch_adv", "-1"], r"loss\.cal\.start_epoch_adv must be a number >= 0"),
        (["loss.cal.pair_weight", "1.0", "sampler.train_sampler", "RandomSampler"],
         r"loss\.cal\.pair_weight.*needs positives in every batch"),
    ],
)  # fmt: skip
def test_cal_values_are_checked(extra, match):
    checks.check_config(load_config(CAL, []))
    checks.check_config(load_config(CAL, ["sampler.train_sampler", "RandomSampler"]))  # no pairs
    with pytest.raises((ConfigError, ValueError), match=match):
        checks.check_config(load_config(CAL, extra))


def test_cal_refuses_training_data_without_clothes_ids():
    data = SimpleNamespace(num_train_clothes=0)
    with pytest.raises(ValueError, match=r"'cal_osnet_x0_25' \(CAL\) needs clothes ids"):
        checks.check_data(load_config(CAL, ["data.sources", "['market1501']"]), data)


def test_cpu_numerics_are_fixed_before_the_preflight_computes(tmp_path, monkeypatch):
    """The kernel set is chosen once per process, by its first computation: the run's own
    choice (``runtime.cpu_kernels``) must come before the checks, which may compute (probing
    SynthCLIP weights did, and the main job ran on AVX-512 kernels)."""
    calls = []

    def numerics(kernels, threads):
        calls.append(("numerics", kernels, threads))
        return {"kernels": "AVX2", "threads": threads, "as_asked": True}

    def preflight(*args):
        calls.append(("preflight",))
        raise ConfigError("stop here")

    monkeypatch.setattr(launcher, "set_cpu_numerics", numerics)
    monkeypatch.setattr(launcher.preflight, "check_run", preflight)
    with pytest.raises(ConfigError, match="stop here"):
        main(opts(tmp_path / "data", tmp_path / "run", "osnet"))
    assert calls == [("numerics", "avx2", 1), ("preflight",)]
    assert_refused_early(tmp_path, ConfigError, r"runtime\.cpu_kernels must be one of",
                         "runtime.cpu_kernels", "avx3")  # fmt: skip
