"""Folders that appear complete or not at all: built under a lock in a hidden sibling, renamed.

Generated data (a SynthCC tree, the captioned corpus) is built into ``.<name>.tmp-<pid>`` next to
its final place and renamed when complete, while an exclusive lock on ``.<name>.lock`` is held: a
killed build never leaves a folder that looks finished, and two processes asking at once build it
once. The lock is ``filelock``'s (``flock`` on POSIX, ``LockFileEx`` on Windows): the OS drops
the lock of a process that dies. :func:`exclusive_lock` is the one lock of the package (the
downloads and the SynthCLIP cache take it too).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from typing import Callable, Optional, TypeVar

from filelock import FileLock, Timeout

from ..progress import get_logger

T = TypeVar("T")
#: seconds to wait quietly for a lock before saying whose turn it is
QUIET_WAIT = 2.0


def lock_path(target_dir: str) -> str:
    """The lock file that guards ``target_dir``: ``.<name>.lock`` beside it."""
    parent, name = os.path.split(os.path.abspath(target_dir))
    return os.path.join(parent, f".{name}.lock")


@contextlib.contextmanager
def exclusive_lock(path: str) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing; the file stays); released if the
    process dies. Waits as long as another holder needs, saying so once after a short wait."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    lock = FileLock(path)
    try:
        lock.acquire(timeout=QUIET_WAIT)
    except Timeout:
        get_logger().info(f"waiting for '{path}': another process holds it (building or fetching)")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def build_into_place(target_dir: str, build: Callable[[str], T]) -> T:
    """``build(tmp_dir)`` into a fresh hidden sibling of ``target_dir`` (absent), then rename it
    to ``target_dir``; returns what ``build`` returned. The caller holds
    ``exclusive_lock(lock_path(target_dir))``, so temporary folders found here belong to runs that
    died and are removed first; on any failure the temporary folder is removed too."""
    parent, name = os.path.split(os.path.abspath(target_dir))
    os.makedirs(parent, exist_ok=True)
    for entry in os.listdir(parent):
        if entry.startswith(f".{name}.tmp-"):
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
    tmp_dir = os.path.join(parent, f".{name}.tmp-{os.getpid()}")
    try:
        result = build(tmp_dir)
        os.replace(tmp_dir, target_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return result


def ensure_built(
    target_dir: str, usable: Callable[[], bool], build: Callable[[str], T], what: str
) -> Optional[T]:
    """Build ``target_dir`` with ``build(tmp_dir)`` unless ``usable()`` finds a finished one there;
    returns what ``build`` returned, or None when nothing was built. Checked again under the lock
    (another process may have built it meanwhile); an outdated folder (``usable()`` False) is
    replaced. ``what`` names the data in the log lines."""
    if usable():
        return None
    with exclusive_lock(lock_path(target_dir)):
        if usable():  # another process finished it while we waited
            return None
        if os.path.exists(target_dir):
            get_logger().info(
                f"{what}: '{target_dir}' is from another version or spec; regenerating"
            )
            shutil.rmtree(target_dir)
        get_logger().info(f"{what}: generating into '{target_dir}' ...")
        return build_into_place(target_dir, build)


def read_manifest(folder: str, name: str, dataset: str) -> Optional[dict]:
    """The JSON manifest ``folder/name`` if it is a dict whose 'dataset' is ``dataset``, else
    None (missing, unreadable or another kind of folder)."""
    try:
        with open(os.path.join(folder, name), encoding="ascii") as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("dataset") == dataset else None


def finished_manifest(
    folder: str, name: str, dataset: str, preset: str, seed: int, error: type[Exception]
) -> Optional[dict]:
    """The manifest of the finished build at ``folder``, or None when nothing is there. Raises
    ``error`` naming the folder when something else is there (no valid manifest: it was not made
    by ``build_into_place``) or the build is of another preset or seed (renamed or copied)."""
    if not os.path.exists(folder):
        return None
    manifest = read_manifest(folder, name, dataset)
    if manifest is None:
        raise error(
            f"'{folder}' exists but holds no valid {name}, so it is not a {dataset} folder "
            "(generation renames a finished folder into place, so this one was made otherwise). "
            "Move or delete it to have it generated there."
        )
    if manifest.get("preset") != preset or manifest.get("seed") != seed:
        raise error(
            f"'{folder}/{name}' describes preset '{manifest.get('preset')}' seed "
            f"{manifest.get('seed')}, expected preset '{preset}' seed {seed}: the folder was "
            "renamed or copied. Delete it to have it generated again."
        )
    return manifest
