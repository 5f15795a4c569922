"""Everything a run reads or writes, checked before any work: the pre-flight.

:func:`check_run` runs after the config is loaded and before anything is downloaded, generated,
pretrained, built or written (the launcher creates its log folder only after it), so a run that
cannot succeed is refused in seconds with one message, leaving nothing behind: no folder under
``data.root``, no log. It checks, in this order:

1. the config (:func:`csgn_plugin.checks.check_config`): names, values, combinations; an
   evaluation only what it uses;
2. every source and target data set the plugin registers, parsed as the data manager will parse
   it (cached, so not parsed twice); a generated one (SynthCC) is never missing, only its
   options are checked (``generated`` and ``check_generation`` of the dataset classes);
3. the weight files the run will read: ``model.load_weights`` and ``model.resume`` (training);
   the CLIP weights (``clip.*_weights``) are checked by the model probe (5.);
4. the folders it will write: ``data.save_dir``, and ``data.root`` when something is generated
   or pretrained there;
5. the model: built once with random weights on the CPU (:func:`csgn_plugin.builders.probe_model`,
   nothing downloaded; from the checkpoint's spec when evaluating one), whose constructor checks
   every option of its family, then fed two blank images at the input size
   (:func:`csgn_plugin.checks.check_input_size`).

Data sets registered by torchreid itself (Market-1501, ...) are left to torchreid's own checks.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
from yacs.config import CfgNode

from . import builders, checks
from .compat import load_checkpoint
from .config import ConfigError
from .data.check import check_readable, dataset_class, dataset_names
from .modeling.spec import ModelSpec, build_model_from_spec

__all__ = ["check_run"]


def check_run(cfg: CfgNode, world_size: int = 1, spec: Optional[ModelSpec] = None) -> None:
    """Refuse, with one message, a run that cannot succeed (see the module docstring).

    ``spec``: the model spec of the checkpoint an evaluation loads (its model is probed)."""
    checks.check_config(cfg, world_size)
    generated = _check_datasets(cfg)
    _check_weight_files(cfg)
    _check_writable("data.save_dir", cfg.data.save_dir)
    if generated or builders.synthclip_towers(cfg):
        _check_writable("data.root", cfg.data.root)
    model = build_model_from_spec(spec) if spec is not None else builders.probe_model(cfg)
    checks.check_input_size(cfg, model, torch.device("cpu"))


def _check_datasets(cfg: CfgNode) -> bool:
    """Every source and target the plugin registers readable; whether one is generated."""
    options = dict(cfg.cc_data)
    generated = False
    names = dict.fromkeys([*cfg.data.sources, *cfg.data.targets])  # in order, once each
    for name in names:
        if name not in dataset_names():
            continue  # torchreid's own data sets check themselves when built
        generated = generated or dataset_class(name).generated
        check_readable(name, cfg.data.root, options)
    return generated


def _check_weight_files(cfg: CfgNode) -> None:
    """The checkpoints a training run reads (an evaluation has read its own already)."""
    if cfg.test.evaluate:
        return
    for key in ("load_weights", "resume"):
        path = cfg.model[key]
        if key == "resume" and path == "auto":
            path = os.path.join(cfg.data.save_dir, "checkpoints", "last.pth")
            if not os.path.isfile(path):
                continue  # 'auto' without a last checkpoint starts afresh
        if path:  # read whole once, by the run itself; here its structure only
            load_checkpoint(path, mmap=True)


def _check_writable(key: str, path: str) -> None:
    """``path`` is a folder we may write into, or one we may create (nothing is created)."""
    path = os.path.abspath(os.path.expanduser(path))
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ConfigError(f"{key} '{path}': '{existing}' is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == path else f"cannot be created in '{existing}'"
        raise ConfigError(f"{key} '{path}' {what}: choose a folder you may write into")
