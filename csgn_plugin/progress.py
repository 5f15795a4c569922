"""The package's logger and one progress helper for long work.

* :func:`get_logger` is the ``csgn_plugin`` logger. It writes plain messages to *the current*
  ``sys.stdout`` (the launcher tees stdout into ``save_dir/train.log-*``; pytest's capture swaps
  it), so library users see the engine's output without configuring logging, and anyone who does
  configure logging can replace the handler. In a worker process that multiprocessing started
  for a logged run (SynthCLIP's towers pretrain in their own processes), it also appends to the
  run's log file, which the launcher names in ``CSGN_LOG_FILE``: the log holds their lines too.
* :class:`Progress` shows long work twice: a tqdm bar on the main process when stderr is a
  terminal (nothing in files and CI logs), and a log line with the rate and the ETA every
  ``log_every_s`` seconds, so that a log file shows where a long extraction or a big ranking is.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, Optional, TypeVar

from tqdm import tqdm

__all__ = ["LOG_FILE_ENV", "Progress", "get_logger", "track"]

LOGGER_NAME = "csgn_plugin"
#: the log file of the run a process works for (set by the launcher while the run lasts)
LOG_FILE_ENV = "CSGN_LOG_FILE"
T = TypeVar("T")


class _CurrentStdout(logging.StreamHandler):
    """A handler that writes to whatever ``sys.stdout`` is when a record is emitted."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self) -> Any:  # type: ignore[override]
        return sys.stdout

    @stream.setter
    def stream(self, value: Any) -> None:  # StreamHandler.__init__ assigns it
        pass


def get_logger() -> logging.Logger:
    """The package logger (messages as they are, INFO and above, on the current stdout)."""
    logger = logging.getLogger(LOGGER_NAME)
    if not logger.handlers:
        handlers: list[logging.Handler] = [_CurrentStdout()]
        run_log = os.environ.get(LOG_FILE_ENV)
        if run_log and multiprocessing.parent_process() is not None:
            # a worker of a logged run: its stdout is the console, not the launcher's tee
            handlers.append(logging.FileHandler(run_log, encoding="utf-8"))
        for handler in handlers:
            handler.setFormatter(logging.Formatter("%(message)s"))
            logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def format_duration(seconds: float) -> str:
    """``h:mm:ss`` of a (non-negative) number of seconds."""
    seconds = int(round(max(0.0, seconds)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Progress of ``total`` units of work called ``desc``.

    ``enabled``: show anything at all; by default only on the main process (``RANK`` 0 or unset,
    as torchrun sets it). ``log_every_s``: seconds between log lines (the first after that long;
    short work logs nothing).
    """

    def __init__(
        self,
        total: Optional[int],
        desc: str,
        unit: str = "it",
        enabled: Optional[bool] = None,
        log_every_s: float = 30.0,
    ) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.enabled = os.environ.get("RANK", "0") == "0" if enabled is None else enabled
        self.log_every_s = log_every_s
        self.done = 0
        self.started = self._last_log = time.monotonic()
        self._bar = (
            tqdm(total=total, desc=desc, unit=unit, leave=False, disable=None, file=sys.stderr)
            if self.enabled
            else None
        )

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        now = time.monotonic()
        if self.enabled and now - self._last_log >= self.log_every_s:
            self._last_log = now
            get_logger().info(self.status(now))

    def status(self, now: Optional[float] = None) -> str:
        """``desc: done/total unit (rate/s, elapsed, ETA)``."""
        elapsed = (time.monotonic() if now is None else now) - self.started
        rate = self.done / max(elapsed, 1e-9)
        text = f"{self.desc}: {self.done}"
        if self.total:
            eta = (self.total - self.done) / max(rate, 1e-9)
            text += f"/{self.total} {self.unit} ({rate:.1f}/s, {format_duration(elapsed)} elapsed, "
            text += f"ETA {format_duration(eta)})"
        else:
            text += f" {self.unit} ({rate:.1f}/s, {format_duration(elapsed)} elapsed)"
        return text

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def track(
    items: Iterable[T],
    desc: str,
    total: Optional[int] = None,
    unit: str = "it",
    enabled: Optional[bool] = None,
    log_every_s: float = 30.0,
) -> Iterator[T]:
    """Iterate over ``items`` with a :class:`Progress` (one unit per item)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(total, desc, unit, enabled, log_every_s) as progress:
        for item in items:
            yield item
            progress.update()
