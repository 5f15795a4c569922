"""Errors a user can fix: their message says what is wrong and what to do.

Every tool ends on a :class:`UserError` with its message alone on stderr and exit code 2
(``tools/_cli.py``; ``--debug`` shows the traceback, and a run's log file keeps it); any other
exception is an internal error and keeps its traceback (exit code 1). An error belongs here when
the user's input caused it and the user can remove it: a config value, a file, a folder, the
network. The user errors, where they are raised:

=========================  ==============================================================
``ConfigError``            config keys and values, options of datasets and tools (here)
``CheckpointReadError``    a checkpoint or weight file missing, empty, truncated or unsafe
                           (here; ``CheckpointNotFoundError`` for a missing one)
``CheckpointMismatchError``  weights that do not fit the model (here)
``WeightsDownloadError``   pretrained weights that could not be downloaded (here)
``DatasetLayoutError``     a dataset folder missing or not in its layout (``data.base``)
``ImageReadError``         an image that cannot be decoded (``data.image_io``)
``FetchError``             a download, archive or unpacked tree that failed (``data.download``)
``SynthCCError``,          a generated folder that is not complete (``data.synth``,
``CorpusError``,           ``pretraining.cache``): delete it to have it made again
``SynthCLIPError``
``CheckpointWriteError``   a checkpoint that could not be written, e.g. a full disk (``fileio``)
``NonFiniteLossError``     a loss that diverged (``runtime``)
``OutOfMemoryAdvice``      out of GPU memory, with the batch size to lower (``runtime``)
=========================  ==============================================================

This module imports nothing, so every layer may raise these.
"""

from __future__ import annotations

__all__ = [
    "CheckpointMismatchError",
    "CheckpointNotFoundError",
    "CheckpointReadError",
    "ConfigError",
    "UserError",
    "WeightsDownloadError",
]


class UserError(Exception):
    """An error the user caused and can fix; the message says what is wrong and what to do."""


class ConfigError(UserError, ValueError):
    """A config file, key or value (or a tool's option) that does not fit."""


class CheckpointReadError(UserError, RuntimeError):
    """A checkpoint or weight file that cannot be read: empty, truncated, not a torch file."""


class CheckpointNotFoundError(CheckpointReadError, FileNotFoundError):
    """A checkpoint or weight file that does not exist."""


class CheckpointMismatchError(UserError, RuntimeError):
    """A checkpoint's weights do not fit the model (refused, nothing loaded)."""


class WeightsDownloadError(UserError, OSError):
    """Pretrained weights that could not be downloaded; the message names the key that avoids
    the download."""
