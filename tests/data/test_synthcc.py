"""SynthCC: LTCC layout and names, splits, determinism, atomic generation, identity cues, parsing.

Only the 'tiny' preset is generated here (8 train ids, 6 test ids, 4 cameras, 2-3 outfits per
clothes-changing id, 2-3 cameras per outfit, 2-3 images per (id, outfit, camera), 64x32 images).
"""

import hashlib
import json
import os
import re
from collections import Counter, defaultdict

import numpy as np
import pytest
from PIL import Image

from csgn_plugin.data.base import DatasetLayoutError
from csgn_plugin.data.datasets.synthcc import SynthCC
from csgn_plugin.data.synth import (
    PRESETS,
    IdentitySpec,
    OutfitSpec,
    SynthCCError,
    SynthSpec,
    build_world,
    ensure_synthcc,
    generate_synthcc,
    get_preset,
    image_name,
    synthcc_dir,
)
from csgn_plugin.data.synth import generator as generator_module
from csgn_plugin.data.synth.generator import _statistics
from csgn_plugin.data.synth.render import SUPERSAMPLE, Pose, paint_person
from csgn_plugin.data.synth.world import ACCESSORIES, BAGS, HAIR_STYLES, sample_camera

NAME = re.compile(r"^(\d+)_(\d+)_c(\d+)_(\d+)\.png$")
INFO = {
    ("train", True): "cloth-change_id_train.txt",
    ("train", False): "cloth-unchange_id_train.txt",
    ("test", True): "cloth-change_id_test.txt",
    ("test", False): "cloth-unchange_id_test.txt",
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthcc")
    return ensure_synthcc(str(root), "tiny", 0)


def parse_folder(dataset_dir, folder):
    """(pid, outfit, camera, frame) of every file, asserting LTCC's name on each."""
    keys = []
    for name in sorted(os.listdir(os.path.join(dataset_dir, folder))):
        m = NAME.match(name)
        assert m, f"{folder}/{name} does not follow LTCC's naming"
        assert len(m[1]) == 3 and len(m[4]) == 6, name
        keys.append(tuple(int(g) for g in m.groups()))
    return keys


def tree_digest(dataset_dir):
    """Relative path -> sha256 of every file in the tree."""
    digests = {}
    for folder, _, files in os.walk(dataset_dir):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                digests[os.path.relpath(path, dataset_dir)] = hashlib.sha256(f.read()).hexdigest()
    return digests


def test_image_name_is_ltccs():
    assert image_name(103, 1, 9, 17008) == "103_1_c9_017008.png"
    assert image_name(7, 2, 1, 5) == "007_2_c1_000005.png"


def test_tree_has_ltccs_folders_and_only_ltcc_names(tiny):
    assert tiny == synthcc_dir(os.path.dirname(os.path.dirname(tiny)), "tiny", 0)
    assert os.path.basename(tiny) == "tiny_seed0"
    assert sorted(os.listdir(tiny)) == ["info", "query", "synthcc.json", "test", "train"]
    assert sorted(os.listdir(os.path.join(tiny, "info"))) == sorted(INFO.values())
    for folder in ("train", "query", "test"):
        keys = parse_folder(tiny, folder)
        assert keys
        assert all(1 <= cam <= 4 for _, _, cam, _ in keys)  # 1-based, 4 cameras
        with Image.open(os.path.join(tiny, folder, image_name(*keys[0]))) as img:
            assert img.format == "PNG" and img.mode == "RGB" and img.size == (32, 64)
            assert np.asarray(img).std() > 5  # a picture, not a flat fill


def test_train_and_test_identities_are_disjoint_and_sized(tiny):
    train = {k[0] for k in parse_folder(tiny, "train")}
    query = {k[0] for k in parse_folder(tiny, "query")}
    gallery = {k[0] for k in parse_folder(tiny, "test")}
    assert len(train) == 8 and len(gallery) == 6
    assert query == gallery
    assert not train & gallery
    assert train | gallery == set(range(14))


def test_outfits_cameras_and_images_follow_the_tiny_spec(tiny):
    for split, folders in (("train", ("train",)), ("test", ("query", "test"))):
        per_tracklet = Counter(k[:3] for f in folders for k in parse_folder(tiny, f))
        outfits = defaultdict(set)
        cameras = defaultdict(set)
        for pid, outfit, cam in per_tracklet:
            outfits[pid].add(outfit)
            cameras[(pid, outfit)].add(cam)
        # the outfit counter restarts per person: 1..k with k = 1 or 2-3
        assert all(o == set(range(1, len(o) + 1)) and len(o) <= 3 for o in outfits.values())
        # 25 % same-clothes ids: round(0.25 * 8) = 2 train, round(0.25 * 6) = 2 test
        assert sum(len(o) == 1 for o in outfits.values()) == 2
        assert all(2 <= len(c) <= 3 for c in cameras.values())
        assert all(2 <= n <= 3 for n in per_tracklet.values()), split


def test_one_query_per_person_outfit_camera(tiny):
    query = Counter(k[:3] for k in parse_folder(tiny, "query"))
    gallery = Counter(k[:3] for k in parse_folder(tiny, "test"))
    assert set(query.values()) == {1}
    # 2-3 images per tracklet: the rest of each queried tracklet stays in the gallery
    assert set(query) == set(gallery)
    assert not {image_name(*k) for k in parse_folder(tiny, "query")} & {
        image_name(*k) for k in parse_folder(tiny, "test")
    }


def test_info_lists_match_the_outfits_in_the_files(tiny):
    for split, folders in (("train", ("train",)), ("test", ("query", "test"))):
        outfits = defaultdict(set)
        for f in folders:
            for pid, outfit, _, _ in parse_folder(tiny, f):
                outfits[pid].add(outfit)
        for changing in (True, False):
            with open(os.path.join(tiny, "info", INFO[(split, changing)])) as f:
                lines = f.read().splitlines()
            assert all(re.fullmatch(r"\d{3}", line) for line in lines), lines
            expected = sorted(p for p, o in outfits.items() if (len(o) > 1) == changing)
            assert [int(line) for line in lines] == expected


def test_manifest_is_deterministic_and_counts_the_files(tiny):
    with open(os.path.join(tiny, "synthcc.json")) as f:
        manifest = json.load(f)
    assert manifest["preset"] == "tiny" and manifest["seed"] == 0
    assert manifest["spec"]["image_size"] == [64, 32]
    stats = manifest["statistics"]
    for split, folder in (("train", "train"), ("query", "query"), ("gallery", "test")):
        keys = parse_folder(tiny, folder)
        assert stats[split]["images"] == len(keys)
        assert stats[split]["ids"] == len({k[0] for k in keys})
        assert stats[split]["outfits"] == len({k[:2] for k in keys})
    assert "time" not in json.dumps(manifest).lower()


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path, tiny):
    again = ensure_synthcc(str(tmp_path / "a"), "tiny", 0)
    reference = tree_digest(tiny)
    assert tree_digest(again) == reference
    other = tree_digest(ensure_synthcc(str(tmp_path / "b"), "tiny", 1))
    shared_names = set(other) & set(reference)
    assert sum(other[n] == reference[n] for n in shared_names if n.endswith(".png")) == 0
    assert other != reference


