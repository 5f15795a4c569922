"""CMC/mAP under the general, CC and SC protocols, checked against hand-computed values,
torchreid's own evaluator and a plain per-query reference written from the protocol definitions."""

import numpy as np
import pytest
import torch

from csgn_plugin.compat import torchreid_api
from csgn_plugin.evaluation import (
    RankResult,
    compute_distance_matrix,
    draw_single_shot_gallery,
    evaluate_features,
    evaluate_rank,
    evaluate_rank_detailed,
    evaluate_rank_modes,
    single_shot_evaluate,
)

# --- A hand-worked problem ---------------------------------------------------------------------
# Gallery (index: pid, camera, clothes):
#   g0: 2,1,20  g1: 1,0,10  g2: 1,1,10  g3: 3,1,30  g4: 1,2,11  g5: 1,0,11  g6: 2,2,20  g7: 1,3,11
# Queries: q0 = (1, cam 0, clothes 10), q1 = (2, cam 1, clothes 20), q2 = (4, cam 0, clothes 40).
# q0 ranks the gallery g0 g1 g4 g7 g3 g2 g5 g6; q1 ranks g6 g0 g3 g1 g2 g4 g5 g7; q2's identity
# is absent from the gallery, so q2 is skipped under every protocol.
#
# general (junk = same pid, same camera)
#   q0: junk g1, g5 -> g0 g4* g7* g3 g2* g6: good at ranks 2, 3, 5;
#       AP = (1/2 + 2/3 + 3/5) / 3 = 53/90
#   q1: junk g0 -> g6* first: AP = 1, first good rank 1
#   CMC = [1/2, 1, 1, ...], mAP = (53/90 + 1) / 2 = 143/180, 2 valid, 1 skipped
# cc (good = different camera and different clothes; junk = same camera or same clothes)
#   q0: junk g1, g2, g5 -> g0 g4* g7* g3 g6: good at 2, 3; AP = (1/2 + 2/3) / 2 = 7/12
#   q1: g0 same camera, g6 same clothes: both junk, no good item -> skipped
#   CMC = [0, 1, 1, ...], mAP = 7/12, 1 valid, 2 skipped
# sc (good = different camera and same clothes; junk = same camera or different clothes)
#   q0: junk g1, g4, g5, g7 -> g0 g3 g2* g6: good at 3; AP = 1/3
#   q1: g6 good at rank 1 (g0 junk); AP = 1
#   CMC = [1/2, 1/2, 1, ...], mAP = (1/3 + 1) / 2 = 2/3, 2 valid, 1 skipped
HAND = {
    "q_pids": np.array([1, 2, 4]),
    "g_pids": np.array([2, 1, 1, 3, 1, 1, 2, 1]),
    "q_camids": np.array([0, 1, 0]),
    "g_camids": np.array([1, 0, 1, 1, 2, 0, 2, 3]),
    "q_clothes_ids": np.array([10, 20, 40]),
    "g_clothes_ids": np.array([20, 10, 10, 30, 11, 11, 20, 11]),
}
HAND_ORDERS = [[0, 1, 4, 7, 3, 2, 5, 6], [6, 0, 3, 1, 2, 4, 5, 7], [7, 6, 5, 4, 3, 2, 1, 0]]
HAND_EXPECTED = {
    "general": ([0.5, 1, 1, 1, 1], 143 / 180, 2, 1),
    "cc": ([0, 1, 1, 1, 1], 7 / 12, 1, 2),
    "sc": ([0.5, 0.5, 1, 1, 1], 2 / 3, 2, 1),
}


def hand_distmat() -> np.ndarray:
    distmat = np.zeros((3, 8))
    for row, order in enumerate(HAND_ORDERS):
        distmat[row, order] = np.arange(1, 9) / 10
    return distmat


@pytest.mark.parametrize("mode", ["general", "cc", "sc"])
def test_hand_computed_scores(mode):
    result = evaluate_rank_detailed(hand_distmat(), **HAND, mode=mode, max_rank=5)
    cmc, mean_ap, num_valid, num_skipped = HAND_EXPECTED[mode]
    assert isinstance(result, RankResult) and result.mode == mode
    assert result.cmc.dtype == np.float32 and result.cmc.shape == (5,)
    np.testing.assert_allclose(result.cmc, cmc)
    assert result.mAP == pytest.approx(mean_ap, abs=1e-12)
    assert (result.num_valid, result.num_skipped, result.num_trials) == (num_valid, num_skipped, 1)
    assert result.rank(1) == pytest.approx(cmc[0])


