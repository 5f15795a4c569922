"""The accuracy-study script runs end to end and writes its table, JSON and plot."""

import json
import os
import subprocess
import sys

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
        "osnet_x0_25",
        "csgn_no_resnet",
    ]
    rows = json.loads((tmp_path / "study" / "study.json").read_text())["rows"]
    assert len(rows) == 2 * 3 * 2  # variants x protocols x (R1, mAP)
    assert all(0 <= r["mean"] <= 100 and r["std"] == 0 for r in rows)  # one seed: no spread
    assert (tmp_path / "study" / "study.png").stat().st_size > 0
    per_run = tmp_path / "study" / "runs" / "tiny" / "csgn_no_resnet" / "seed0" / "metrics.json"
    assert set(json.loads(per_run.read_text())) == {"general", "cc", "sc"}