def test_parallel_rendering_writes_the_same_files(tmp_path, tiny):
    generate_synthcc(str(tmp_path / "parallel"), "tiny", 0, workers=2)
    files = {k: v for k, v in tree_digest(tiny).items() if k.endswith(".png")}
    assert {k: v for k, v in tree_digest(tmp_path / "parallel").items() if k in files} == files


def test_ltcc_preset_has_ltccs_proportions():
    stats = _statistics(build_world(get_preset("ltcc"), 0))
    assert stats["train"]["ids"] == 80 and 9300 <= stats["train"]["images"] <= 9700
    assert 480 <= stats["query"]["images"] <= 510  # LTCC: 493 query, 7,050 gallery
    assert 6900 <= stats["gallery"]["images"] <= 7300


def test_a_leftover_temporary_folder_is_no_dataset_and_is_cleaned(tmp_path):
    parent = tmp_path / "synthcc"
    leftover = parent / ".tiny_seed0.tmp-999999" / "train"
    leftover.mkdir(parents=True)
    (leftover / "000_1_c1_000001.png").write_bytes(b"half written")
    dataset_dir = ensure_synthcc(str(tmp_path), "tiny", 0)
    assert not (parent / ".tiny_seed0.tmp-999999").exists()
    assert [e for e in os.listdir(parent) if ".tmp-" in e] == []
    assert len(os.listdir(os.path.join(dataset_dir, "train"))) > 0


