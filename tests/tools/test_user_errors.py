"""Errors a user can fix end every tool with their message alone on stderr and exit code 2,
refused before any work (nothing written under the data root or the run's folder); ``--debug``
adds the traceback, the run's log file keeps it; an internal error keeps its traceback.

The tools run in this process through their own ``__main__`` (``runpy``: the exit code, stdout
and stderr are those of the command, without importing torch again); the issue's example runs as
a real subprocess."""

import os
import re
import runpy
import subprocess
import sys

import pytest
import torch
from run_helpers import COMMON, ROOT, opts

TOOLS = os.path.join(ROOT, "tools")
CSGN_SYNTHCC = os.path.join(ROOT, "configs", "csgn_synthcc.yaml")
OFFLINE = {  # an unreachable proxy: every download fails at once
    name: "http://127.0.0.1:9"
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy")
}


def run_tool(monkeypatch, capsys, tool, *args):
    """``python tools/TOOL ARGS``: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", [os.path.join(TOOLS, tool), *map(str, args)])
    monkeypatch.setattr(sys, "path", list(sys.path))  # the tools prepend their folders
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit:
        runpy.run_path(os.path.join(TOOLS, tool), run_name="__main__")
    out, err = capsys.readouterr()
    return exit.value.code, out, err


def assert_one_line(err, match):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(match, lines[0]), lines[0]


def test_the_issues_example_fails_in_one_line_and_creates_nothing(tmp_path):
    """A wrong data root: refused before SynthCLIP, SynthCC or any folder (data root, log)."""
    root = tmp_path / "no" / "such" / "root"
    cmd = [sys.executable, os.path.join(TOOLS, "train.py"), "--config-file", CSGN_SYNTHCC]
    cmd += ["data.sources", "['ltcc']", "data.targets", "['ltcc']", "data.root", str(root)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stdout == ""
    where = re.escape(str(root / "LTCC_ReID"))
    assert_one_line(proc.stderr, rf"LTCC: '{where}' does not exist.*signed agreement")
    assert os.listdir(tmp_path) == []  # no data root, no log/csgn_synthcc


def _bad_checkpoint(tmp_path):
    path = tmp_path / "cut.pth"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, path)
    path.write_bytes(path.read_bytes()[:300])
    return path


@pytest.mark.parametrize(
    ("model", "extra", "match"),
    [
        ("osnet", ["train.max_epochs", "3"], r"'train\.max_epochs'.*'train\.max_epoch'"),
        ("osnet", ["data.targets", "['synthcc', 'prcc']"], r"PRCC: '.*/prcc' does not exist"),
        ("osnet", ["cc_data.synthcc_preset", "huge"], r"unknown SynthCC preset 'huge'"),
        ("osnet", ["data.height", "16", "data.width", "8"], r"cannot take images of .* = 16x8"),
        ("osnet", ["model.load_weights", "{tmp}/none.pth"], r"checkpoint not found: '.*none\.pth'"),
        ("osnet", ["model.resume", "{cut}"], r"cut\.pth' could not be read; it is truncated"),
        ("osnet", ["data.save_dir", "{file}"], r"data\.save_dir '.*a_file': .* is a file"),
        ("csgn", ["csgn.modalities", "['rgb', 'ir']"], r"csgn\.modalities must be a subset"),
        ("csgn", ["model.pretrained", "True", "clip.vit_weights", "opeani",
                  "clip.resnet_weights", "''"],
         r"clip\.vit_weights 'opeani' is neither an existing file nor a pretrained tag"),
    ],
)  # fmt: skip
def test_train_refuses_before_any_work(tmp_path, monkeypatch, capsys, model, extra, match):
    (tmp_path / "a_file").write_text("")
    paths = {"tmp": tmp_path, "cut": _bad_checkpoint(tmp_path), "file": tmp_path / "a_file"}
    extra = [value.format(**paths) for value in extra]
    args = opts(tmp_path / "data", tmp_path / "run", model, *extra)
    code, out, err = run_tool(monkeypatch, capsys, "train.py", *args)
    assert code == 2 and out == ""
    assert_one_line(err, match)
    assert not (tmp_path / "data").exists() and not (tmp_path / "run").exists()


def test_debug_shows_the_traceback(tmp_path, monkeypatch, capsys):
    args = opts(tmp_path / "data", tmp_path / "run", "osnet", "train.max_epochs", "3")
    code, _, err = run_tool(monkeypatch, capsys, "train.py", *args, "--debug")
    assert code == 2 and "Traceback (most recent call last)" in err
    assert err.strip().splitlines()[-1].startswith("error: ") and "ConfigError" in err


def test_a_failed_download_of_weights_names_the_key_and_the_log_keeps_the_traceback(
    tmp_path, monkeypatch, capsys
):
    """The shipped CPU demo switched to a torchreid model, offline: its model.pretrained True
    asks for ImageNet weights; the download fails before any data is generated."""
    for name, value in {**OFFLINE, "TORCH_HOME": str(tmp_path / "torch")}.items():
        monkeypatch.setenv(name, value)
    args = ["--config-file", CSGN_SYNTHCC, "data.root", tmp_path / "data"]
    args += ["data.save_dir", tmp_path / "run", *COMMON, "model.name", "osnet_x0_25"]
    code, out, err = run_tool(monkeypatch, capsys, "train.py", *args)
    assert code == 2, err
    last = err.strip().splitlines()[-1]
    assert (
        "ImageNet weights of torchreid's 'osnet_x0_25'" in last and "model.pretrained False" in last
    )
    assert "Traceback" not in err
    assert "model.pretrained True: torchreid's model 'osnet_x0_25' starts from" in out
    assert not (tmp_path / "data").exists()  # SynthCC was not generated first
    (log,) = (tmp_path / "run").glob("train.log-*")
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "WeightsDownloadError" in text


@pytest.mark.parametrize(
    ("tool", "args", "match"),
    [
        ("test.py", ["--config-file", CSGN_SYNTHCC, "data.root", "{tmp}/data"],
         r"needs the trained weights: set model\.load_weights.*test\.allow_untrained True"),
        ("test.py", ["--config-file", CSGN_SYNTHCC, "model.load_weights", "{tmp}/no.pth"],
         r"checkpoint not found"),
        ("check_dataset.py", ["ltcc", "--root", "{tmp}/data"], r"LTCC: .* does not exist"),
        ("download.py", ["ltccc", "--root", "{tmp}/data"], r"unknown name 'ltccc'"),
        ("convert_clipreid.py", ["{tmp}/none.pth", "{tmp}/out.pth"], r"checkpoint not found"),
        ("convert_clipreid.py", ["{plain}", "{tmp}/out.pth"], r"is not a CLIP-ReID checkpoint"),
        ("pretrain_clip.py", ["--root", "{tmp}/data", "--steps", "0"], r"steps = 0: expected"),
        ("probe_synthclip.py", ["--root", "{tmp}/data", "--tower", "vit", "--weights",
                                "{tmp}/none.pt"], r"SynthCLIP weight file not found"),
    ],
)  # fmt: skip
def test_every_tool_ends_a_user_error_in_one_line(tmp_path, monkeypatch, capsys, tool, args, match):
    plain = tmp_path / "plain.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, plain)
    args = [a.format(tmp=tmp_path, plain=plain) for a in args]
    code, _, err = run_tool(monkeypatch, capsys, tool, *args)
    assert code == 2
    assert_one_line(err, match)
    assert not (tmp_path / "data").exists()


def test_a_failed_dataset_download_is_one_line(tmp_path, monkeypatch, capsys):
    for name, value in OFFLINE.items():
        monkeypatch.setenv(name, value)
    code, _, err = run_tool(monkeypatch, capsys, "download.py", "ccvid", "--root", tmp_path)
    assert code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: CCVID: fetching Google Drive file") and "--archive FILE" in last


def test_an_internal_error_keeps_its_traceback(capsys):
    sys.path.insert(0, TOOLS)
    try:
        from _cli import run
    finally:
        sys.path.remove(TOOLS)
    from csgn_plugin.errors import UserError

    def broken(argv):
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):  # Python prints it and exits 1
        run(broken, [])

    def refused(argv):
        raise UserError("what is wrong; what to do")

    assert run(refused, ["--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1] == "error: what is wrong; what to do"
    assert run(lambda argv: None, ["--debug"]) == 0