def test_evaluate_rank_returns_cmc_and_map():
    cmc, mean_ap = evaluate_rank(hand_distmat(), **HAND, mode="cc", max_rank=3)
    np.testing.assert_allclose(cmc, [0, 1, 1])
    assert isinstance(mean_ap, float) and mean_ap == pytest.approx(7 / 12)


def test_cmc_extends_with_its_last_value_when_gallery_is_shorter_than_max_rank():
    # 8 gallery items, max_rank 12: every valid query's first good rank is within its list
    for mode, (cmc, mean_ap, _, _) in HAND_EXPECTED.items():
        result = evaluate_rank_detailed(hand_distmat(), **HAND, mode=mode, max_rank=12)
        np.testing.assert_allclose(result.cmc, cmc + [1.0] * 7)
        assert result.mAP == pytest.approx(mean_ap)


def test_hand_case_general_matches_torchreid():
    tr = torchreid_api()
    distmat = hand_distmat()
    args = (HAND["q_pids"], HAND["g_pids"], HAND["q_camids"], HAND["g_camids"])
    expected_cmc, expected_map = tr.metrics.evaluate_rank(distmat, *args, 5, use_cython=False)
    cmc, mean_ap = evaluate_rank(distmat, *args, max_rank=5)
    np.testing.assert_array_equal(cmc, expected_cmc)
    assert mean_ap == pytest.approx(expected_map, abs=1e-12)


# --- Random problems ---------------------------------------------------------------------------


def random_problem(seed, num_query, num_gallery, num_ids, num_cams, outfits=3):
    rng = np.random.default_rng(seed)
    g_pids = rng.integers(num_ids, size=num_gallery)
    q_pids = rng.integers(num_ids, size=num_query)
    labels = {
        "q_pids": q_pids,
        "g_pids": g_pids,
        "q_camids": rng.integers(num_cams, size=num_query),
        "g_camids": rng.integers(num_cams, size=num_gallery),
        "q_clothes_ids": q_pids * outfits + rng.integers(outfits, size=num_query),
        "g_clothes_ids": g_pids * outfits + rng.integers(outfits, size=num_gallery),
    }
    distmat = rng.random((num_query, num_gallery))
    # distinct distances per row, so that every ranking is unique (no tie-breaking involved)
    assert all(len(np.unique(row)) == num_gallery for row in distmat)
    return distmat, labels


def plain_reference(distmat, labels, mode, max_rank):
    """One query at a time, straight from the protocol table: (cmc, mAP, num_valid)."""
    cmc_hits = np.zeros(max_rank)
    average_precisions = []
    for i in range(distmat.shape[0]):
        order = np.argsort(distmat[i], kind="stable")
        same_pid = labels["g_pids"][order] == labels["q_pids"][i]
        same_cam = labels["g_camids"][order] == labels["q_camids"][i]
        same_clothes = labels["g_clothes_ids"][order] == labels["q_clothes_ids"][i]
        clothes_ok = {"general": True, "cc": ~same_clothes, "sc": same_clothes}[mode]
        good = same_pid & ~same_cam & clothes_ok
        junk = same_pid & ~good
        good_ranks = np.flatnonzero(good[~junk]) + 1
        if len(good_ranks) == 0:
            continue
        cmc_hits[good_ranks[0] - 1 :] += 1
        average_precisions.append(np.mean(np.arange(1, len(good_ranks) + 1) / good_ranks))
    num_valid = len(average_precisions)
    return cmc_hits / num_valid, float(np.mean(average_precisions)), num_valid


GENERAL_CASES = [
    # seed, queries, gallery, ids, cameras, max_rank
    (1, 40, 300, 30, 3, 50),
    (2, 25, 120, 10, 2, 20),
    (3, 60, 500, 100, 6, 50),
    (4, 16, 64, 4, 4, 10),
]


