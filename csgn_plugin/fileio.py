"""Files written so that a crash never leaves half of one, and the fault tests' kill hook.

* :func:`atomic_save` (``torch.save``) and :func:`atomic_write_text` write to a temporary sibling,
  fsync, then rename over the target: a crash or a full disk at any moment leaves either the old
  complete file or the new complete file.
* :func:`fault_point` is the fault tests' hook: with the environment variable ``CSGN_FAULT_KILL``
  set to ``POINT:N`` (or ``POINT:N:RANK``), the process SIGKILLs itself the N-th time it passes
  ``POINT`` (``stage1_epoch``, ``train_step``, ``checkpoint_write``): a ``kill -9`` at an exact
  place. Unset, it costs one environment lookup.
"""

from __future__ import annotations

import errno as errno_codes
import glob
import os
import shutil
import signal
import uuid
from typing import Any

import torch

from .errors import UserError

FAULT_ENV = "CSGN_FAULT_KILL"
_fault_passes: dict[str, int] = {}


def fault_point(name: str) -> None:
    """SIGKILL this process here when ``CSGN_FAULT_KILL`` asks for it (tests only)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    point, count, *rank = spec.split(":")
    if point != name or (rank and rank[0] != os.environ.get("RANK", "0")):
        return
    _fault_passes[name] = _fault_passes.get(name, 0) + 1
    if _fault_passes[name] == int(count):
        os.kill(os.getpid(), signal.SIGKILL)


class CheckpointWriteError(UserError, OSError):
    """A checkpoint could not be written; the file it was to replace is untouched."""


def atomic_write_text(path: str, text: str) -> None:
    """Write a small text file (a JSON or markdown report) atomically: a temporary sibling, then a
    rename, so a reader or a crash sees the old file or the new one, never half of one."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save`` to ``path`` atomically (temporary file + fsync + rename).

    Any failure (full disk, quota, an object that cannot be saved) removes the temporary file
    and raises :class:`CheckpointWriteError`; ``path`` keeps its previous content. Temporary
    files left by writers killed mid-write are removed after the next successful save.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    base = os.path.basename(path)
    tmp = os.path.join(directory, f"{base}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        # os.open with 0o666 honours the umask (mkstemp would make the checkpoint owner-only)
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
            torch.save(obj, f)
            fault_point("checkpoint_write")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.remove(tmp)
        if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit: pass through
            raise
        # torch's writer turns a failed write (ENOSPC, EFBIG) into a RuntimeError; the OSError
        # it caught is its context
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__context__
        code = cause.errno if isinstance(cause, OSError) and cause.errno else errno_codes.EIO
        detail = f"{type(cause or exc).__name__}: {cause or exc}"
        free = shutil.disk_usage(directory).free / 2**20
        raise CheckpointWriteError(
            code,
            f"could not write checkpoint '{path}' ({detail}); the previous checkpoint, if any, "
            f"is intact ({free:.0f} MiB free in '{directory}')",
        ) from exc
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)
    for stale in glob.glob(os.path.join(glob.escape(directory), glob.escape(base) + ".*.tmp")):
        os.remove(stale)
