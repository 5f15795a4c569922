"""The accuracy-study script runs end to end and writes its table, JSON and plot; the other
scripts of projects/CSGN (probes, weight comparison) do what they say."""

import argparse
import json
import os
import subprocess
import sys
import time

import pytest
import torch
from run_helpers import ROOT

from csgn_plugin.config import load_config


@pytest.mark.slow
def test_study_smoke_run_writes_table_json_and_plot(tmp_path):
    cmd = [
        sys.executable, os.path.join(ROOT, "projects", "CSGN", "study.py"), "--smoke",
        "--variants", "osnet_x0_25", "csgn_no_resnet",
        "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "study"),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = (tmp_path / "study" / "study.md").read_text().splitlines()
    assert [row.split(" | ")[1] for row in table if row.startswith("| tiny")] == [
        "chance (random ranking)",
        "osnet_x0_25",
        "csgn_no_resnet",
    ]
    rows = json.loads((tmp_path / "study" / "study.json").read_text())["rows"]
    assert len(rows) == 3 * 3 * 2  # (chance + 2 variants) x protocols x (R1, mAP)
    assert all(0 <= r["mean"] <= 100 and r["std"] == 0 for r in rows)  # one seed: no spread
    assert (tmp_path / "study" / "study.png").stat().st_size > 0
    # --report-only trains nothing: finished pairs keep their rows, the rest are named missing
    sys.path.insert(0, os.path.join(ROOT, "projects", "CSGN"))
    import study

    study.main([*cmd[2:], "--report-only", "--variants", "osnet_x0_25", "csgn", "csgn_no_resnet"])
    assert not (tmp_path / "study" / "runs" / "tiny" / "csgn").exists()
    again = (tmp_path / "study" / "study.md").read_text().splitlines()
    assert [row for row in again if row.startswith("| tiny")] == [
        row for row in table if row.startswith("| tiny")
    ]
    assert "Not run with these settings (no row): tiny/csgn." in again
    per_run = tmp_path / "study" / "runs" / "tiny" / "csgn_no_resnet" / "seed0" / "metrics.json"
    assert set(json.loads(per_run.read_text())) == {"general", "cc", "sc", "seconds"}
    # a finished run is reused only under the very config it was made with
    from csgn_plugin.compat import load_checkpoint

    run_dir = str(per_run.parent)
    saved = load_checkpoint(os.path.join(run_dir, "checkpoints", "last.pth"))["config"]
    assert study.finished_metrics(run_dir, saved) == json.loads(per_run.read_text())
    changed = saved.replace("max_epoch: 1\n", "max_epoch: 2\n")
    assert changed != saved and study.finished_metrics(run_dir, changed) is None


def test_paired_difference_has_a_t_interval_computed_by_hand():
    sys.path.insert(0, os.path.join(ROOT, "projects", "CSGN"))
    import study

    def run(cc_r1):
        return {"cc": {"r1": cc_r1, "mAP": 0.0}}

    runs = {
        ("p", "a"): [run(0.30), run(0.40), run(0.35)],
        ("p", "b"): [run(0.20), run(0.20), run(0.30)],
    }
    mean, low, high, n = study.paired_difference(runs, "p", "a", "b", "cc", "r1")
    # differences 10, 20, 5 points: mean 11.67, sample sd 7.64, t(0.975, 2) = 4.303
    assert n == 3 and mean == pytest.approx(35 / 3)
    half = 4.302653 * 7.637626 / 3**0.5
    assert (low, high) == pytest.approx((35 / 3 - half, 35 / 3 + half), abs=1e-3)


def test_against_pairs_each_seed_with_the_other_studys_run_of_that_seed(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "projects", "CSGN"))
    import study

    def metrics(cc_r1):
        return {"cc": {"r1": cc_r1, "mAP": 0.0}}

    other = tmp_path / "at_old"
    for seed, cc_r1 in ((0, 0.20), (1, 0.30)):
        run_dir = other / "runs" / "p" / "csgn" / f"seed{seed}"
        run_dir.mkdir(parents=True)
        (run_dir / "metrics.json").write_text(json.dumps(metrics(cc_r1)))
    runs = {
        ("p", "chance (random ranking)"): [metrics(0.0)],
        ("p", "csgn"): [metrics(0.25), metrics(0.40)],
    }
    args = argparse.Namespace(against=str(other) + os.sep, seeds=[0, 1])
    assert study.add_against(runs, args) == [("p", "csgn", "csgn @at_old")]
    assert runs[("p", "csgn @at_old")] == [metrics(0.20), metrics(0.30)]  # seed by seed
    mean, _, _, n = study.paired_difference(runs, "p", "csgn", "csgn @at_old", "cc", "r1")
    assert n == 2 and mean == pytest.approx(7.5)  # (5 + 10) / 2 points
    args.seeds = [0, 1, 2]  # a seed the other study lacks: no row, nothing paired
    del runs[("p", "csgn @at_old")]
    assert study.add_against(runs, args) == [] and ("p", "csgn @at_old") not in runs


