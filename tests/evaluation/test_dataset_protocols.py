"""Each protocol a data set declares, on a hand-made gallery in its release layout: which gallery
items the ranking treats as good and which as junk, per query.

The trees are tests/dataset_trees.py's; the labels come from the data set classes (parsed from
file names and lists), the good/junk sets from the evaluator's own ranking (evaluate_rank: each
gallery item ranked first alone, then ahead of a good item); the expectations below are written
by hand from each data set's official rule:

* LTCC, SynthCC, VC-Clothes, CCVID: general (same camera is junk), CC (same camera or same
  clothes is junk), SC (same camera or other clothes is junk);
* PRCC: gallery = camera A; SC's queries are camera B (same clothes as A), CC's camera C
  (other clothes): B queries are skipped under CC and C queries under SC;
* VC-Clothes' variants: general on cameras 2-3 (SC setting) or 3-4 (CC setting) only;
* DeepChange: the tracklet takes the camera's place, so an image of the same camera from
  another tracklet is good and only the query's own tracklet is junk;
* LaST: every image is its own camera, so nothing is junk;
* Celeb-reID(-light): camera = first digit of n, general only.
"""

import os

import numpy as np
import pytest
from dataset_trees import (
    build_ccvid,
    build_celebreid,
    build_deepchange,
    build_last,
    build_ltcc,
    build_prcc,
    build_vcclothes,
)

from csgn_plugin.data.datasets import IMAGE_DATASETS, VIDEO_DATASETS, SynthCC
from csgn_plugin.evaluation import evaluate_rank_detailed


def basename(path):
    return os.path.basename(path)


def last_parts(count):
    return lambda path: "/".join(os.path.normpath(path).split(os.sep)[-count:])


def tracklet(frames):
    return last_parts(2)(os.path.dirname(frames[0]))


def ranked_sets(query, gallery, mode, label):
    """``{query label: (good labels, junk labels)}``, or None for a query without any good item
    (skipped), as evaluate_rank treats them. Read off one-query rankings: an item is good when,
    ranked first ahead of another identity's item, it is a rank-1 hit; an item that is not good
    is junk when, ranked first ahead of a good item, it still leaves a rank-1 hit (it was
    dropped from the ranking)."""
    columns = {
        "g_pids": np.array([it[1] for it in gallery]),
        "g_camids": np.array([it[2] for it in gallery]),
        "g_clothes_ids": np.array([it[4] for it in gallery]),
    }
    size = len(gallery)

    def rank_one_hit(row, first, second):
        distances = 1.0 + np.arange(size) / size  # the others, in gallery order
        distances[first], distances[second] = 0.0, 0.5
        item = query[row]
        try:
            result = evaluate_rank_detailed(
                distances[None],
                q_pids=np.array([item[1]]),
                q_camids=np.array([item[2]]),
                q_clothes_ids=np.array([item[4]]),
                mode=mode,
                max_rank=size,
                **columns,
            )
        except ValueError as exc:
            assert "no query has a good match" in str(exc)
            return None
        return bool(result.cmc[0] == 1)

    names = [label(it[0]) for it in gallery]
    sets = {}
    for row, item in enumerate(query):
        others = [j for j in range(size) if gallery[j][1] != item[1]]
        if rank_one_hit(row, others[0], others[-1]) is None:
            sets[label(item[0])] = None
            continue
        # each item ahead of another identity's item (a second one when it is the first)
        good = [j for j in range(size) if rank_one_hit(row, j, others[j == others[0]])]
        junk = [j for j in range(size) if j not in good and rank_one_hit(row, j, good[0])]
        sets[label(item[0])] = ({names[j] for j in good}, {names[j] for j in junk})
    return sets


# --------------------------------------------------------------------------- expectations
LTCC = {
    "general": {
        "007_1_c1_000001.png": (
            {"007_1_c2_000004.png", "007_2_c3_000005.png"},
            {"007_2_c1_000006.png"},
        ),
        "045_2_c11_000002.png": ({"045_2_c6_000008.png"}, {"045_1_c11_000007.png"}),
        "150_1_c5_000003.png": ({"150_1_c7_000010.png"}, {"150_1_c5_000009.png"}),
    },
    "cc": {
        "007_1_c1_000001.png": (
            {"007_2_c3_000005.png"},
            {"007_1_c2_000004.png", "007_2_c1_000006.png"},
        ),
        "045_2_c11_000002.png": None,  # same camera or same clothes: all junk
        "150_1_c5_000003.png": None,
    },
    "sc": {
        "007_1_c1_000001.png": (
            {"007_1_c2_000004.png"},
            {"007_2_c3_000005.png", "007_2_c1_000006.png"},
        ),
        "045_2_c11_000002.png": ({"045_2_c6_000008.png"}, {"045_1_c11_000007.png"}),
        "150_1_c5_000003.png": ({"150_1_c7_000010.png"}, {"150_1_c5_000009.png"}),
    },
}

