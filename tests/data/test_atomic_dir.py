"""The package's one lock (data/atomic_dir.exclusive_lock, filelock's): a second holder waits
until the first releases, says once that it waits, and the lock file stays in place."""

import threading
import time

from csgn_plugin.data import atomic_dir


def test_a_second_holder_waits_for_the_first_and_says_so_once(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(atomic_dir, "QUIET_WAIT", 0.05)
    path = str(tmp_path / "nested" / ".entry.lock")  # the folder is created
    order = []
    held = threading.Event()

    def first():
        with atomic_dir.exclusive_lock(path):
            held.set()
            time.sleep(0.4)
            order.append("first done")

    thread = threading.Thread(target=first)
    thread.start()
    assert held.wait(10)
    with atomic_dir.exclusive_lock(path):
        order.append("second in")
    thread.join(10)
    assert order == ["first done", "second in"]
    out = capsys.readouterr().out
    assert out.count(f"waiting for '{path}'") == 1
    assert (tmp_path / "nested" / ".entry.lock").is_file()
    with atomic_dir.exclusive_lock(path):  # free again, taken without a word
        pass
    assert "waiting" not in capsys.readouterr().out
