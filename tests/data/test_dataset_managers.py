"""torchreid's data managers on the clothes-changing datasets; protocols on toy rankings.

Expected counts come from the tree specifications in tests/dataset_trees.py, counted by hand.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dataset_trees import build_ccvid, build_ltcc, build_prcc

from csgn_plugin.compat import torchreid_api
from csgn_plugin.data.datasets import CCVID
from csgn_plugin.evaluation import evaluate_rank, single_shot_evaluate
from csgn_plugin.evaluation.pooling import average_clip_features

tr = torchreid_api()

# LTCC_SPEC: train 3 ids / 10 images / 5 outfits; query+gallery 3 ids / 10 images / outfits
# (7,1) (7,2) (45,1) (45,2) (150,1). PRCC_TRAIN: 3 ids / 9 images / outfits 1, 1C, 12, 12C, 150.
LTCC_TRAIN = (3, 10, 5)
LTCC_TEST = (3, 10, 5)
PRCC_TRAIN = (3, 9, 5)


def image_manager(root: str, sources, **kwargs) -> object:
    return tr.data.ImageDataManager(
        root=root,
        sources=sources,
        height=8,
        width=4,
        batch_size_train=4,
        batch_size_test=4,
        workers=0,
        use_gpu=False,
        train_sampler="RandomIdentitySampler",
        num_instances=2,
        **kwargs,
    )


def stats(items: list) -> tuple:
    return len({it[1] for it in items}), len(items), len({it[4] for it in items})


def test_image_manager_with_ltcc_batches_carry_clothes_ids(tmp_path):
    tree = build_ltcc(tmp_path)
    dm = image_manager(tree.root, "ltcc")
    trainset = dm.train_loader.dataset
    assert stats(trainset.train) == LTCC_TRAIN
    batch = next(iter(dm.train_loader))
    assert batch["img"].shape == (4, 3, 8, 4)
    assert batch["clothes_id"].shape == (4,)
    assert int(batch["clothes_id"].max()) < LTCC_TRAIN[2]
    query = dm.test_dataset["ltcc"]["query"]
    assert sorted(it[1] for it in query) == [7, 45, 150]  # raw pids
    assert len(dm.test_dataset["ltcc"]["gallery"]) == 7


def test_image_manager_combineall_keeps_clothes_ids(tmp_path):
    tree = build_ltcc(tmp_path)
    dm = image_manager(tree.root, "ltcc", combineall=True)
    train = dm.train_loader.dataset.train
    assert stats(train) == (LTCC_TRAIN[0] + LTCC_TEST[0], 20, LTCC_TRAIN[2] + LTCC_TEST[2])
    assert sorted({it[1] for it in train}) == list(range(6))
    assert sorted({it[4] for it in train}) == list(range(10))
    # a query/gallery person keeps one pid label and its outfits stay distinct
    added = [it for it in train if "/query/" in it[0] or "/test/" in it[0]]
    by_pid: dict = {}
    for it in added:
        by_pid.setdefault(it[1], set()).add(it[4])
    assert sorted(len(v) for v in by_pid.values()) == [1, 2, 2]  # 150: 1 outfit; 7, 45: 2


def test_image_manager_two_sources_offsets_pids_and_clothes(tmp_path):
    ltcc = build_ltcc(tmp_path)
    build_prcc(tmp_path, sketch=False)  # same root
    dm = image_manager(ltcc.root, ["ltcc", "prcc"], targets=["ltcc", "prcc"])
    train = dm.train_loader.dataset.train
    ltcc_items = [it for it in train if "LTCC_ReID" in it[0]]
    prcc_items = [it for it in train if "prcc" in it[0]]
    assert stats(ltcc_items) == LTCC_TRAIN and stats(prcc_items) == PRCC_TRAIN
    assert {it[1] for it in prcc_items} == {3, 4, 5}
    assert {it[4] for it in prcc_items} == {5, 6, 7, 8, 9}
    assert {it[3] for it in prcc_items} == {1} and {it[3] for it in ltcc_items} == {0}
    # PRCC's C images never share a clothes id with the same person's A/B images
    for pid in {3, 4}:
        ab = {it[4] for it in prcc_items if it[1] == pid and "/C_" not in it[0]}
        c = {it[4] for it in prcc_items if it[1] == pid and "/C_" in it[0]}
        assert ab and c and not ab & c
    assert dm.num_train_pids == 6
    assert set(dm.test_loader) == {"ltcc", "prcc"}


def test_video_manager_with_ccvid_clips_and_pooling(tmp_path):
    tree = build_ccvid(tmp_path)
    dm = tr.data.VideoDataManager(
        root=tree.root,
        sources="ccvid",
        height=8,
        width=4,
        batch_size_train=2,
        batch_size_test=3,
        workers=0,
        use_gpu=False,
        seq_len=4,
    )
    batch = next(iter(dm.train_loader))
    assert batch["img"].shape == (2, 4, 3, 8, 4) and batch["clothes_id"].shape == (2,)
    gallery_loader = dm.test_loader["ccvid"]["gallery"]
    # defaults: clips of 8 frames every 4 -> 9, 8, 10, 5 frames give 2, 1, 2, 1 clips
    assert gallery_loader.dataset.clip_video_index == [0, 0, 1, 2, 2, 3]
    feats, index = [], []
    for b in gallery_loader:
        assert b["img"].shape[1:] == (8, 3, 8, 4)
        feats.append(b["img"].mean(dim=(1, 2, 3, 4))[:, None])
        index += b["video_index"].tolist()
    pooled = average_clip_features(
        torch.cat(feats), index, len(dm.test_dataset["ccvid"]["gallery"])
    )
    assert pooled.shape == (4, 1)


def test_average_clip_features_by_hand():
    feats = torch.tensor([[1.0, 2.0], [3.0, 4.0], [10.0, 0.0]])
    pooled = average_clip_features(feats, [0, 0, 1], 2)
    assert torch.equal(pooled, torch.tensor([[2.0, 3.0], [10.0, 0.0]]))
    with pytest.raises(ValueError, match="clip"):
        average_clip_features(feats, [0, 1], 2)


def test_ccvid_sum_of_two_sources_offsets_clothes(tmp_path):
    tree = build_ccvid(tmp_path)
    a = CCVID(root=tree.root, transform=lambda x: x, verbose=False)
    both = a + CCVID(root=tree.root, transform=lambda x: x, verbose=False)
    assert both.num_train_pids == 4 and both.num_train_clothes == 6
    assert [it[4] - 3 for it in both.train[4:]] == [it[4] for it in a.train]


# ------------------------------------------------------------- toy rankings, computed by hand


def test_ltcc_style_protocols_by_hand():
    # gallery: g0 pid7 cam0 outfit A, g1 pid7 cam1 outfit A, g2 pid7 cam2 outfit B, g3 pid45 cam3 C
    g_pids, g_cams, g_clothes = [7, 7, 7, 45], [0, 1, 2, 3], [0, 0, 1, 2]
    q_pids, q_cams, q_clothes = [7, 45], [0, 0], [0, 2]
    dist = np.array([[0.1, 0.4, 0.3, 0.2], [0.5, 0.6, 0.7, 0.05]])
    args = (dist, q_pids, g_pids, q_cams, g_cams, q_clothes, g_clothes)
    # q0 ranking g0 (same cam: junk) g3 g2 g1. general: good g2, g1 at ranks 2, 3 -> AP 7/12;
    # q1: g3 good at rank 1 -> AP 1
    cmc, mAP = evaluate_rank(*args, mode="general", max_rank=4)
    assert np.allclose(cmc[:3], [0.5, 1, 1]) and mAP == pytest.approx((7 / 12 + 1) / 2)
    # cc: q0 good g2 only (g1 same clothes: junk) -> rank 2, AP 1/2; q1 has no good item: skipped
    cmc, mAP = evaluate_rank(*args, mode="cc", max_rank=4)
    assert np.allclose(cmc[:2], [0, 1]) and mAP == pytest.approx(0.5)
    # sc: q0 good g1 only (g2 other clothes: junk) -> rank 2, AP 1/2; q1 AP 1
    cmc, mAP = evaluate_rank(*args, mode="sc", max_rank=4)
    assert np.allclose(cmc[:2], [0.5, 1]) and mAP == pytest.approx(0.75)


def test_prcc_style_protocols_by_hand_multi_and_single_shot():
    # PRCC conventions: gallery camera A (0); queries B (1, same clothes) and C (2, other clothes);
    # clothes id 2*label(pid) for A/B, 2*label(pid)+1 for C. pid 3 -> label 0, pid 17 -> label 1.
    g_pids, g_cams, g_clothes = [3, 3, 17], [0, 0, 0], [0, 0, 2]
    q_pids, q_cams, q_clothes = [3, 3, 17], [1, 2, 2], [0, 1, 3]
    dist = np.array([[0.5, 0.1, 0.3], [0.4, 0.9, 0.2], [0.3, 0.6, 0.7]])
    args = (dist, q_pids, g_pids, q_cams, g_cams, q_clothes, g_clothes)
    # sc keeps exactly the B query: g1 (rank 1), g0 (rank 3) -> AP (1 + 2/3) / 2
    cmc, mAP = evaluate_rank(*args, mode="sc", max_rank=3)
    assert np.allclose(cmc, [1, 1, 1]) and mAP == pytest.approx(5 / 6)
    # cc keeps exactly the C queries: q1 goods at ranks 2, 3 -> 7/12; q2 good at rank 3 -> 1/3
    cmc, mAP = evaluate_rank(*args, mode="cc", max_rank=3)
    assert np.allclose(cmc, [0, 0.5, 1]) and mAP == pytest.approx((7 / 12 + 1 / 3) / 2)
    # single-shot cc: whichever pid-3 image is drawn, q1's and q2's good item ranks 2nd of 2
    result = single_shot_evaluate(*args, mode="cc", trials=10, seed=0, max_rank=2)
    assert result.num_trials == 10
    assert np.allclose(result.cmc, [0, 1]) and result.mAP == pytest.approx(0.5)