def test_chance_row_matches_the_expected_rank1_of_a_random_ranking(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "projects", "CSGN"))
    import study

    from csgn_plugin.data.datasets.synthcc import SynthCC

    chance = study.chance_metrics(str(tmp_path), "tiny", trials=400)
    # a random ranking puts a good item first with probability good / valid gallery items,
    # averaged over the queries that have a good item (general protocol: same identity and
    # camera is junk, same identity on another camera is good)
    data = SynthCC(root=str(tmp_path), synthcc_preset="tiny", synthcc_seed=0, verbose=False)
    odds = []
    for _, pid, cam, _, _ in data.query:
        valid = [(p, c) for _, p, c, _, _ in data.gallery if not (p == pid and c == cam)]
        good = sum(p == pid for p, _ in valid)
        if good:
            odds.append(good / len(valid))
    assert chance["general"]["r1"] == pytest.approx(sum(odds) / len(odds), abs=0.015)


@pytest.mark.slow
def test_triplet_probe_reports_gradients_and_feature_statistics(tmp_path):
    out = tmp_path / "probe"
    argv = [
        "--epochs", "1", "--gradient-batches", "2", "--data-root", str(tmp_path / "data"),
        "--out", str(out), "cc_data.synthcc_preset", "tiny", "data.height", "64",
        "data.width", "32", "train.batch_size", "16",
    ]  # fmt: skip
    sys.path.insert(0, os.path.join(ROOT, "projects", "CSGN"))
    import triplet_probe

    triplet_probe.main(argv)  # in this process: a subprocess would import torch again
    report = json.loads((out / "triplet_probe.json").read_text())
    assert len(report["gradients"]) == 2 and [e["epoch"] for e in report["epochs"]] == [1]
    for row in report["gradients"]:
        assert row["grad_id"] > 0 and row["grad_triplet"] > 0 and 0 <= row["triplet_larger"] <= 1
    for row in report["epochs"]:
        assert row["ratio"] == pytest.approx(row["same"] / row["other"])
        assert row["norm"] > 0 and row["id"] > 0
    table = (out / "triplet_probe.md").read_text()
    assert table.count("\n| 1 |") == 2 and "same / other" in table  # both tables, row 1 each
    assert not os.path.exists(os.path.join(ROOT, "log", "triplet_probe"))  # it saves no run


@pytest.mark.slow
def test_prompt_probe_holds_out_one_outfit_per_person_and_reports_both_modalities(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "projects", "CSGN"))
    import prompt_probe

    items = [  # (path, pid, camid, dsetid, clothes_id)
        ("a", 0, 0, 0, 0), ("b", 0, 1, 0, 1), ("c", 0, 0, 0, 1),
        ("d", 1, 0, 0, 2),  # one outfit only: nothing held out
        ("e", 2, 1, 0, 3), ("f", 2, 0, 0, 5), ("g", 2, 1, 0, 4),
    ]  # fmt: skip
    seen, new = prompt_probe.split_outfits(items)
    assert [it[0] for it in new] == ["b", "c", "f"]  # each person's highest clothes id
    assert [it[0] for it in seen] == ["a", "d", "e", "g"]
    out = tmp_path / "out"
    argv = [
        "--random", "--preset", "tiny", "--stage1-epochs", "1",
        "--data-root", str(tmp_path / "data"), "--out", str(out),
        "data.height", "64", "data.width", "32",
        "clip.vit_arch", "csgn-tiny-vit", "clip.resnet_arch", "csgn-tiny-rn",
    ]  # fmt: skip
    prompt_probe.main(argv)  # in this process: a subprocess would import torch again
    report = json.loads((out / "random.json").read_text())
    assert report["chance"] == pytest.approx(1 / report["identities"])
    for split in ("seen", "new_outfit"):
        assert set(report[split]) == {"rgb", "gray"}
        assert all(0 <= v <= 1 for v in report[split].values())