# PRCC: A/<pid> is the gallery; B/<pid> and C/<pid> the queries (file names repeat across folders)
_A = {
    "003": {"A/003/cropped_rgb001.jpg", "A/003/cropped_rgb002.jpg"},
    "017": {"A/017/cropped_rgb001.jpg"},
}
_A["221"] = {"A/221/cropped_rgb001.jpg", "A/221/cropped_rgb002.jpg"}
_PRCC_QUERIES = {
    "B": [("003", 1), ("017", 2), ("221", 1)],
    "C": [("003", 2), ("017", 1), ("221", 1)],
}


def _prcc(good_camera):
    return {
        f"{camera}/{pid}/cropped_rgb{k:03d}.jpg": (_A[pid], set())
        if camera == good_camera
        else None
        for camera, pids in _PRCC_QUERIES.items()
        for pid, count in pids
        for k in range(1, count + 1)
    }


PRCC = {"sc": _prcc("B"), "cc": _prcc("C")}

# VC-Clothes: <pid>-<camera>-<outfit>-<counter>; gallery 0300: G1 (c1, o1) G2 (c2, o1) G3 (c3, o2)
# G4 (c4, o2); 0512: H1 (c1, o1) H2 (c2, o1) H3 (c3, o2) H4 (c4, o1)
G1, G2, G3, G4 = "0300-01-01-10.jpg", "0300_02_01_11.jpg", "0300-03-02-12.jpg", "0300-04-02-13.jpg"
H1, H2, H3, H4 = "0512-01-01-10.jpg", "0512-02-01-11.jpg", "0512-03-02-12.jpg", "0512_04_01_13.jpg"
Q1, Q2, Q3, Q4 = "0300-01-01-01.jpg", "0300-02-01-02.jpg", "0300_03_01_03.jpg", "0300-04-02-04.jpg"
R2, R3, R4 = "0512-02-01-01.jpg", "0512-03-01-02.jpg", "0512-04-02-03.jpg"
VCCLOTHES = {
    "general": {
        Q1: ({G2, G3, G4}, {G1}),
        Q2: ({G1, G3, G4}, {G2}),
        Q3: ({G1, G2, G4}, {G3}),
        Q4: ({G1, G2, G3}, {G4}),
        R2: ({H1, H3, H4}, {H2}),
        R3: ({H1, H2, H4}, {H3}),
        R4: ({H1, H2, H3}, {H4}),
    },
    "cc": {
        Q1: ({G3, G4}, {G1, G2}),
        Q2: ({G3, G4}, {G1, G2}),
        Q3: ({G4}, {G1, G2, G3}),
        Q4: ({G1, G2}, {G3, G4}),
        R2: ({H3}, {H1, H2, H4}),
        R3: None,  # outfit 1 in camera 3: the others are outfit 1 or camera 3
        R4: ({H1, H2}, {H3, H4}),
    },
    "sc": {
        Q1: ({G2}, {G1, G3, G4}),
        Q2: ({G1}, {G2, G3, G4}),
        Q3: ({G1, G2}, {G3, G4}),
        Q4: ({G3}, {G1, G2, G4}),
        R2: ({H1, H4}, {H2, H3}),
        R3: ({H1, H2, H4}, {H3}),
        R4: ({H3}, {H1, H2, H4}),
    },
}
VCCLOTHES_SC = {"general": {Q2: ({G3}, {G2}), Q3: ({G2}, {G3}), R2: ({H3}, {H2}), R3: ({H2}, {H3})}}
VCCLOTHES_CC = {"general": {Q3: ({G4}, {G3}), Q4: ({G3}, {G4}), R3: ({H4}, {H3}), R4: ({H3}, {H4})}}

