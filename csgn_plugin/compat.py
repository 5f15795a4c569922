"""One shim between the plugin and the torchreid/torch versions it meets.

* torchreid on PyPI (0.2.5) keeps its modules under ``torchreid.reid``; a source install of
  upstream deep-person-reid keeps them under ``torchreid``. :func:`torchreid_api` returns whichever
  module holds ``data, engine, losses, metrics, models, optim, utils``; the rest of the plugin only
  uses attribute access on it (``tr.data.ImageDataset``), which works with both layouts.
* torch >= 2.6 loads with ``weights_only=True``; torchreid stores numpy scalars (rank-1) in its
  checkpoints, so its own loaders fail on its own files. :func:`allow_numpy_in_checkpoints` puts the
  numpy types those files contain on torch's safe list, and :func:`load_checkpoint` is our loader.
* The PyPI package ships no Cython evaluator and warns about it on import; the plugin has its own
  vectorised evaluator, so the warning is silenced.
"""

from __future__ import annotations

import importlib
import os
import pickle
import warnings
import zipfile
from types import ModuleType
from typing import Any

import numpy as np
import torch

from .errors import CheckpointNotFoundError, CheckpointReadError

_API: ModuleType | None = None
_SUBMODULES = ("data", "engine", "losses", "metrics", "models", "optim", "utils")


def _has_api(module: ModuleType) -> bool:
    return all(hasattr(module, name) for name in _SUBMODULES)


def torchreid_api() -> ModuleType:
    """The module that holds torchreid's sub-packages, whatever the install layout."""
    global _API
    if _API is not None:
        return _API
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Cython evaluation")
        for name in ("torchreid.reid", "torchreid"):
            try:
                module = importlib.import_module(name)
            except ImportError:
                continue
            if _has_api(module):
                _API = module
                return module
    raise ImportError(
        "torchreid is not installed or has an unknown layout: expected 'torchreid.reid' (PyPI "
        "package torchreid) or 'torchreid' (deep-person-reid from source) with the sub-packages "
        f"{', '.join(_SUBMODULES)}. Install it with `pip install torchreid`."
    )


def model_factory() -> dict:
    """torchreid's model factory dict (a module global that has no register function)."""
    return vars(torchreid_api().models)["__model_factory"]


def _numpy_safe_globals() -> list:
    types: list = [np.dtype, np.ndarray]
    types += [type(np.dtype(t)) for t in ("float32", "float64", "int64", "int32", "bool")]
    for path in ("numpy.core.multiarray", "numpy._core.multiarray"):
        try:
            module = importlib.import_module(path)
        except ImportError:
            continue
        for attr in ("scalar", "_reconstruct"):
            if hasattr(module, attr):
                types.append(getattr(module, attr))
    return types


def allow_numpy_in_checkpoints() -> None:
    """Let ``torch.load(weights_only=True)`` read the numpy scalars torchreid saves (torch>=2.6)."""
    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is not None:
        add(_numpy_safe_globals())


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """Load a checkpoint file safely, with a clear error for missing or damaged files
    (:class:`~csgn_plugin.errors.CheckpointReadError`).

    Plain tensors, dicts and numpy scalars load with ``weights_only=True``. Anything else (for
    example a pickled optimizer from an old torch) is refused with a message, never executed.
    ``mmap``: map the tensors' bytes instead of reading them, for a caller that needs the
    structure only (torch's zip format; older files are read): the structure is still read
    and checked, and a cut file still fails, as its zip directory sits at the end.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointNotFoundError(f"checkpoint not found: '{path}'")
    if os.path.getsize(path) == 0:
        raise CheckpointReadError(
            f"checkpoint '{path}' is empty (0 bytes): the write that made it failed"
        )
    allow_numpy_in_checkpoints()
    try:
        mmap = mmap and zipfile.is_zipfile(path)
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        raise CheckpointReadError(
            f"checkpoint '{path}' contains objects that cannot be loaded safely "
            f"(weights_only=True): {exc}"
        ) from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointReadError(
            f"checkpoint '{path}' could not be read; it is truncated or not a torch file: {exc}"
        ) from exc
