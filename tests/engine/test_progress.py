"""The progress helper: its status line by hand, periodic log lines on a fake clock, rank 0 only."""

import multiprocessing
import runpy

import pytest
from tqdm import tqdm

import csgn_plugin.progress as progress_module
from csgn_plugin.progress import Progress, format_duration, track


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(progress_module.time, "monotonic", fake)
    return fake


def test_format_duration():
    assert format_duration(0) == "0:00:00"
    assert format_duration(3725.4) == "1:02:05"
    assert format_duration(-3) == "0:00:00"


def test_status_line_by_hand(clock):
    progress = Progress(100, "extract", unit="img", enabled=True, log_every_s=1e9)
    progress.update(25)
    clock.now = 50.0
    # 25 images in 50 s: 0.5/s; 75 left at that rate: 150 s
    assert progress.status() == "extract: 25/100 img (0.5/s, 0:00:50 elapsed, ETA 0:02:30)"
    clock.now = 0.0
    unknown_total = Progress(None, "rank", unit="row", enabled=True)
    unknown_total.update(10)
    assert unknown_total.status(now=4.0) == "rank: 10 row (2.5/s, 0:00:04 elapsed)"


def test_a_log_line_every_period_and_none_for_short_work(clock, capsys):
    with Progress(6, "work", enabled=True, log_every_s=10.0) as progress:
        for now in (4.0, 9.0, 11.0, 15.0, 21.5, 22.0):
            clock.now = now
            progress.update()
    lines = capsys.readouterr().out.splitlines()
    # logged at 11 s (10 s after the start) and at 21.5 s (10 s after that line)
    assert lines == [
        "work: 3/6 it (0.3/s, 0:00:11 elapsed, ETA 0:00:11)",
        "work: 5/6 it (0.2/s, 0:00:22 elapsed, ETA 0:00:04)",
    ]
    list(track(range(3), "short", log_every_s=10.0))
    assert capsys.readouterr().out == ""


def test_shown_on_the_main_process_only(clock, capsys, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    quiet = Progress(2, "work", log_every_s=0.0)
    clock.now = 5.0
    quiet.update()
    assert not quiet.enabled and capsys.readouterr().out == ""
    monkeypatch.setenv("RANK", "0")
    shown = Progress(2, "work", log_every_s=0.0)
    clock.now = 6.0
    shown.update()
    assert shown.enabled and isinstance(shown._bar, tqdm)  # the bar (disabled when not a tty)
    assert capsys.readouterr().out.startswith("work: 1/2 it")
    shown.close()


def test_a_worker_processs_log_lines_reach_the_runs_log_file(tmp_path, monkeypatch):
    """SynthCLIP's towers pretrain in spawned processes of their own: what they log joins the
    run's log file, which the launcher names in CSGN_LOG_FILE while the run lasts."""
    log = tmp_path / "train.log-1"
    log.write_text("the run's own line\n")
    script = tmp_path / "worker.py"  # progress.py by its path: no torch to import in the worker
    script.write_text(
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('progress', {progress_module.__file__!r})\n"
        "progress = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(progress)\n"
        "progress.get_logger().info('a line from a worker')\n"
    )
    monkeypatch.setenv(progress_module.LOG_FILE_ENV, str(log))
    worker = multiprocessing.get_context("spawn").Process(
        target=runpy.run_path, args=(str(script),)
    )
    worker.start()
    worker.join(timeout=120)
    assert worker.exitcode == 0
    assert log.read_text() == "the run's own line\na line from a worker\n"
