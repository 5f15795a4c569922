"""File scanning shared by the dataset parsers: listing, name matching, option checks."""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Sequence

from ...errors import ConfigError
from ..base import DatasetLayoutError


def dataset_root(root: str, dataset_dir: str) -> str:
    """``root/dataset_dir`` as an absolute path (``~`` expanded)."""
    return os.path.abspath(os.path.join(os.path.expanduser(root or ""), dataset_dir))


def list_files(directory: str, exts: Sequence[str]) -> list[str]:
    """Sorted paths of the files directly in ``directory`` whose extension is one of ``exts``.

    The extension test ignores case (``.JPG`` counts as ``.jpg``); other files (notes, thumbnails
    databases) are not samples and are not listed.
    """
    exts = tuple(e.lower() for e in exts)
    with os.scandir(directory) as entries:
        names = [e.name for e in entries if e.is_file() and e.name.lower().endswith(exts)]
    return [os.path.join(directory, n) for n in sorted(names)]


def list_subdirs(directory: str) -> list[str]:
    """Sorted names of the folders directly in ``directory``."""
    with os.scandir(directory) as entries:
        return sorted(e.name for e in entries if e.is_dir())


def match_basenames(
    paths: Sequence[str], pattern: re.Pattern
) -> tuple[list[tuple[str, re.Match]], list[str]]:
    """Match each file's basename (never its folders) against ``pattern``.

    Returns the ``(path, match)`` pairs and the paths that did not match.
    """
    matched, unparsed = [], []
    for path in paths:
        m = pattern.fullmatch(os.path.basename(path))
        if m is None:
            unparsed.append(path)
        else:
            matched.append((path, m))
    return matched, unparsed


def check_unique(name: str, where: str, keys: Sequence[str]) -> None:
    """Raise when a name that must be unique within ``where`` occurs more than once."""
    repeated = sorted(k for k, n in Counter(keys).items() if n > 1)
    if repeated:
        examples = ", ".join(f"'{k}'" for k in repeated[:5])
        raise DatasetLayoutError(
            f"{name}: {len(repeated)} name(s) occur more than once in {where} (each must be "
            f"unique); first: {examples}"
        )


def check_choice(key: str, value: object, choices: Sequence[object]) -> None:
    """A clear error for an option outside its allowed values."""
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ConfigError(f"cc_data.{key} must be one of {allowed}, got {value!r}")
