"""Config keys of the clothes-changing dataset parsers (``cc_data``).

Every key is passed to every dataset as a keyword argument; a parser reads those it knows.
"""

from __future__ import annotations

from yacs.config import CfgNode as CN


def add_data_sections(cfg: CN) -> None:
    cfg.cc_data = CN()
    cfg.cc_data.name_policy = "fail"  # files whose names do not parse: 'fail' or 'skip' (warn)
    cfg.cc_data.image_policy = "fail"  # images that cannot be decoded: 'fail' (name the file)
    cfg.cc_data.synthcc_preset = "default"  # size of the generated SynthCC ('tiny', 'default', ...)
    cfg.cc_data.synthcc_seed = 0