def test_a_killed_generation_leaves_no_dataset(tmp_path, monkeypatch):
    real_render = generator_module.render_image
    calls = []

    def render_then_die(*args):
        calls.append(1)
        if len(calls) > 10:
            raise KeyboardInterrupt  # as if the run were stopped mid-way
        return real_render(*args)

    monkeypatch.setattr(generator_module, "render_image", render_then_die)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthcc(str(tmp_path), "tiny", 0)
    parent = tmp_path / "synthcc"
    assert not (parent / "tiny_seed0").exists()
    assert [e for e in os.listdir(parent) if ".tmp-" in e] == []
    monkeypatch.setattr(generator_module, "render_image", real_render)
    assert os.path.isfile(os.path.join(ensure_synthcc(str(tmp_path), "tiny", 0), "synthcc.json"))


def test_an_existing_tree_is_reused_not_regenerated(tiny, monkeypatch):
    def fail(*args):
        raise AssertionError("generated again")

    monkeypatch.setattr(generator_module, "generate_synthcc", fail)
    assert ensure_synthcc(os.path.dirname(os.path.dirname(tiny)), "tiny", 0) == tiny


def test_a_tree_of_another_generator_version_is_regenerated(tmp_path, tiny):
    dataset_dir = ensure_synthcc(str(tmp_path), "tiny", 0)
    manifest_path = os.path.join(dataset_dir, "synthcc.json")
    with open(manifest_path) as f:
        manifest = json.load(f)
    manifest["generator_version"] = 0
    with open(manifest_path, "w") as f:
        json.dump(manifest, f)
    os.remove(os.path.join(dataset_dir, "info", "cloth-change_id_test.txt"))
    assert ensure_synthcc(str(tmp_path), "tiny", 0) == dataset_dir
    assert tree_digest(dataset_dir) == tree_digest(tiny)


def test_a_tree_of_other_preset_numbers_is_regenerated(tmp_path, tiny):
    dataset_dir = ensure_synthcc(str(tmp_path), "tiny", 0)
    manifest_path = os.path.join(dataset_dir, "synthcc.json")
    with open(manifest_path) as f:
        manifest = json.load(f)
    manifest["spec"]["num_train_ids"] += 1  # as if the preset had been edited since
    with open(manifest_path, "w") as f:
        json.dump(manifest, f)
    assert ensure_synthcc(str(tmp_path), "tiny", 0) == dataset_dir
    assert tree_digest(dataset_dir) == tree_digest(tiny)


def test_foreign_or_damaged_folders_are_refused(tmp_path):
    foreign = tmp_path / "synthcc" / "tiny_seed0" / "train"
    foreign.mkdir(parents=True)
    with pytest.raises(SynthCCError, match="no valid synthcc.json"):
        ensure_synthcc(str(tmp_path), "tiny", 0)

    root = tmp_path / "damaged"
    dataset_dir = ensure_synthcc(str(root), "tiny", 0)
    victim = sorted(os.listdir(os.path.join(dataset_dir, "test")))[0]
    os.remove(os.path.join(dataset_dir, "test", victim))
    with pytest.raises(SynthCCError, match="damaged"):
        ensure_synthcc(str(root), "tiny", 0)


