"""Config keys of the CLIP towers and of the CSGN method (``clip``, ``csgn``, ``stage1``)."""

from __future__ import annotations

from yacs.config import CfgNode as CN


def add_model_sections(cfg: CN) -> None:
    cfg.clip = CN()
    cfg.csgn = CN()
    cfg.stage1 = CN()
