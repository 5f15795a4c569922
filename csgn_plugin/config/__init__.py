"""Config: defaults, loading with clear errors, and the kwargs torchreid's builders take."""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence

from yacs.config import CfgNode as CN

from ..errors import ConfigError
from .defaults import get_default_config

__all__ = ["ConfigError", "get_default_config", "load_config"]


# keys that were booleans and became words (with 'auto'): true / false still mean what they meant
BOOLEAN_WORDS = {
    ("runtime", "compile"): {True: "default", False: "off"},
    ("runtime", "channels_last"): {True: "on", False: "off"},
}


def _booleans_as_words(node: CN) -> None:
    for (section, key), words in BOOLEAN_WORDS.items():
        value = node.get(section, {}).get(key) if isinstance(node.get(section), CN) else None
        if isinstance(value, bool):
            node[section][key] = words[value]


def _all_keys(cfg: CN, prefix: str = "") -> list[str]:
    keys = []
    for key, value in cfg.items():
        full = f"{prefix}{key}"
        keys.append(full)
        if isinstance(value, CN):
            keys.extend(_all_keys(value, full + "."))
    return keys


def _check_keys(cfg: CN, other: CN, source: str, prefix: str = "") -> None:
    for key, value in other.items():
        full = f"{prefix}{key}"
        if key not in cfg:
            if isinstance(value, CN):  # name the whole unknown key, not just its section
                full = f"{full}.{_all_keys(value)[0]}"
            close = difflib.get_close_matches(full, _all_keys(get_default_config()), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{source}: unknown config key '{full}'{hint}")
        if isinstance(value, CN):
            if not isinstance(cfg[key], CN):
                raise ConfigError(f"{source}: '{full}' is a value, not a section")
            _check_keys(cfg[key], value, source, full + ".")


def _merge_file(cfg: CN, config_file: str, seen: tuple = ()) -> None:
    """Merge ``config_file`` into ``cfg``; a ``_BASE_: path`` key (relative to the file) is
    merged first, as in detectron2, so that ablation configs hold only what they change."""
    if not os.path.isfile(config_file):
        raise ConfigError(f"config file not found: '{config_file}'")
    if config_file in seen:
        raise ConfigError(f"{config_file}: _BASE_ chain loops back to itself")
    with open(config_file, encoding="utf-8") as f:
        try:
            other = cfg.load_cfg(f)
        except Exception as exc:
            raise ConfigError(f"{config_file}: not a valid YAML config: {exc}") from exc
    base = other.pop("_BASE_", None)
    if base is not None:
        path = os.path.join(os.path.dirname(config_file), base)
        _merge_file(cfg, os.path.normpath(path), (*seen, config_file))
    _check_keys(cfg, other, config_file)
    _booleans_as_words(other)
    try:
        cfg.merge_from_other_cfg(other)
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"{config_file}: {exc}") from exc


def load_config(config_file: str = "", opts: Sequence[str] = ()) -> CN:
    """Defaults, then ``config_file`` (after its ``_BASE_`` chain), then ``KEY VALUE`` overrides;
    frozen.

    Unknown keys (with a did-you-mean), wrong value types and malformed overrides raise
    :class:`ConfigError` naming the file or the key.
    """
    cfg = get_default_config()
    if config_file:
        _merge_file(cfg, config_file)
    opts = list(opts)
    if len(opts) % 2:
        raise ConfigError(f"overrides must come in KEY VALUE pairs, got an odd list: {opts}")
    override = CN()
    for key, value in zip(opts[0::2], opts[1::2]):
        node = override
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, CN())
        node[leaf] = CN._decode_cfg_value(value)
    _check_keys(cfg, override, "command line")
    _booleans_as_words(override)
    try:
        cfg.merge_from_other_cfg(override)
    except (ValueError, KeyError, AssertionError) as exc:
        raise ConfigError(f"command line: {exc}") from exc
    cfg.freeze()
    return cfg
