"""The accuracy-study script runs end to end and writes its table, JSON and plot."""

import json
import os
import subprocess
import sys

import pytest
from run_helpers import ROOT


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
    per_run = tmp_path / "study" / "runs" / "tiny" / "csgn_no_resnet" / "seed0" / "metrics.json"
    assert set(json.loads(per_run.read_text())) == {"general", "cc", "sc"}
    # a finished run is reused only under the very config it was made with
    sys.path.insert(0, os.path.join(ROOT, "projects", "CSGN"))
    import study

    from csgn_plugin.compat import load_checkpoint

    run_dir = str(per_run.parent)
    saved = load_checkpoint(os.path.join(run_dir, "checkpoints", "last.pth"))["config"]
    assert study.finished_metrics(run_dir, saved) == json.loads(per_run.read_text())
    changed = saved.replace("max_epoch: 1\n", "max_epoch: 2\n")
    assert changed != saved and study.finished_metrics(run_dir, changed) is None


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