@pytest.mark.parametrize("seed,num_query,num_gallery,num_ids,num_cams,max_rank", GENERAL_CASES)
def test_general_matches_torchreid(seed, num_query, num_gallery, num_ids, num_cams, max_rank):
    tr = torchreid_api()
    distmat, labels = random_problem(seed, num_query, num_gallery, num_ids, num_cams)
    args = (labels["q_pids"], labels["g_pids"], labels["q_camids"], labels["g_camids"])
    expected_cmc, expected_map = tr.metrics.evaluate_rank(
        distmat, *args, max_rank, use_cython=False
    )
    result = evaluate_rank_detailed(distmat, *args, max_rank=max_rank, chunk_size=7)
    np.testing.assert_array_equal(result.cmc, expected_cmc)
    assert result.mAP == pytest.approx(expected_map, rel=1e-12)
    assert result.num_valid + result.num_skipped == num_query


def test_general_matches_torchreid_when_gallery_is_smaller_than_max_rank():
    # queries in camera 0, gallery in cameras 1-3: no junk, so torchreid's CMC rows are not ragged
    # and it can run with max_rank = num_gallery; ours runs with the default 50
    tr = torchreid_api()
    rng = np.random.default_rng(5)
    num_query, num_gallery = 12, 20
    q_pids, g_pids = rng.integers(6, size=num_query), rng.integers(6, size=num_gallery)
    q_cams, g_cams = np.zeros(num_query, int), rng.integers(1, 4, size=num_gallery)
    distmat = rng.random((num_query, num_gallery))
    args = (q_pids, g_pids, q_cams, g_cams)
    expected_cmc, expected_map = tr.metrics.evaluate_rank(
        distmat, *args, num_gallery, use_cython=False
    )
    cmc, mean_ap = evaluate_rank(distmat, *args)
    assert cmc.shape == (50,)
    np.testing.assert_array_equal(cmc[:num_gallery], expected_cmc)
    np.testing.assert_array_equal(cmc[num_gallery:], np.full(50 - num_gallery, cmc[-1]))
    assert cmc[-1] == 1.0
    assert mean_ap == pytest.approx(expected_map, rel=1e-12)


@pytest.mark.parametrize("mode", ["general", "cc", "sc"])
@pytest.mark.parametrize("seed", [11, 12])
def test_protocols_match_plain_reference(mode, seed):
    distmat, labels = random_problem(seed, 50, 400, 25, 4, outfits=3)
    expected_cmc, expected_map, expected_valid = plain_reference(distmat, labels, mode, 30)
    result = evaluate_rank_detailed(distmat, **labels, mode=mode, max_rank=30, chunk_size=16)
    np.testing.assert_allclose(result.cmc, expected_cmc, rtol=1e-6)
    assert result.mAP == pytest.approx(expected_map, rel=1e-12)
    assert (result.num_valid, result.num_skipped) == (expected_valid, 50 - expected_valid)


@pytest.mark.parametrize("mode", ["general", "cc", "sc"])
def test_tied_distances_rank_like_a_stable_argsort(mode):
    # distances from 6 levels only: most items tie, same-identity items with each other too
    distmat, labels = random_problem(13, 30, 200, 8, 3, outfits=2)
    distmat = np.floor(distmat * 6)
    expected_cmc, expected_map, expected_valid = plain_reference(distmat, labels, mode, 20)
    for data in (distmat, distmat.astype(np.float32), distmat.astype(np.int64)):
        result = evaluate_rank_detailed(data, **labels, mode=mode, max_rank=20, chunk_size=8)
        np.testing.assert_allclose(result.cmc, expected_cmc, rtol=1e-6)
        assert result.mAP == pytest.approx(expected_map, rel=1e-12)
        assert result.num_valid == expected_valid