def test_bad_presets_seeds_and_specs_are_named():
    listed = "unknown SynthCC preset 'huge'.*default, hard, ltcc, tiny"
    with pytest.raises(ValueError, match=listed):
        get_preset("huge")
    with pytest.raises(ValueError, match="synthcc_seed"):
        ensure_synthcc("/nonexistent", "tiny", -1)
    with pytest.raises(ValueError, match="SynthSpec.cameras_per_outfit"):
        SynthSpec(**{**vars(PRESETS["tiny"]), "cameras_per_outfit": (2, 9)})
    with pytest.raises(ValueError, match="SynthSpec.images_per_camera"):
        SynthSpec(**{**vars(PRESETS["tiny"]), "images_per_camera": (1, 3)})


def test_generate_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "x").write_text("x")
    with pytest.raises(SynthCCError, match="not empty"):
        generate_synthcc(str(tmp_path), "tiny", 0)


def test_hard_shares_most_outfits_and_keeps_defaults_people():
    default, hard = build_world(PRESETS["default"], 0), build_world(PRESETS["hard"], 0)
    assert len(hard.shared_outfits) > 0.75 * len(hard.outfits)
    assert len(default.shared_outfits) < 0.5 * len(default.outfits)
    # pooled outfits are worn by several people: fewer distinct outfits than (pid, outfit) pairs
    pool = hard.spec.shared_outfit_pool
    assert len(set(hard.outfits.values())) <= pool + len(hard.outfits) - len(hard.shared_outfits)
    assert hard.identities == default.identities and hard.tracklets == default.tracklets


@pytest.mark.parametrize("preset", ["default", "hard"])
def test_every_clothes_changing_query_has_a_cc_match_and_only_those(preset):
    """Under CC, a query needs a gallery image of its person in another outfit on another
    camera: every query of a clothes-changing test id has one (each outfit is seen by at least
    two cameras), and the same-clothes ids' queries are the ones skipped."""
    world = build_world(PRESETS[preset], 0)
    test = [t for t in world.tracklets if t.split == "test"]
    gallery = {(t.pid, t.outfit, t.camera) for t in test if len(t.frames) > 1}
    changing = {pid for pid, outfit in world.outfits if outfit > 1}
    for t in test:
        matches = [k for k in gallery if k[0] == t.pid and k[1] != t.outfit and k[2] != t.camera]
        assert bool(matches) == (t.pid in changing), t
    spec = world.spec
    num_same = round(spec.same_clothes_fraction * spec.num_test_ids)
    assert len({t.pid for t in test} - changing) == num_same


def test_identity_cues_cover_every_option():
    """Across many people every hair style, bag and head accessory occurs, hair is sometimes
    dyed (a saturated colour) and bags and head accessories come in many colours."""
    world = build_world(PRESETS["default"], 0)
    people = list(world.identities.values())
    assert {p.hair_style for p in people} == set(HAIR_STYLES)
    assert {p.bag for p in people} == set(BAGS)
    assert {p.accessory for p in people} == set(ACCESSORIES)
    assert any(max(p.hair) - min(p.hair) > 0.4 for p in people)
    assert len({p.bag_colour for p in people}) == len(people)


IDENTITY = IdentitySpec(
    pid=0,
    shoulder=0.13,
    hip=0.1,
    head=0.07,
    leg=0.48,
    skin=(0.8, 0.6, 0.5),
    hair=(0.1, 0.05, 0.02),
    hair_style="short",
    bag="none",
    bag_colour=(0.9, 0.6, 0.0),
    accessory="glasses",
    accessory_colour=(0.0, 0.8, 0.0),
    stride=0.2,
    arm_swing=0.2,
    lean=0.0,
)


def outfit(top, long_sleeves):
    return OutfitSpec(
        top=top,
        top_pattern="solid",
        top_pattern_colour=(1.0, 1.0, 1.0),
        pattern_period=0.05,
        long_sleeves=long_sleeves,
        bottom=(0.1, 0.1, 0.4),
        bottom_style="trousers",
        bottom_checked=False,
        shoes=(0.0, 0.0, 0.0),
    )


