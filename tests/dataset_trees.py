"""Fake dataset trees in each data set's exact release layout, with tiny images.

Every builder writes the files by the data set's own naming rules and returns a :class:`Tree`
whose ``truth`` states, independently of the parsers, what each file means: raw pid, 0-based
camera id and clothes key. Roots deliberately sit under folders whose names contain ``_c`` and
``cloth`` (``my_cloth_c3``) so that a parser that reads folders instead of basenames fails.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from functools import cache

from PIL import Image

TRICKY_PARENT = "my_cloth_c3"


@dataclass(frozen=True)
class Truth:
    path: object  # str, or a tuple of frame paths for video
    pid: int
    camid: int  # 0-based camera (or tracklet, image) id, raw
    clothes: object  # clothes key: equal keys <-> equal clothes ids within one scope


@dataclass
class Tree:
    root: str  # what is passed as ``root=``
    dataset_dir: str
    truth: dict = field(default_factory=dict)  # split -> list[Truth]
    extra: dict = field(default_factory=dict)


@cache
def _image_bytes(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 8), (120, 60, 30)).save(buf, format=fmt)
    return buf.getvalue()


def write_image(path: str) -> str:
    """An 8x4 (h x w) image, PNG or JPEG by the extension."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fmt = "PNG" if path.lower().endswith(".png") else "JPEG"
    with open(path, "wb") as f:
        f.write(_image_bytes(fmt))
    return path