@pytest.mark.parametrize("rows_per_block", [1, 3, 10_000])
def test_hard_rows_rank_like_a_stable_argsort_in_blocks_on_several_threads(
    rows_per_block, monkeypatch
):
    # rows of every kind the bucket keys must survive: ties across the whole row, infinite
    # distances, values far apart and a hair apart, a row with one identity item only
    distmat, labels = random_problem(14, 9, 150, 6, 3, outfits=2)
    distmat[0] = 1.0
    distmat[1, ::7] = np.inf
    distmat[2, ::5] = -np.inf
    distmat[3] = np.floor(distmat[3] * 3)
    distmat[4] = 1.0 + np.floor(distmat[4] * 50) * np.finfo(np.float64).eps
    distmat[5, ::2] *= 1e30
    labels["q_pids"][6] = labels["g_pids"][17]
    distmat[6] = np.where(labels["g_pids"] == labels["q_pids"][6], 0.5, distmat[6])
    from csgn_plugin.evaluation import ranking

    num_gallery = distmat.shape[1]
    monkeypatch.setitem(ranking._BLOCK_ENTRIES, "cpu", rows_per_block * num_gallery)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)  # blocks ranked on two threads at once
    try:
        for mode in ("general", "cc", "sc"):
            expected_cmc, expected_map, expected_valid = plain_reference(distmat, labels, mode, 20)
            with np.errstate(over="ignore"):  # 1e30 is infinite in float16
                in_float16 = distmat.astype(np.float16)
            for data in (distmat, distmat.astype(np.float32), in_float16):
                expected = (
                    (expected_cmc, expected_map, expected_valid)
                    if data.dtype == np.float64
                    else plain_reference(data, labels, mode, 20)
                )
                result = evaluate_rank_detailed(data, **labels, mode=mode, max_rank=20)
                np.testing.assert_allclose(result.cmc, expected[0], rtol=1e-6)
                assert result.mAP == pytest.approx(expected[1], rel=1e-12)
                assert result.num_valid == expected[2]
    finally:
        torch.set_num_threads(previous)
    assert torch.get_num_threads() == previous