# DeepChange test set: P<pid>_C<camera>_<day>_...; the query of 1000 is tracklet 101 in camera 3;
# gallery: tracklet 102 (camera 3, same day), 101 (its own), 103 (camera 4)
DEEPCHANGE = {
    "general": {
        "P01000_C03_20200101_10_100_200.jpg": (
            {"P01000_C03_20200101_10_100_200.jpg", "P01000_C04_20200301_12_102_202.jpg"},
            {"P01000_C03_20200101_11_101_201.jpg"},
        ),
        "P01121_C12_20200105_11_101_201.jpg": (
            {"P01121_C12_20200105_13_103_203.jpg", "P01121_C01_20200105_14_104_204.jpg"},
            set(),
        ),
    }
}

LAST = {
    "general": {
        "006000_000_query_0.jpg": ({"006000_000_gallery_0.jpg", "006000_001_gallery_1.jpg"}, set()),
        "006000_001_query_1.jpg": ({"006000_000_gallery_0.jpg", "006000_001_gallery_1.jpg"}, set()),
        "010175_000_query_0.jpg": ({"010175_000_gallery_0.jpg", "010175_001_gallery_1.jpg"}, set()),
    }
}

CELEBREID = {
    "general": {
        "700_12_0.jpg": ({"700_22_2.jpg", "700_45_3.jpg"}, set()),
        "1052_31_1.jpg": ({"1052_6_0.jpg"}, {"1052_31_4.jpg"}),
    }
}

CCVID = {
    "general": {
        "session1/101_01": ({"session1/101_02", "session2/101_03"}, set()),
        "session3/226_02": ({"session3/226_01", "session3/226_04"}, set()),
    },
    "cc": {
        "session1/101_01": ({"session2/101_03"}, {"session1/101_02"}),
        "session3/226_02": ({"session3/226_04"}, {"session3/226_01"}),
    },
    "sc": {
        "session1/101_01": ({"session1/101_02"}, {"session2/101_03"}),
        "session3/226_02": ({"session3/226_01"}, {"session3/226_04"}),
    },
}


class TreeSynthCC(SynthCC):
    """SynthCC's class on an LTCC tree (its generated trees have LTCC's layout), not generated."""

    tree_dir = ""

    def _dataset_dir(self, root, **kwargs):
        return self.tree_dir


def _synthcc(tmp_path):
    tree = build_ltcc(tmp_path)
    TreeSynthCC.tree_dir = tree.dataset_dir
    return tree


CASES = {
    # name: (tree builder, dataset class, extra arguments, label of an item's path, expectations)
    "ltcc": (build_ltcc, None, {}, basename, LTCC),
    "synthcc": (_synthcc, TreeSynthCC, {}, basename, LTCC),
    "prcc": (build_prcc, None, {}, last_parts(3), PRCC),
    "vcclothes": (build_vcclothes, None, {}, basename, VCCLOTHES),
    "vcclothes_sc": (build_vcclothes, None, {}, basename, VCCLOTHES_SC),
    "vcclothes_cc": (build_vcclothes, None, {}, basename, VCCLOTHES_CC),
    "deepchange": (build_deepchange, None, {}, basename, DEEPCHANGE),
    "last": (build_last, None, {}, basename, LAST),
    "celebreid": (build_celebreid, None, {}, basename, CELEBREID),
    "celebreid_light": (
        lambda tmp: build_celebreid(tmp, IMAGE_DATASETS["celebreid_light"].dataset_dir),
        None,
        {},
        basename,
        CELEBREID,
    ),
    "ccvid": (
        build_ccvid,
        None,
        {"transform": lambda frames: frames, "video_train_chunk_len": 0},
        tracklet,
        CCVID,
    ),
}


def test_every_registered_data_set_and_protocol_has_a_case():
    registered = {**IMAGE_DATASETS, **VIDEO_DATASETS}
    assert set(CASES) == set(registered)
    for name, cls in registered.items():
        assert set(CASES[name][4]) == set(cls.protocols), name


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_declared_protocol_has_the_good_and_junk_sets_of_its_rule(tmp_path, name):
    build, cls, extra, label, expected = CASES[name]
    cls = cls or {**IMAGE_DATASETS, **VIDEO_DATASETS}[name]
    tree = build(tmp_path)
    dataset = cls(root=tree.root, verbose=False, **extra)
    for mode in cls.protocols:
        got = ranked_sets(dataset.query, dataset.gallery, mode, label)
        assert got == expected[mode], f"{name} {mode}"
