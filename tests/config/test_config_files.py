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