def test_numpy_and_torch_inputs_agree():
    distmat, labels = random_problem(21, 30, 200, 15, 3)
    from_numpy = evaluate_rank_modes(distmat, **labels, modes=("general", "cc", "sc"))
    as_tensors = {key: torch.from_numpy(value) for key, value in labels.items()}
    from_torch = evaluate_rank_modes(
        torch.from_numpy(distmat), **as_tensors, modes=("general", "cc", "sc")
    )
    as_lists = {key: value.tolist() for key, value in labels.items()}
    from_lists = evaluate_rank_modes(distmat.tolist(), **as_lists, modes=("general", "cc", "sc"))
    for mode in ("general", "cc", "sc"):
        for other in (from_torch[mode], from_lists[mode]):
            np.testing.assert_array_equal(other.cmc, from_numpy[mode].cmc)
            assert other.mAP == from_numpy[mode].mAP


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_distmat_matches_cpu():
    distmat, labels = random_problem(22, 40, 300, 20, 3)
    on_cpu = evaluate_rank_modes(distmat, **labels, modes=("general", "cc", "sc"))
    on_gpu = evaluate_rank_modes(
        torch.from_numpy(distmat).cuda(), **labels, modes=("general", "cc", "sc")
    )
    for mode, result in on_cpu.items():
        np.testing.assert_array_equal(on_gpu[mode].cmc, result.cmc)
        assert on_gpu[mode].mAP == pytest.approx(result.mAP, rel=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_features_and_single_shot_match_cpu():
    _, labels = random_problem(23, 50, 400, 20, 3)
    rng = np.random.default_rng(24)
    qf, gf = rng.normal(size=(50, 64)), rng.normal(size=(400, 64))
    modes = ("general", "cc", "sc")
    on_cpu = evaluate_features(qf, gf, **labels, modes=modes, chunk_size=16)
    on_gpu = evaluate_features(
        torch.from_numpy(qf).cuda(),
        torch.from_numpy(gf).cuda(),
        **labels,
        modes=modes,
        chunk_size=16,
    )
    for mode, result in on_cpu.items():
        np.testing.assert_array_equal(on_gpu[mode].cmc, result.cmc)
        assert on_gpu[mode].mAP == pytest.approx(result.mAP, rel=1e-12)
    distmat = np.floor(compute_distance_matrix(qf, gf).numpy())  # with ties
    single_cpu = single_shot_evaluate(distmat, **labels, mode="cc", trials=3)
    single_gpu = single_shot_evaluate(
        torch.from_numpy(distmat).cuda(), **labels, mode="cc", trials=3
    )
    np.testing.assert_array_equal(single_gpu.cmc, single_cpu.cmc)
    assert single_gpu.mAP == pytest.approx(single_cpu.mAP, rel=1e-12)


def test_results_do_not_depend_on_chunk_size_or_on_modes_asked_together():
    distmat, labels = random_problem(31, 45, 250, 20, 3)
    reference = {
        mode: evaluate_rank_detailed(distmat, **labels, mode=mode, chunk_size=45)
        for mode in ("general", "cc", "sc")
    }
    for chunk_size in (1, 4, 1000):
        together = evaluate_rank_modes(
            distmat, **labels, modes=("sc", "general", "cc"), chunk_size=chunk_size
        )
        for mode, result in reference.items():
            np.testing.assert_array_equal(together[mode].cmc, result.cmc)
            assert together[mode].mAP == pytest.approx(result.mAP, rel=1e-12)
            assert together[mode].num_skipped == result.num_skipped


def test_chunk_whose_queries_have_no_same_identity_item():
    # chunk_size 1: q0 (pid 7) has nothing of its identity; q1 (pid 1) ranks g1 (pid 2) then g0
    distmat = np.array([[0.1, 0.2], [0.3, 0.1]])
    result = evaluate_rank_detailed(
        distmat, [7, 1], [1, 2], [0, 0], [1, 1], max_rank=3, chunk_size=1
    )
    np.testing.assert_allclose(result.cmc, [0, 1, 1])
    assert result.mAP == pytest.approx(0.5)
    assert (result.num_valid, result.num_skipped) == (1, 1)


def test_ties_are_ordered_by_gallery_index():
    # all distances equal: gallery order decides. q0 (pid 1, cam 0): g0 wrong, g1 good, g2 good
    distmat = np.ones((1, 3))
    result = evaluate_rank_detailed(distmat, [1], [5, 1, 1], [0], [1, 1, 2], max_rank=3)
    np.testing.assert_allclose(result.cmc, [0, 1, 1])
    assert result.mAP == pytest.approx((1 / 2 + 2 / 3) / 2)


# --- Distances and the features-in evaluator ---------------------------------------------------


def test_compute_distance_matrix_definitions():
    rng = np.random.default_rng(41)
    qf, gf = rng.normal(size=(7, 16)), rng.normal(size=(11, 16))
    squared = ((qf[:, None, :] - gf[None, :, :]) ** 2).sum(-1)
    qn = qf / np.linalg.norm(qf, axis=1, keepdims=True)
    gn = gf / np.linalg.norm(gf, axis=1, keepdims=True)
    cosine = 1 - qn @ gn.T
    np.testing.assert_allclose(compute_distance_matrix(qf, gf).numpy(), squared, rtol=1e-10)
    np.testing.assert_allclose(
        compute_distance_matrix(qf, gf, "cosine").numpy(), cosine, atol=1e-12
    )
    normalized = compute_distance_matrix(qf, gf, "euclidean", normalize=True).numpy()
    np.testing.assert_allclose(normalized, 2 * cosine, atol=1e-12)

    tr = torchreid_api()
    q32, g32 = torch.from_numpy(qf).float(), torch.from_numpy(gf).float()
    for metric in ("euclidean", "cosine"):
        expected = tr.metrics.compute_distance_matrix(q32, g32, metric)
        ours = compute_distance_matrix(q32, g32, metric)
        assert ours.dtype == torch.float32
        torch.testing.assert_close(ours, expected)


@pytest.mark.parametrize(
    "metric,normalize", [("euclidean", False), ("euclidean", True), ("cosine", False)]
)
def test_features_variant_matches_distmat_variant(metric, normalize):
    _, labels = random_problem(51, 37, 230, 15, 3)
    rng = np.random.default_rng(52)
    centers = rng.normal(size=(15, 32))
    qf = centers[labels["q_pids"]] + rng.normal(size=(37, 32))
    gf = centers[labels["g_pids"]] + rng.normal(size=(230, 32))
    modes = ("general", "cc", "sc")
    distmat = compute_distance_matrix(qf, gf, metric, normalize)
    expected = evaluate_rank_modes(distmat, **labels, modes=modes)
    for chunk_size in (5, 1024):
        results = evaluate_features(
            qf, gf, **labels, modes=modes, metric=metric, normalize=normalize, chunk_size=chunk_size
        )
        assert set(results) == set(modes)
        for mode in modes:
            np.testing.assert_array_equal(results[mode].cmc, expected[mode].cmc)
            assert results[mode].mAP == pytest.approx(expected[mode].mAP, rel=1e-12)


# --- Single-shot -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["general", "cc", "sc"])
def test_single_shot_equals_multi_shot_with_one_image_per_identity(mode):
    rng = np.random.default_rng(61)
    num_ids, num_query = 40, 60
    g_pids = rng.permutation(num_ids)
    q_pids = rng.integers(num_ids, size=num_query)
    labels = {
        "q_pids": q_pids,
        "g_pids": g_pids,
        "q_camids": np.zeros(num_query, int),
        "g_camids": rng.integers(0, 3, size=num_ids),
        "q_clothes_ids": 2 * q_pids + rng.integers(2, size=num_query),
        "g_clothes_ids": 2 * g_pids + rng.integers(2, size=num_ids),
    }
    distmat = rng.random((num_query, num_ids))
    multi = evaluate_rank_detailed(distmat, **labels, mode=mode, max_rank=10)
    single = single_shot_evaluate(distmat, **labels, mode=mode, trials=4, seed=3, max_rank=10)
    np.testing.assert_allclose(single.cmc, multi.cmc, rtol=1e-6)
    assert single.mAP == pytest.approx(multi.mAP)
    assert (single.num_valid, single.num_skipped) == (4 * multi.num_valid, 4 * multi.num_skipped)
    assert (single.mode, single.num_trials) == (mode, 4)


def documented_draw(g_pids, seed):
    """The draw as documented: keys from default_rng(seed).random(n); smallest key per pid."""
    keys = np.random.default_rng(seed).random(len(g_pids))
    return sorted(
        min(np.flatnonzero(g_pids == pid), key=lambda i: keys[i]) for pid in np.unique(g_pids)
    )


def test_single_shot_draw_follows_documented_rule_and_is_seeded():
    g_pids = np.repeat(np.arange(30), 5)[np.random.default_rng(0).permutation(150)]
    for seed in (0, 1, 7):
        drawn = draw_single_shot_gallery(g_pids, seed)
        assert drawn.tolist() == documented_draw(g_pids, seed)
        assert sorted(g_pids[drawn].tolist()) == list(range(30))
    assert (
        draw_single_shot_gallery(g_pids, 0).tolist() != draw_single_shot_gallery(g_pids, 1).tolist()
    )


def test_single_shot_hand_case():
    # Queries q0 (pid 1, cam 0) and q1 (pid 2, cam 0) rank the gallery in index order:
    #   g0 pid 1 cam 1, g1 pid 2 cam 1, g2 pid 1 cam 0, g3 pid 1 cam 2.
    # Pid 2 always keeps g1; pid 1 keeps one of g0, g2, g3:
    #   g0: [g0, g1]  q0: g0 good at rank 1 (AP 1)     q1: g1 good at rank 2 (AP 1/2)
    #   g2: [g1, g2]  q0: g2 same camera = junk, skipped  q1: g1 at rank 1 (AP 1)
    #   g3: [g1, g3]  q0: g3 good at rank 2 (AP 1/2)   q1: g1 at rank 1 (AP 1)
    g_pids, g_cams = np.array([1, 2, 1, 1]), np.array([1, 1, 0, 2])
    distmat = np.array([[0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4]])
    args = ([1, 2], g_pids, [0, 0], g_cams)
    trials, seed = 10, 5
    cmc_sum, map_sum, num_valid = np.zeros(2), 0.0, 0
    for trial in range(trials):
        kept_for_pid1 = [i for i in documented_draw(g_pids, seed + trial) if g_pids[i] == 1][0]
        if kept_for_pid1 == 0:  # q0 at rank 1 (AP 1); q1 behind g0 at rank 2 (AP 1/2)
            cmc_sum += np.array([0.5, 1.0])
            map_sum += (1 + 1 / 2) / 2
            num_valid += 2
        elif kept_for_pid1 == 2:  # q0 skipped; q1: g1 before g2, rank 1
            cmc_sum += np.array([1.0, 1.0])
            map_sum += 1.0
            num_valid += 1
        else:  # g3: q0 at rank 2 (AP 1/2); q1 at rank 1
            cmc_sum += np.array([0.5, 1.0])
            map_sum += (1 / 2 + 1) / 2
            num_valid += 2
    result = single_shot_evaluate(distmat, *args, trials=trials, seed=seed, max_rank=2)
    np.testing.assert_allclose(result.cmc, cmc_sum / trials, rtol=1e-6)
    assert result.mAP == pytest.approx(map_sum / trials)
    assert (result.num_valid, result.num_skipped) == (num_valid, 2 * trials - num_valid)
    again = single_shot_evaluate(distmat, *args, trials=trials, seed=seed, max_rank=2)
    np.testing.assert_array_equal(again.cmc, result.cmc)
    assert again.mAP == result.mAP


# --- Errors ------------------------------------------------------------------------------------


def test_clothes_modes_require_clothes_ids():
    labels = {key: HAND[key] for key in ("q_pids", "g_pids", "q_camids", "g_camids")}
    for mode in ("cc", "sc"):
        with pytest.raises(ValueError, match="q_clothes_ids and g_clothes_ids are None"):
            evaluate_rank(hand_distmat(), **labels, mode=mode)
    with pytest.raises(ValueError, match="q_clothes_ids is None"):
        evaluate_rank(hand_distmat(), **labels, g_clothes_ids=HAND["g_clothes_ids"], mode="cc")
    with pytest.raises(ValueError, match="g_clothes_ids is None"):
        single_shot_evaluate(hand_distmat(), **{**HAND, "g_clothes_ids": None}, mode="sc")
    # general ignores clothes
    assert evaluate_rank(hand_distmat(), **labels)[1] == pytest.approx(143 / 180)


def test_bad_mode_metric_and_sizes_are_refused():
    distmat = hand_distmat()
    with pytest.raises(ValueError, match="unknown evaluation mode 'CC'"):
        evaluate_rank(distmat, **HAND, mode="CC")
    with pytest.raises(ValueError, match="unknown distance metric 'l2'"):
        evaluate_features(np.ones((3, 4)), np.ones((8, 4)), **HAND, metric="l2")
    with pytest.raises(ValueError, match="max_rank must be a positive integer"):
        evaluate_rank(distmat, **HAND, max_rank=0)
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        evaluate_rank(distmat, **HAND, chunk_size=0)
    with pytest.raises(ValueError, match="trials must be a positive integer"):
        single_shot_evaluate(distmat, **HAND, trials=0)


def test_shape_mismatches_are_refused():
    distmat = hand_distmat()
    with pytest.raises(ValueError, match=r"q_pids must be 1-D with 3 entries.*shape \(2,\)"):
        evaluate_rank(distmat, **{**HAND, "q_pids": np.array([1, 2])})
    with pytest.raises(ValueError, match="g_camids must be 1-D with 8 entries"):
        evaluate_rank(distmat, **{**HAND, "g_camids": np.zeros((8, 1), int)})
    with pytest.raises(ValueError, match="distmat must be 2-D"):
        evaluate_rank(distmat[0], **HAND)
    with pytest.raises(ValueError, match="dimension 4 but gallery features 5"):
        evaluate_features(np.ones((3, 4)), np.ones((8, 5)), **HAND)
    with pytest.raises(TypeError, match="q_pids must hold integer labels"):
        evaluate_rank(distmat, **{**HAND, "q_pids": np.array([1.0, 2.0, 4.0])})


def test_nan_distances_and_protocols_without_valid_queries_are_refused():
    distmat = hand_distmat()
    distmat[1, 3] = np.nan
    with pytest.raises(ValueError, match=r"NaN values in query rows 0\.\.2"):
        evaluate_rank(distmat, **HAND)
    # only q1 and q2: q1 has no clothes-changing match, q2's identity is absent
    rows = {key: HAND[key][1:] for key in ("q_pids", "q_camids", "q_clothes_ids")}
    with pytest.raises(ValueError, match=r"no query has a good match under mode 'cc' \(all 2"):
        evaluate_rank(hand_distmat()[1:], **{**HAND, **rows}, mode="cc")