def test_a_finished_synthclip_run_is_found_again(tmp_path, monkeypatch):
    """A run saves its config with 'synthclip' resolved to the cached files; the study must
    compare against that form, or every SynthCLIP run would be retrained on each invocation."""
    sys.path.insert(0, os.path.join(ROOT, "projects", "CSGN"))
    import study
    import torch

    import csgn_plugin.builders as builders

    files = {"vit": str(tmp_path / "vit" / "openai.pt"), "rn": str(tmp_path / "rn" / "openai.pt")}
    monkeypatch.setattr(builders, "ensure_synthclip_towers", lambda root, towers: files)
    args = argparse.Namespace(
        data_root=str(tmp_path / "data"), epochs=10, stage1_epochs=20, smoke=False, threads=1
    )
    config, opts, run_dir = study.run_spec(str(tmp_path / "out"), "default", "csgn", 0, args)
    saved = load_config(config, opts)
    saved.defrost()
    saved.clip.vit_weights, saved.clip.resnet_weights = files["vit"], files["rn"]
    os.makedirs(os.path.join(run_dir, "checkpoints"))
    torch.save({"config": saved.dump()}, os.path.join(run_dir, "checkpoints", "last.pth"))
    metrics = {"cc": {"r1": 0.5, "mAP": 0.4}}
    with open(os.path.join(run_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f)
    assert study.stored_metrics(str(tmp_path / "out"), "default", "csgn", 0, args) == metrics
    # another SynthCLIP file (another corpus or pretraining) is another run
    files["vit"] = str(tmp_path / "other" / "openai.pt")
    assert study.stored_metrics(str(tmp_path / "out"), "default", "csgn", 0, args) is None


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(child) for child in f.read().split()]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"  # a zombie is dead, only not yet reaped
    except FileNotFoundError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal: Linux")
def test_a_killed_study_leaves_no_worker_behind(tmp_path):
    """Workers left by a killed study would go on rewriting run folders beside the next study."""
    cmd = [
        sys.executable, os.path.join(ROOT, "projects", "CSGN", "study.py"), "--smoke",
        "--variants", "csgn_no_resnet", "--jobs", "2",
        "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "study"),
    ]  # fmt: skip
    study = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while len(_children(study.pid)) < 2 and time.time() < deadline:
            time.sleep(0.2)
        workers = _children(study.pid)
        assert study.poll() is None and len(workers) >= 2, "the study never started its workers"
    finally:
        study.kill()
        study.wait()
    deadline = time.time() + 20
    while any(_alive(w) for w in workers) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(_alive(w) for w in workers)


def test_compare_weights_by_hand():
    sys.path.insert(0, os.path.join(ROOT, "projects", "CSGN"))
    import compare_weights

    b = {
        "same": torch.ones(2, 3),
        "rows": torch.ones(4, 2),
        "shape": torch.ones(2),
        "gone": torch.ones(1),
    }
    a = {
        "same": torch.ones(2, 3),
        "rows": torch.ones(4, 2),
        "shape": torch.ones(3),
        "new": torch.ones(1),
    }
    a["rows"][1, 0] = 1.5  # one row differs, by half of B's value
    assert compare_weights.compare(a, b) == [
        "same: equal",
        "rows: 1 of 4 rows differ, largest relative difference 5.00e-01",
        "shape: shapes differ, (3,) vs (2,)",
        "gone: only in B",
        "new: only in A",
    ]
