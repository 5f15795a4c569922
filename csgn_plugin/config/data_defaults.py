"""Config keys of the clothes-changing dataset parsers (``cc_data``).

Every key is passed to every dataset as a keyword argument; a parser reads those it knows.
"""

from __future__ import annotations

from yacs.config import CfgNode as CN


def add_data_sections(cfg: CN) -> None:
    cfg.cc_data = CN()
    cfg.cc_data.name_policy = "fail"  # files whose names do not parse: 'fail' or 'skip' (warn)
    # images that cannot be decoded: 'fail' (name the file) or 'skip' (use another image of the
    # same identity; counted and reported)
    cfg.cc_data.image_policy = "fail"
    cfg.cc_data.synthcc_preset = "default"  # size of the generated SynthCC ('tiny', 'default', ...)
    cfg.cc_data.synthcc_seed = 0
    # LTCC training ids: 'all', or 'cc' = only the clothes-changing ids of
    # info/cloth-change_id_train.txt
    cfg.cc_data.ltcc_train_ids = "all"
    # PRCC modality: 'rgb', or 'sketch' = the parallel contour tree prcc/sketch/
    cfg.cc_data.prcc_modality = "rgb"
    # DeepChange and LaST: which query/gallery pair is evaluated, 'test' or 'val'
    cfg.cc_data.eval_split = "test"
    # video (CCVID): training tracklets cut into chunks of this many frames (0: whole tracklets)
    cfg.cc_data.video_train_chunk_len = 64
    # video: test tracklets split into clips of this many consecutive frames (0: one item per
    # tracklet, sampled by video.seq_len / video.sample_method); clip features are averaged
    cfg.cc_data.video_test_clip_len = 8
    cfg.cc_data.video_test_clip_stride = 4  # frames between the starts of consecutive test clips
