"""Dataset parsers against trees built in each data set's release layout (tests/dataset_trees.py).

The tree builders know what each file means; the parsed items must agree: raw pids in query and
gallery, training pids relabelled to 0..N-1, 0-based cameras, clothes ids that identify exactly
the (pid, outfit) pairs of their scope (train; query + gallery together).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys

import pytest
from dataset_trees import (
    LTCC_CC_TRAIN_IDS,
    VC_VARIANT_CAMERAS,
    build_ccvid,
    build_celebreid,
    build_deepchange,
    build_last,
    build_ltcc,
    build_prcc,
    build_vcclothes,
    write_image,
)

from csgn_plugin.data.base import DatasetLayoutError
from csgn_plugin.data.datasets import (
    CCVID,
    IMAGE_DATASETS,
    LTCC,
    PRCC,
    VIDEO_DATASETS,
    CelebReID,
    CelebReIDLight,
    DeepChange,
    LaST,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def identity(frame):
    return frame


def assert_bijection(parsed: list, truth: list) -> None:
    """Equal truth keys <-> equal parsed values, and the values are exactly 0..K-1."""
    forward, backward = {}, {}
    for value, key in zip(parsed, truth):
        assert forward.setdefault(key, value) == value, f"{key} got two ids"
        assert backward.setdefault(value, key) == key, f"id {value} shared by {key}"
    assert sorted(backward) == list(range(len(backward)))


def assert_split(items: list, truth: list, relabelled: bool) -> None:
    by_path = {item[0]: item for item in items}
    assert len(by_path) == len(items) == len(truth)
    assert set(by_path) == {t.path for t in truth}
    ordered = [by_path[t.path] for t in truth]
    if relabelled:
        assert_bijection([it[1] for it in ordered], [t.pid for t in truth])
    else:
        assert [it[1] for it in ordered] == [t.pid for t in truth]
    assert all(it[3] == 0 for it in ordered)


def assert_cameras(items: list, truth: list) -> None:
    by_path = {item[0]: item for item in items}
    assert [by_path[t.path][2] for t in truth] == [t.camid for t in truth]


def assert_clothes(items: list, truth: list) -> None:
    by_path = {item[0]: item for item in items}
    assert_bijection([by_path[t.path][4] for t in truth], [t.clothes for t in truth])


def check_image_dataset(ds, truth: dict, cameras: bool = True) -> None:
    assert_split(ds.train, truth["train"], relabelled=True)
    assert_split(ds.query, truth["query"], relabelled=False)
    assert_split(ds.gallery, truth["gallery"], relabelled=False)
    if cameras:
        for split in ("train", "query", "gallery"):
            assert_cameras(getattr(ds, split), truth[split])
    assert_clothes(ds.train, truth["train"])
    assert_clothes(ds.query + ds.gallery, truth["query"] + truth["gallery"])


# ------------------------------------------------------------------------- registry


def test_every_dataset_is_registered_with_torchreid():
    import csgn_plugin.registry as registry

    image = registry._dataset_registry("image")
    video = registry._dataset_registry("video")
    for name, cls in IMAGE_DATASETS.items():
        assert image[name] is cls
        assert cls.protocols and cls.obtain
    assert video["ccvid"] is CCVID
    assert set(VIDEO_DATASETS) == {"ccvid"}
    assert LTCC.protocols == ("general", "cc", "sc")
    assert PRCC.protocols == ("sc", "cc")
    assert IMAGE_DATASETS["vcclothes_sc"].protocols == ("general",)
    assert DeepChange.protocols == LaST.protocols == CelebReID.protocols == ("general",)


# ------------------------------------------------------------------------- LTCC


def test_ltcc_parses_names_from_basenames(tmp_path):
    tree = build_ltcc(tmp_path)
    assert "_c" in tree.root and "cloth" in tree.root  # folders that must not confuse the parser
    ds = LTCC(root=tree.root, verbose=False)
    check_image_dataset(ds, tree.truth)
    assert ds.num_train_pids == 3 and ds.num_train_clothes == 5
    assert {it[2] for it in ds.train} == {0, 9, 1, 2, 11, 3}  # c1, c10, c2, c3, c12, c4


def test_ltcc_clothes_changing_training_ids_only(tmp_path):
    tree = build_ltcc(tmp_path)
    ds = LTCC(root=tree.root, ltcc_train_ids="cc", verbose=False)
    kept = [t for t in tree.truth["train"] if t.pid in LTCC_CC_TRAIN_IDS]
    assert_split(ds.train, kept, relabelled=True)
    assert_clothes(ds.train, kept)
    assert len(ds.query) == 3 and len(ds.gallery) == 7  # evaluation unchanged


def test_ltcc_missing_folder_names_path_layout_and_source(tmp_path):
    tree = build_ltcc(tmp_path)
    shutil.rmtree(os.path.join(tree.dataset_dir, "query"))
    with pytest.raises(DatasetLayoutError) as err:
        LTCC(root=tree.root, verbose=False)
    msg = str(err.value)
    assert os.path.join(tree.dataset_dir, "query") in msg
    assert "train, query, test" in msg and "naiq.github.io" in msg


def test_ltcc_missing_id_list_only_matters_for_the_cc_option(tmp_path):
    tree = build_ltcc(tmp_path)
    os.remove(os.path.join(tree.dataset_dir, "info", "cloth-change_id_train.txt"))
    LTCC(root=tree.root, verbose=False)
    with pytest.raises(DatasetLayoutError, match="cloth-change_id_train.txt"):
        LTCC(root=tree.root, ltcc_train_ids="cc", verbose=False)
    with pytest.raises(ValueError, match="ltcc_train_ids"):
        LTCC(root=tree.root, ltcc_train_ids="yes", verbose=False)


def test_unparseable_name_fails_by_default_and_is_skipped_with_a_warning(tmp_path, capsys):
    tree = build_ltcc(tmp_path)
    write_image(os.path.join(tree.dataset_dir, "train", "103_1_cam9_017008.png"))
    write_image(os.path.join(tree.dataset_dir, "test", "103_1_c0_017008.png"))  # cameras from 1
    with pytest.raises(DatasetLayoutError) as err:
        LTCC(root=tree.root, verbose=False)
    assert "2 file(s)" in str(err.value) and "103_1_cam9_017008.png" in str(err.value)
    ds = LTCC(root=tree.root, name_policy="skip", verbose=False)
    assert "2 file(s)" in capsys.readouterr().out
    check_image_dataset(ds, tree.truth)
    with pytest.raises(ValueError, match="name_policy"):
        LTCC(root=tree.root, name_policy="ignore", verbose=False)


def test_empty_split_is_a_clear_error(tmp_path):
    tree = build_ltcc(tmp_path)
    for name in os.listdir(os.path.join(tree.dataset_dir, "query")):
        os.remove(os.path.join(tree.dataset_dir, "query", name))
    with pytest.raises(DatasetLayoutError, match="query split"):
        LTCC(root=tree.root, verbose=False)


def test_subclass_points_ltcc_at_another_folder(tmp_path):
    tree = build_ltcc(tmp_path, dataset_dir="OtherLayout")

    class Other(LTCC):
        dataset_dir = "OtherLayout"

    ds = Other(root=tree.root, verbose=False)
    check_image_dataset(ds, tree.truth)


# ------------------------------------------------------------------------- PRCC


def test_prcc_cameras_clothes_and_query_gallery(tmp_path):
    tree = build_prcc(tmp_path)
    ds = PRCC(root=tree.root, verbose=False)
    check_image_dataset(ds, tree.truth)
    # the fixed test clothes ids: 2 * label(pid), + 1 for camera C
    by_path = {it[0]: it for it in ds.query + ds.gallery}
    for t in tree.truth["query"] + tree.truth["gallery"]:
        assert by_path[t.path][4] == t.clothes
    assert {it[2] for it in ds.gallery} == {0} and {it[2] for it in ds.query} == {1, 2}
    assert len(ds.train) == 9  # val/ is not used


def test_prcc_sketch_modality_reads_the_parallel_tree(tmp_path):
    tree = build_prcc(tmp_path)
    ds = PRCC(root=tree.root, prcc_modality="sketch", verbose=False)
    check_image_dataset(ds, tree.extra["sketch"])
    assert all(os.sep + "sketch" + os.sep in it[0] for it in ds.train + ds.query + ds.gallery)


def test_prcc_errors(tmp_path):
    tree = build_prcc(tmp_path, sketch=False)
    with pytest.raises(DatasetLayoutError, match="sketch"):
        PRCC(root=tree.root, prcc_modality="sketch", verbose=False)
    write_image(os.path.join(tree.dataset_dir, "rgb", "train", "001", "D_cropped.jpg"))
    with pytest.raises(DatasetLayoutError, match="D_cropped.jpg"):
        PRCC(root=tree.root, verbose=False)
    shutil.rmtree(os.path.join(tree.dataset_dir, "rgb", "test", "C"))
    with pytest.raises(DatasetLayoutError, match=r"test.C"):
        PRCC(root=tree.root, name_policy="skip", verbose=False)


# ------------------------------------------------------------------------- VC-Clothes


@pytest.mark.parametrize("name", ["vcclothes", "vcclothes_sc", "vcclothes_cc"])
def test_vcclothes_and_its_camera_variants(tmp_path, name):
    tree = build_vcclothes(tmp_path)
    cams = VC_VARIANT_CAMERAS[name]
    truth = dict(tree.truth)
    for split in ("query", "gallery"):
        truth[split] = [t for t in tree.truth[split] if t.camid + 1 in cams]
    ds = IMAGE_DATASETS[name](root=tree.root, verbose=False)
    check_image_dataset(ds, truth)
    assert any("_" in os.path.basename(it[0]) for it in ds.train)  # both separators read


# ------------------------------------------------------------------------- DeepChange


@pytest.mark.parametrize("split", ["test", "val"])
def test_deepchange_uses_tracklets_as_test_cameras(tmp_path, split):
    tree = build_deepchange(tmp_path)
    truth = {
        "train": tree.truth["train-set"],
        "query": tree.truth[f"{split}-set-query"],
        "gallery": tree.truth[f"{split}-set-gallery"],
    }
    ds = DeepChange(root=tree.root, eval_split=split, verbose=False)
    check_image_dataset(ds, truth, cameras=False)
    assert_cameras(ds.train, truth["train"])
    # tracklet ids in the camera field: same tracklet <-> same id, over query and gallery
    items = {it[0]: it for it in ds.query + ds.gallery}
    test_truth = truth["query"] + truth["gallery"]
    assert_bijection([items[t.path][2] for t in test_truth], [t.camid for t in test_truth])


def test_deepchange_list_file_errors(tmp_path):
    tree = build_deepchange(tmp_path)
    list_path = os.path.join(tree.dataset_dir, "test-set-query-bbox.txt")
    with open(list_path) as f:
        lines = f.read().splitlines()
    with open(list_path, "a") as f:
        f.write(lines[0] + "\n")
    with pytest.raises(DatasetLayoutError, match="more than once"):
        DeepChange(root=tree.root, verbose=False)
    with open(list_path, "w") as f:
        f.write(lines[0] + "\n")  # the second query image is no longer listed
    with pytest.raises(DatasetLayoutError, match="not listed in"):
        DeepChange(root=tree.root, name_policy="skip", verbose=False)
    os.remove(list_path)
    with pytest.raises(DatasetLayoutError, match="test-set-query-bbox.txt"):
        DeepChange(root=tree.root, eval_split="test", verbose=False)
    DeepChange(root=tree.root, eval_split="val", verbose=False)  # only lists in use are read


# ------------------------------------------------------------------------- LaST


@pytest.mark.parametrize("split", ["test", "val"])
def test_last_flat_query_nested_gallery_and_unique_cameras(tmp_path, split):
    tree = build_last(tmp_path)
    truth = {
        "train": tree.truth["train"],
        "query": tree.truth[f"{split}-query"],
        "gallery": tree.truth[f"{split}-gallery"],
    }
    ds = LaST(root=tree.root, eval_split=split, verbose=False)
    check_image_dataset(ds, truth, cameras=False)
    assert len({it[2] for it in ds.train}) == len(ds.train)
    test = ds.query + ds.gallery
    assert len({it[2] for it in test}) == len(test)  # nothing is ever same-camera
    assert ds.num_train_clothes == 5  # (0,0) (0,1) (17,3) (17,10) (4999,0)


def test_last_duplicate_basename_in_gallery(tmp_path):
    tree = build_last(tmp_path)
    gallery = os.path.join(tree.dataset_dir, "test", "gallery")
    name = os.listdir(os.path.join(gallery, "006000"))[0]
    write_image(os.path.join(gallery, "007777", name))
    with pytest.raises(DatasetLayoutError, match=name):
        LaST(root=tree.root, verbose=False)


# ------------------------------------------------------------------------- Celeb-reID


@pytest.mark.parametrize("cls", [CelebReID, CelebReIDLight])
def test_celebreid_camera_is_first_digit_of_n(tmp_path, cls):
    tree = build_celebreid(tmp_path, dataset_dir=cls.dataset_dir)
    ds = cls(root=tree.root, verbose=False)
    check_image_dataset(ds, tree.truth)
    cams = {os.path.basename(it[0]): it[2] for it in ds.query}
    assert cams == {"700_12_0.jpg": 1, "1052_31_1.jpg": 3}


# ------------------------------------------------------------------------- CCVID


def test_ccvid_tracklets_from_lists(tmp_path):
    tree = build_ccvid(tmp_path)
    ds = CCVID(root=tree.root, transform=identity, video_train_chunk_len=0, verbose=False)
    check_image_dataset(ds, tree.truth)
    assert ds.train_videos == ds.train
    # session3 walks are cameras 13.. (0-based 12..)
    assert sorted({it[2] for it in ds.train}) == [0, 1, 11, 12]


def test_ccvid_training_chunks_and_test_clips(tmp_path):
    tree = build_ccvid(tmp_path)
    kw = dict(root=tree.root, transform=identity, verbose=False, video_train_chunk_len=5)
    train = CCVID(mode="train", **kw)
    # 12 frames -> [0,5) [5,12); 10 -> [0,5) [5,10); 9 -> [0,9); 3 -> [0,3)
    assert sorted(len(it[0]) for it in train.train) == [3, 5, 5, 5, 7, 9]
    assert train.data is train.train and len(train.train_videos) == 4

    gallery = CCVID(mode="gallery", video_test_clip_len=8, video_test_clip_stride=4, **kw)
    # 9 frames: [0,8) [1,9); 8: [0,8); 10: [0,8) [2,10); 5: one clip padded with frame 4
    assert gallery.clip_video_index == [0, 0, 1, 2, 2, 3]
    assert all(len(clip[0]) == 8 for clip in gallery.data)
    frames = tree.truth["gallery"]
    assert gallery.data[1][0] == frames[0].path[1:9]
    assert gallery.data[4][0] == frames[2].path[2:10]
    assert gallery.data[5][0] == frames[3].path + (frames[3].path[-1],) * 3
    query = CCVID(mode="query", video_test_clip_len=8, video_test_clip_stride=4, **kw)
    short = query.data[query.clip_video_index.index(1)][0]  # 3 frames, shorter than a clip
    assert short == tree.truth["query"][1].path + (tree.truth["query"][1].path[-1],) * 5


def test_ccvid_list_errors(tmp_path):
    tree = build_ccvid(tmp_path)
    query_list = os.path.join(tree.dataset_dir, "query.txt")
    with open(query_list) as f:
        lines = f.read().splitlines()
    with open(query_list, "a") as f:
        f.write(lines[0] + "\n")
    with pytest.raises(DatasetLayoutError, match="more than once"):
        CCVID(root=tree.root, transform=identity, verbose=False)
    with open(query_list, "w") as f:
        f.write("\n".join([lines[0], "session1/101_01 102 u1_l1"]) + "\n")
    with pytest.raises(DatasetLayoutError, match="disagrees"):
        CCVID(root=tree.root, transform=identity, verbose=False)
    with open(query_list, "w") as f:
        f.write("\n".join([lines[0], "session1/099_01 099 u1_l1"]) + "\n")
    with pytest.raises(DatasetLayoutError, match="099_01"):
        CCVID(root=tree.root, transform=identity, verbose=False)
    with open(query_list, "w") as f:
        f.write("\n".join([lines[0], "session1/101-01 101 u1_l1"]) + "\n")
    with pytest.raises(DatasetLayoutError, match="101-01"):
        CCVID(root=tree.root, transform=identity, verbose=False)
    ds = CCVID(root=tree.root, transform=identity, name_policy="skip", verbose=False)
    assert len(ds.query) == 1
    os.remove(query_list)
    with pytest.raises(DatasetLayoutError, match="query.txt"):
        CCVID(root=tree.root, transform=identity, verbose=False)


# ------------------------------------------------------------------------- check_dataset


def run_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "check_dataset.py"), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
    )


@pytest.mark.slow
def test_check_dataset_prints_statistics_and_flags_differences(tmp_path):
    tree = build_ltcc(tmp_path)
    proc = run_check("ltcc", "--root", tree.root, "--ltcc_train_ids", "cc")
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line.split()[1:] for line in proc.stdout.splitlines() if line}
    # ids, images, cameras, outfits, from LTCC_SPEC (train: ids 1 and 103 only)
    assert rows["train"] == ["2", "7", "5", "4"]
    assert rows["query"] == ["3", "3", "3", "3"]
    assert rows["gallery"] == ["3", "7", "7", "5"]
    assert rows["all"] == ["5", "17", "10", "9"]
    assert "DIFFERS  train ids: found 2, official 77" in proc.stdout
    assert "differences: 9" in proc.stdout


def load_check_tool():
    spec = importlib.util.spec_from_file_location(
        "check_dataset", os.path.join(REPO, "tools", "check_dataset.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_check_dataset_layout_error_exits_nonzero(tmp_path, capsys):
    tool = load_check_tool()  # in-process: a second interpreter would re-import torch (slow)
    assert tool.run(tool.main, ["prcc", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert os.path.join(str(tmp_path), "prcc") in err and "isee-ai.cn" in err
    assert tool.run(tool.main, ["ltcc", "--root", str(tmp_path), "--no_such_key", "1"]) == 2
    assert "no_such_key" in capsys.readouterr().err


def test_check_dataset_video_counts_tracklets(tmp_path, capsys):
    tree = build_ccvid(tmp_path)
    assert load_check_tool().main(["ccvid", "--root", tree.root]) == 0
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()}
    assert rows["train"] == ["2", "4", "4", "3"]  # tracklets, not training chunks
    assert rows["all"][:2] == ["4", "10"]


def test_check_dataset_says_it_generates_synthcc_when_the_tree_is_missing(tmp_path, capsys):
    tool = load_check_tool()
    args = ["synthcc", "--root", str(tmp_path), "--synthcc_preset", "tiny", "--synthcc_seed", "3"]
    assert tool.main(args) == 0
    out = capsys.readouterr().out
    tree = os.path.join(str(tmp_path), "synthcc", "tiny_seed3")
    notice = out.index("SynthCC is generated, not downloaded")
    assert f"no tree at '{tree}' yet, so it is generated now" in out
    assert notice < out.index("synthcc (SynthCC)")  # said before the report
    assert tool.main(args) == 0  # the tree exists now: checked, nothing said about generating
    assert "is generated, not downloaded" not in capsys.readouterr().out