def test_a_change_of_clothes_keeps_head_and_face_and_changes_the_torso():
    size = (128, 64)
    canvas = (size[0] * SUPERSAMPLE, size[1] * SUPERSAMPLE)
    pose = Pose(phase=0.3, height=220.0, centre_x=64.0, feet_y=240.0)
    camera = sample_camera(0, 1)
    red, _ = paint_person(IDENTITY, outfit((0.9, 0.1, 0.1), True), camera, pose, canvas)
    blue, _ = paint_person(IDENTITY, outfit((0.1, 0.1, 0.9), False), camera, pose, canvas)
    # head centre at 20 + 0.07 * 220 = 35.4 canvas px; shoulders at 20 + 2 * 15.4 + 6.6 = 57.4
    head_rows = slice(0, int(57.4 / SUPERSAMPLE) - 1)
    np.testing.assert_array_equal(red[head_rows], blue[head_rows])
    # below the eyes, on the body's axis (shading within 0.3 % of 1), the face shows the skin
    mouth = (int((35.4 + 0.5 * 15.4) / SUPERSAMPLE), 32)
    np.testing.assert_allclose(red[mouth], IDENTITY.skin, atol=0.005)
    chest = (int(90 / SUPERSAMPLE), 32)
    np.testing.assert_allclose(red[chest], (0.9, 0.1, 0.1), atol=0.005)
    np.testing.assert_allclose(blue[chest], (0.1, 0.1, 0.9), atol=0.005)


def test_identity_traits_are_one_spec_per_person_whatever_the_outfit():
    world = build_world(PRESETS["tiny"], 0)
    changing = {pid for pid, o in world.outfits if o > 1}
    assert changing
    for pid in changing:
        person = [t for t in world.tracklets if t.pid == pid]
        assert len({t.outfit for t in person}) > 1
        assert world.identities[pid].pid == pid
    # identities depend on (seed, pid) only, not on the preset's size
    assert build_world(PRESETS["default"], 0).identities[3] == world.identities[3]


def test_synthcc_parses_the_tiny_tree_like_ltcc(tiny):
    root = os.path.dirname(os.path.dirname(tiny))
    dataset = SynthCC(
        root=root,
        synthcc_preset="tiny",
        synthcc_seed=0,
        name_policy="fail",
        image_policy="fail",
        mode="train",
        verbose=False,
    )
    train = parse_folder(tiny, "train")
    query = parse_folder(tiny, "query")
    gallery = parse_folder(tiny, "test")
    assert len(dataset.train) == len(train) and dataset.num_train_pids == 8
    assert len(dataset.query) == len(query) and len(dataset.gallery) == len(gallery)
    assert {item[1] for item in dataset.train} == set(range(8))  # relabelled
    assert {item[1] for item in dataset.query} == {k[0] for k in query}  # raw pids
    assert {item[2] for item in dataset.gallery} <= {0, 1, 2, 3}  # 0-based cameras
    assert dataset.num_train_clothes == len({k[:2] for k in train})
    assert len({item[4] for item in (*dataset.query, *dataset.gallery)}) == len(
        {k[:2] for k in gallery}
    )
    sample = dataset[0]
    assert sample["img"].size == (32, 64) and "clothes_id" in sample

    cc_only = SynthCC(root=root, synthcc_preset="tiny", ltcc_train_ids="cc", verbose=False)
    with open(os.path.join(tiny, "info", "cloth-change_id_train.txt")) as f:
        assert cc_only.num_train_pids == len(f.read().split()) == 6


def test_synthcc_reports_bad_options_and_foreign_folders(tmp_path):
    with pytest.raises(ValueError, match="synthcc_preset"):
        SynthCC(root=str(tmp_path), synthcc_preset="huge", verbose=False)
    (tmp_path / "synthcc" / "tiny_seed0").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match="SynthCC: .*no valid synthcc.json"):
        SynthCC(root=str(tmp_path), synthcc_preset="tiny", verbose=False)
