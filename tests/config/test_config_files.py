import glob
import os

import pytest

from csgn_plugin.config import ConfigError, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FILES = sorted(
    glob.glob(os.path.join(ROOT, "configs", "*.yaml"))
    + glob.glob(os.path.join(ROOT, "projects", "CSGN", "configs", "*.yaml"))
)


def test_there_is_a_config_per_dataset_and_method():
    names = {os.path.basename(f) for f in FILES}
    for ds in ("ltcc", "prcc", "vcclothes", "deepchange", "last", "celebreid", "synthcc"):
        assert f"csgn_{ds}.yaml" in names
    assert {"clipreid_vitb16_ltcc.yaml", "clipreid_rn50_ltcc.yaml"} <= names
    for ds in ("ltcc", "prcc", "vcclothes", "deepchange", "last"):
        assert f"cal_{ds}.yaml" in names
    assert "synthcc_cal.yaml" in names


@pytest.mark.parametrize("path", FILES, ids=os.path.basename)
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert cfg.data.sources and cfg.model.name


def _flat(cfg, prefix=""):
    out = {}
    for key, value in cfg.items():
        if hasattr(value, "items"):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@pytest.mark.parametrize(
    "name, expected",
    [
        ("ltcc_no_gray_prompts", {"csgn.modalities": ["rgb"], "loss.hsf.gray_weight": 0.0}),
        ("ltcc_no_resnet", {"csgn.use_resnet": False}),
        ("ltcc_hsf_rgb_only", {"loss.hsf.gray_weight": 0.0}),
        ("ltcc_fusion_sum", {"csgn.fusion": "sum"}),
        ("ltcc_fusion_cross_attn", {"csgn.fusion": "cross_attn"}),
        (
            "ltcc_clipreid",
            {"csgn.modalities": ["rgb"], "csgn.use_resnet": False, "loss.hsf.gray_weight": 0.0},
        ),
    ],
)
def test_ablations_change_only_their_switches(name, expected):
    base = _flat(load_config(os.path.join(ROOT, "configs", "csgn_ltcc.yaml")))
    ablation = _flat(load_config(os.path.join(ROOT, "projects", "CSGN", "configs", f"{name}.yaml")))
    changed = {k: v for k, v in ablation.items() if base[k] != v and k != "data.save_dir"}
    assert changed == expected


def test_ltcc_size_run_keeps_csgn_ltccs_whole_schedule():
    base = _flat(load_config(os.path.join(ROOT, "configs", "csgn_ltcc.yaml")))
    path = os.path.join(ROOT, "projects", "CSGN", "configs", "synthcc_ltcc_size.yaml")
    run = _flat(load_config(path))
    changed = {k: v for k, v in run.items() if base[k] != v and k != "data.save_dir"}
    assert changed == {
        "model.pretrained": False,
        "data.sources": ["synthcc"],
        "data.targets": ["synthcc"],
        "runtime.checkpoint_period": 10,
        "cc_data.synthcc_preset": "ltcc",
    }


def test_base_chains_resolve_relative_paths_and_refuse_loops(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "base.yaml").write_text("train:\n  lr: 0.5\n  max_epoch: 3\n")
    (tmp_path / "sub" / "child.yaml").write_text("_BASE_: ../base.yaml\ntrain:\n  max_epoch: 9\n")
    cfg = load_config(str(tmp_path / "sub" / "child.yaml"))
    assert (cfg.train.lr, cfg.train.max_epoch) == (0.5, 9)
    (tmp_path / "a.yaml").write_text("_BASE_: b.yaml\n")
    (tmp_path / "b.yaml").write_text("_BASE_: a.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        load_config(str(tmp_path / "a.yaml"))
    (tmp_path / "c.yaml").write_text("_BASE_: missing.yaml\n")
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_config(str(tmp_path / "c.yaml"))


# Simple-CCReID's recipe (guxinqian/Simple-CCReID, commit 88c5b0b), written out from its files:
# configs/default_img.py, configs/res50_cels_cal*.yaml, main.py, script.sh (two processes of
# DATA.TRAIN_BATCH 32: a global batch of 64)
CAL_RECIPE = {
    "model.name": "cal_resnet50", "model.pretrained": True,
    "data.height": 384, "data.width": 192,  # default_img.py:18-20
    "data.transforms": ["random_flip", "random_crop", "random_erase_cifar_mean"],
    "data.norm_mean": [0.485, 0.456, 0.406], "data.norm_std": [0.229, 0.224, 0.225],
    "sampler.train_sampler": "IdentityGroupShuffleSampler", "sampler.num_instances": 8,
    "train.batch_size": 64, "train.optim": "adam", "train.lr": 0.00035,
    "train.weight_decay": 0.0005, "train.max_epoch": 60, "train.lr_scheduler": "multi_step",
    "train.stepsize": [20, 40], "train.gamma": 0.1, "train.step_scheduler_at": "epoch_end",
    "train.bias_lr_factor": 1.0, "train.warmup_epochs": 0, "train.seed": 1,
    "loss.softmax.label_smooth": True, "loss.cal.id_loss": "cross_entropy",
    "loss.cal.scale": 16.0, "loss.cal.id_margin": 0.0, "loss.cal.pair_weight": 0.0,
    "loss.cal.pair_margin": 0.3, "loss.cal.epsilon": 0.1, "loss.cal.start_epoch_cc": 25,
    "loss.cal.start_epoch_adv": 25, "test.batch_size": 128, "test.dist_metric": "cosine",
    "test.eval_freq": 5, "runtime.amp": "off", "cc_eval.best_metric": "cc_r1",
}  # fmt: skip
CAL_DATASETS = {
    "ltcc": {"data.sources": ["ltcc"]},
    "prcc": {"data.sources": ["prcc"]},
    "vcclothes": {"data.sources": ["vcclothes"],
                  "data.targets": ["vcclothes", "vcclothes_sc", "vcclothes_cc"]},
    # res50_cels_cal_16x4.yaml, --amp
    "deepchange": {"data.sources": ["deepchange"], "sampler.num_instances": 4,
                   "runtime.amp": "fp16", "cc_eval.best_metric": "general_r1"},
    # res50_cels_cal_tri_16x4.yaml, --amp
    "last": {"data.sources": ["last"], "sampler.num_instances": 4, "loss.cal.pair_weight": 1.0,
             "runtime.amp": "fp16", "cc_eval.best_metric": "general_r1"},
}  # fmt: skip


@pytest.mark.parametrize("dataset", list(CAL_DATASETS))
def test_cal_configs_are_simple_ccreids_recipes(dataset):
    cfg = _flat(load_config(os.path.join(ROOT, "configs", f"cal_{dataset}.yaml")))
    expected = {**CAL_RECIPE, **CAL_DATASETS[dataset]}
    assert {k: cfg[k] for k in expected} == expected