def _write_text(path: str, lines: list[str]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def _root(tmp_path: object) -> str:
    return os.path.join(str(tmp_path), TRICKY_PARENT)


# ---------------------------------------------------------------- LTCC
# (pid, outfit, camera 1-12, frame) per split; multi-digit pids, outfits and cameras
LTCC_SPEC = {
    "train": [
        (1, 1, 1, 10), (1, 1, 10, 11), (1, 2, 10, 12), (1, 2, 2, 13),
        (12, 1, 2, 20), (12, 1, 3, 21), (12, 1, 3, 22),
        (103, 1, 12, 17008), (103, 11, 4, 17009), (103, 11, 12, 17010),
    ],
    "query": [(7, 1, 1, 1), (45, 2, 11, 2), (150, 1, 5, 3)],
    "gallery": [
        (7, 1, 2, 4), (7, 2, 3, 5), (7, 2, 1, 6),
        (45, 1, 11, 7), (45, 2, 6, 8),
        (150, 1, 5, 9), (150, 1, 7, 10),
    ],
}  # fmt: skip
LTCC_CC_TRAIN_IDS = [1, 103]
LTCC_SC_TRAIN_IDS = [12]


def build_ltcc(tmp_path: object, dataset_dir: str = "LTCC_ReID") -> Tree:
    root = _root(tmp_path)
    ddir = os.path.join(root, dataset_dir)
    tree = Tree(root, ddir)
    folders = {"train": "train", "query": "query", "gallery": "test"}
    for split, entries in LTCC_SPEC.items():
        tree.truth[split] = []
        for pid, outfit, cam, frame in entries:
            name = f"{pid:03d}_{outfit}_c{cam}_{frame:06d}.png"
            path = write_image(os.path.join(ddir, folders[split], name))
            tree.truth[split].append(Truth(path, pid, cam - 1, (pid, outfit)))
    info = os.path.join(ddir, "info")
    _write_text(
        os.path.join(info, "cloth-change_id_train.txt"), [str(p) for p in LTCC_CC_TRAIN_IDS]
    )
    _write_text(
        os.path.join(info, "cloth-unchange_id_train.txt"), [str(p) for p in LTCC_SC_TRAIN_IDS]
    )
    _write_text(os.path.join(info, "cloth-change_id_test.txt"), ["7", "45"])
    _write_text(os.path.join(info, "cloth-unchange_id_test.txt"), ["150"])
    return tree


# ---------------------------------------------------------------- PRCC
# train/val: pid folder -> file names (first letter = camera); test: camera -> pid -> count
PRCC_TRAIN = {
    "001": ["A_cropped_rgb001.jpg", "A_cropped_rgb002.jpg", "B_cropped_rgb003.jpg",
            "C_cropped_rgb004.jpg"],
    "012": ["A_cropped_rgb001.jpg", "C_cropped_rgb010.jpg", "C_cropped_rgb011.jpg"],
    "150": ["B_cropped_rgb100.jpg", "B_cropped_rgb101.jpg"],
}  # fmt: skip
PRCC_VAL = {"020": ["A_cropped_rgb001.jpg", "C_cropped_rgb002.jpg"]}
PRCC_TEST = {
    "A": {"003": 2, "017": 1, "221": 2},
    "B": {"003": 1, "017": 2, "221": 1},
    "C": {"003": 2, "017": 1, "221": 1},
}


def build_prcc(tmp_path: object, sketch: bool = True) -> Tree:
    """PRCC ``rgb/`` (and a parallel ``sketch/``); truth of the chosen modality in ``extra``."""
    root = _root(tmp_path)
    ddir = os.path.join(root, "prcc")
    tree = Tree(root, ddir)
    test_pids = sorted({int(p) for cam in PRCC_TEST.values() for p in cam})
    label = {pid: i for i, pid in enumerate(test_pids)}
    for modality in ("rgb", "sketch") if sketch else ("rgb",):
        truth: dict = {"train": [], "query": [], "gallery": []}
        for split, spec in (("train", PRCC_TRAIN), ("val", PRCC_VAL)):
            for pid_dir, names in spec.items():
                for name in names:
                    path = write_image(os.path.join(ddir, modality, split, pid_dir, name))
                    pid, cam = int(pid_dir), "ABC".index(name[0])
                    clothes = (pid, "C") if name[0] == "C" else pid
                    if split == "train":
                        truth["train"].append(Truth(path, pid, cam, clothes))
        for cam_letter, pids in PRCC_TEST.items():
            for pid_dir, count in pids.items():
                for k in range(count):
                    # names repeat across pid folders in the test set
                    path = os.path.join(ddir, modality, "test", cam_letter, pid_dir)
                    path = write_image(os.path.join(path, f"cropped_rgb{k + 1:03d}.jpg"))
                    pid, cam = int(pid_dir), "ABC".index(cam_letter)
                    clothes_id = 2 * label[pid] + (cam_letter == "C")
                    split = "gallery" if cam_letter == "A" else "query"
                    truth[split].append(Truth(path, pid, cam, clothes_id))
        tree.extra[modality] = truth
    tree.truth = tree.extra["rgb"]
    return tree


# ---------------------------------------------------------------- VC-Clothes
# (pid, camera 1-4, outfit, counter, separator)
VC_SPEC = {
    "train": [
        (1, 1, 1, 1, "-"), (1, 2, 1, 2, "-"), (1, 3, 2, 3, "_"),
        (256, 4, 3, 14, "-"), (256, 1, 3, 15, "_"), (256, 2, 12, 16, "-"),
    ],
    "query": [
        (300, 1, 1, 1, "-"), (300, 2, 1, 2, "-"), (300, 3, 1, 3, "_"), (300, 4, 2, 4, "-"),
        (512, 2, 1, 1, "-"), (512, 3, 1, 2, "-"), (512, 4, 2, 3, "-"),
    ],
    "gallery": [
        (300, 1, 1, 10, "-"), (300, 2, 1, 11, "_"), (300, 3, 2, 12, "-"), (300, 4, 2, 13, "-"),
        (512, 1, 1, 10, "-"), (512, 2, 1, 11, "-"), (512, 3, 2, 12, "-"), (512, 4, 1, 13, "_"),
    ],
}  # fmt: skip
VC_VARIANT_CAMERAS = {"vcclothes": (1, 2, 3, 4), "vcclothes_sc": (2, 3), "vcclothes_cc": (3, 4)}


def build_vcclothes(tmp_path: object) -> Tree:
    root = _root(tmp_path)
    ddir = os.path.join(root, "VC-Clothes")
    tree = Tree(root, ddir)
    for split, entries in VC_SPEC.items():
        tree.truth[split] = []
        for pid, cam, outfit, counter, sep in entries:
            name = sep.join([f"{pid:04d}", f"{cam:02d}", f"{outfit:02d}", f"{counter:02d}"])
            path = write_image(os.path.join(ddir, split, name + ".jpg"))
            tree.truth[split].append(Truth(path, pid, cam - 1, (pid, outfit)))
    return tree


# ---------------------------------------------------------------- DeepChange
# folder -> (pid, camera, day, tracklet); x/y vary per image
DC_SPEC = {
    "train-set": [(1, 1, "20190501", None), (1, 17, "20190602", None), (23, 5, "20190501", None),
                  (23, 5, "20190501", None)],
    "val-set-query": [(400, 2, "20190701", 7)],
    "val-set-gallery": [(400, 3, "20190702", 8), (400, 2, "20190701", 9)],
    "test-set-query": [(1000, 3, "20200101", 101), (1121, 12, "20200105", 205)],
    "test-set-gallery": [(1000, 3, "20200101", 102), (1000, 3, "20200101", 101),
                         (1000, 4, "20200301", 103), (1121, 12, "20200105", 206),
                         (1121, 1, "20200105", 207)],
}  # fmt: skip


def build_deepchange(tmp_path: object) -> Tree:
    root = _root(tmp_path)
    ddir = os.path.join(root, "DeepChangeDataset")
    tree = Tree(root, ddir)
    for folder, entries in DC_SPEC.items():
        truth, lines = [], []
        for k, (pid, cam, day, tracklet) in enumerate(entries):
            name = f"P{pid:05d}_C{cam:02d}_{day}_{10 + k:02d}_{100 + k}_{200 + k}.jpg"
            path = write_image(os.path.join(ddir, folder, name))
            tracklet = 1000 + k if tracklet is None else tracklet
            lines.append(f"{name},{tracklet}")
            # train: camera; evaluation: the tracklet takes the camera's place
            camid = cam - 1 if folder == "train-set" else tracklet
            truth.append(Truth(path, pid, camid, (pid, day)))
        _write_text(os.path.join(ddir, f"{folder}-bbox.txt"), lines)
        tree.truth[folder] = truth
    return tree


# ---------------------------------------------------------------- LaST
# train: pid -> outfits of its images; query/gallery: pid -> number of images
LAST_TRAIN = {0: [0, 0, 1], 17: [3, 10], 4999: [0]}
LAST_EVAL = {
    "val": ({5000: 1, 5001: 1}, {5000: 2, 5001: 1, 5002: 1}),
    "test": ({6000: 2, 10175: 1}, {6000: 2, 10175: 2, 7777: 1}),
}


def build_last(tmp_path: object) -> Tree:
    root = _root(tmp_path)
    ddir = os.path.join(root, "last")
    tree = Tree(root, ddir)
    tree.truth["train"] = []
    for pid, outfits in LAST_TRAIN.items():
        for k, outfit in enumerate(outfits):
            name = f"{pid:06d}_{k:03d}_ts{k}_{outfit}.jpg"
            path = write_image(os.path.join(ddir, "train", f"{pid:06d}", name))
            tree.truth["train"].append(Truth(path, pid, -1, (pid, outfit)))
    for split, (query, gallery) in LAST_EVAL.items():
        for sub, spec in (("query", query), ("gallery", gallery)):
            truth = []
            for pid, count in spec.items():
                for k in range(count):
                    name = f"{pid:06d}_{k:03d}_{sub}_{k}.jpg"
                    folder = os.path.join(ddir, split, sub)
                    if sub == "gallery":
                        folder = os.path.join(folder, f"{pid:06d}")
                    path = write_image(os.path.join(folder, name))
                    truth.append(Truth(path, pid, -1, pid))  # camid: unique per image
            tree.truth[f"{split}-{sub}"] = truth
    return tree


# ---------------------------------------------------------------- Celeb-reID
# (pid, n, x); camera = first digit of n
CELEB_SPEC = {
    "train": [(1, 11, 0), (1, 25, 1), (1, 103, 2), (632, 9, 0)],
    "query": [(700, 12, 0), (1052, 31, 1)],
    "gallery": [(700, 22, 2), (700, 45, 3), (1052, 31, 4), (1052, 6, 0)],
}


def build_celebreid(tmp_path: object, dataset_dir: str = "Celeb-reID") -> Tree:
    root = _root(tmp_path)
    ddir = os.path.join(root, dataset_dir)
    tree = Tree(root, ddir)
    for split, entries in CELEB_SPEC.items():
        tree.truth[split] = []
        for pid, n, x in entries:
            path = write_image(os.path.join(ddir, split, f"{pid}_{n}_{x}.jpg"))
            tree.truth[split].append(Truth(path, pid, int(str(n)[0]), path))
    return tree


# ---------------------------------------------------------------- CCVID
# split -> (session, pid, walk, clothes label, number of frames)
CCVID_SPEC = {
    "train": [
        ("session1", 1, 1, "u1_l1", 12), ("session1", 1, 2, "u2_l1", 10),
        ("session3", 1, 1, "u1_l1", 9), ("session2", 25, 12, "u1_l1", 3),
    ],
    "query": [("session1", 101, 1, "u1_l1", 6), ("session3", 226, 2, "u3_l2", 3)],
    "gallery": [
        ("session1", 101, 2, "u1_l1", 9), ("session2", 101, 3, "u2_l2", 8),
        ("session3", 226, 1, "u3_l2", 10), ("session3", 226, 4, "u1_l1", 5),
    ],
}  # fmt: skip


def build_ccvid(tmp_path: object) -> Tree:
    root = _root(tmp_path)
    ddir = os.path.join(root, "CCVID")
    tree = Tree(root, ddir)
    for split, entries in CCVID_SPEC.items():
        lines, truth = [], []
        for session, pid, walk, clothes, frames in entries:
            rel = f"{session}/{pid:03d}_{walk:02d}"
            paths = tuple(
                write_image(os.path.join(ddir, session, f"{pid:03d}_{walk:02d}", f"{i:05d}.jpg"))
                for i in range(1, frames + 1)
            )
            lines.append(f"{rel} {pid:03d} {clothes}")
            camid = walk + (12 if session == "session3" else 0) - 1
            truth.append(Truth(paths, pid, camid, (pid, clothes)))
        _write_text(os.path.join(ddir, f"{split}.txt"), lines)
        tree.truth[split] = truth
    return tree


# ---------------------------------------------------------------- Market-1501 (torchreid's own)
def build_market1501(tmp_path: object, test_ids: tuple = (21, 23, 25)) -> Tree:
    """torchreid's Market-1501 layout (``market1501/Market-1501-v15.09.15/bounding_box_train``,
    ``query``, ``bounding_box_test``; names ``<pid>_c<cam>s1_<frame>_00.jpg``): 8 training ids,
    2 cameras each, 3 images per camera; ``test_ids`` with one query per camera and 2 gallery
    images per camera, plus a junk (-1) gallery image."""
    root = _root(tmp_path)
    base = os.path.join(root, "market1501", "Market-1501-v15.09.15")
    tree = Tree(root=root, dataset_dir=base, truth={"train": [], "query": [], "gallery": []})

    def add(split: str, folder: str, pid: int, cam: int, frame: int) -> None:
        name = f"{pid:04d}_c{cam}s1_{frame:06d}_00.jpg" if pid >= 0 else f"-1_c{cam}s1_{frame}.jpg"
        path = write_image(os.path.join(base, folder, name))
        if pid >= 0:
            tree.truth[split].append(Truth(path, pid, cam - 1, None))

    for pid in range(2, 18, 2):
        for cam in (1, 2):
            for frame in range(3):
                add("train", "bounding_box_train", pid, cam, 100 * cam + frame)
    for pid in test_ids:
        for cam in (1, 2):
            add("query", "query", pid, cam, 900 + cam)
            for frame in range(2):
                add("gallery", "bounding_box_test", pid, cam, 1000 * cam + frame)
    add("gallery", "bounding_box_test", -1, 1, 5)
    return tree
