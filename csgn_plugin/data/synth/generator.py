"""Writing a SynthCC tree in LTCC's layout, once, atomically.

Layout (as LTCC_ReID)::

    <root>/synthcc/<preset>_seed<seed>/
        train/  query/  test/          {pid:03d}_{outfit}_c{camera}_{frame:06d}.png
        info/cloth-change_id_train.txt  cloth-unchange_id_train.txt
             cloth-change_id_test.txt   cloth-unchange_id_test.txt    (one 3-digit pid a line)
        synthcc.json                    preset, seed, generator version, spec, counts

A tree is built in a hidden sibling folder and renamed into place when complete, under a lock
file, so a killed generation never leaves a folder that looks like a dataset, and two processes
asking at once generate it once. The same (preset, seed, generator version) gives byte-identical
files: every image has its own random stream, PNGs are written with fixed settings and no
metadata, and the manifest holds no time. Large trees (``PARALLEL_FROM`` images and more, such
as the LTCC-size preset) are rendered by one process per CPU; the files are the same.
"""

from __future__ import annotations

import json
import multiprocessing
import operator
import os
import time
from dataclasses import asdict

from ...errors import ConfigError, UserError
from ...progress import Progress, get_logger
from ..atomic_dir import ensure_built, finished_manifest
from .presets import get_preset
from .render import render_image
from .world import IMAGE, World, build_world, stream

#: bump when a change to the generator changes any file; older trees are then regenerated
GENERATOR_VERSION = 2
#: trees of this many images and more render in parallel processes
PARALLEL_FROM = 5000
MANIFEST = "synthcc.json"
SPLIT_DIRS = ("train", "query", "test")
INFO_FILES = (
    "cloth-change_id_train.txt",
    "cloth-unchange_id_train.txt",
    "cloth-change_id_test.txt",
    "cloth-unchange_id_test.txt",
)


class SynthCCError(UserError, RuntimeError):
    """A SynthCC folder that is not a complete tree of the requested preset and seed."""


def image_name(pid: int, outfit: int, camera: int, frame: int) -> str:
    """LTCC's file name: 3-digit pid, per-person outfit counter, 1-based camera, 6-digit frame."""
    return f"{pid:03d}_{outfit}_c{camera}_{frame:06d}.png"


def synthcc_dir(root: str, preset: str, seed: int) -> str:
    """Where :func:`ensure_synthcc` keeps the tree of (preset, seed)."""
    return os.path.abspath(
        os.path.join(os.path.expanduser(root), "synthcc", f"{preset}_seed{seed}")
    )


def check_seed(seed: int) -> int:
    """``seed`` as an int, or a clear error for anything but a non-negative integer."""
    try:
        value = operator.index(seed)
    except TypeError:
        value = -1
    if isinstance(seed, bool) or value < 0:
        raise ConfigError(
            f"SynthCC seed (cc_data.synthcc_seed) must be a non-negative integer, got {seed!r}"
        )
    return value


def _statistics(world: World) -> dict:
    """ids, images, cameras and outfits of each split, and the info lists' sizes."""
    splits: dict = {
        name: {"pids": set(), "images": 0, "cameras": set(), "outfits": set()}
        for name in ("train", "query", "gallery")
    }
    for t in world.tracklets:
        counts = (
            {"train": len(t.frames)}
            if t.split == "train"
            else {"query": 1, "gallery": len(t.frames) - 1}
        )
        for name, count in counts.items():
            split = splits[name]
            split["pids"].add(t.pid)
            split["images"] += count
            split["cameras"].add(t.camera)
            split["outfits"].add((t.pid, t.outfit))
    stats = {
        name: {
            "ids": len(s["pids"]),
            "images": s["images"],
            "cameras": len(s["cameras"]),
            "outfits": len(s["outfits"]),
        }
        for name, s in splits.items()
    }
    changing = _clothes_changing(world)
    for split, pids in (("train", world.train_pids), ("test", world.test_pids)):
        stats[f"clothes_changing_ids_{split}"] = sum(p in changing for p in pids)
        stats[f"same_clothes_ids_{split}"] = sum(p not in changing for p in pids)
    stats["shared_outfits"] = len(world.shared_outfits)
    stats["total_images"] = sum(len(t.frames) for t in world.tracklets)
    return stats


def _clothes_changing(world: World) -> set:
    counts: dict = {}
    for pid, _ in world.outfits:
        counts[pid] = counts.get(pid, 0) + 1
    return {pid for pid, count in counts.items() if count > 1}


def _write_info(world: World, info_dir: str) -> None:
    changing = _clothes_changing(world)
    lists = {
        "cloth-change_id_train.txt": [p for p in world.train_pids if p in changing],
        "cloth-unchange_id_train.txt": [p for p in world.train_pids if p not in changing],
        "cloth-change_id_test.txt": [p for p in world.test_pids if p in changing],
        "cloth-unchange_id_test.txt": [p for p in world.test_pids if p not in changing],
    }
    for name, pids in lists.items():
        with open(os.path.join(info_dir, name), "w", encoding="ascii", newline="\n") as f:
            f.writelines(f"{pid:03d}\n" for pid in sorted(pids))


def _write_tracklets(dataset_dir: str, world: World, indices: range) -> int:
    """Render and write the images of ``world.tracklets[indices]``; returns how many."""
    written = 0
    for t in world.tracklets[indices.start : indices.stop]:
        identity, outfit = world.identities[t.pid], world.outfits[(t.pid, t.outfit)]
        camera = world.cameras[t.camera]
        for frame in t.frames:
            rng = stream(world.seed, IMAGE, t.pid, t.outfit, t.camera, frame)
            img = render_image(identity, outfit, camera, rng, world.spec.image_size)
            folder = (
                "train" if t.split == "train" else ("query" if frame == t.query_frame else "test")
            )
            path = os.path.join(dataset_dir, folder, image_name(t.pid, t.outfit, t.camera, frame))
            img.save(path, format="PNG", compress_level=6, optimize=False)
            written += 1
    return written


def _write_task(task: tuple[str, World, range]) -> int:
    return _write_tracklets(*task)


def generate_synthcc(dataset_dir: str, preset: str, seed: int, workers: int | None = None) -> dict:
    """Write the tree of (preset, seed) into ``dataset_dir`` (absent or empty) and return its
    statistics plus ``seconds``. Not atomic on its own: use :func:`ensure_synthcc`.
    ``workers``: rendering processes (default: one per CPU for trees of ``PARALLEL_FROM``
    images and more, else this process alone)."""
    spec = get_preset(preset)
    seed = check_seed(seed)
    if os.path.isdir(dataset_dir) and os.listdir(dataset_dir):
        raise SynthCCError(f"cannot generate SynthCC into '{dataset_dir}': the folder is not empty")
    start = time.perf_counter()
    world = build_world(spec, seed)
    for name in (*SPLIT_DIRS, "info"):
        os.makedirs(os.path.join(dataset_dir, name), exist_ok=True)
    images = sum(len(t.frames) for t in world.tracklets)
    if workers is None:
        workers = (os.cpu_count() or 1) if images >= PARALLEL_FROM else 1
    step = 16  # tracklets per task
    chunks = [
        range(i, min(i + step, len(world.tracklets))) for i in range(0, len(world.tracklets), step)
    ]
    with Progress(images, f"SynthCC '{preset}'", "img") as progress:
        if workers <= 1:
            for chunk in chunks:
                progress.update(_write_tracklets(dataset_dir, world, chunk))
        else:
            # fork: the world is shared as it is; children render and write files only
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                tasks = [(dataset_dir, world, chunk) for chunk in chunks]
                for written in pool.imap_unordered(_write_task, tasks):
                    progress.update(written)
    _write_info(world, os.path.join(dataset_dir, "info"))
    stats = _statistics(world)
    manifest = {
        "dataset": "SynthCC",
        "layout": "LTCC_ReID",
        "generator_version": GENERATOR_VERSION,
        "preset": preset,
        "seed": seed,
        "spec": asdict(spec),
        "statistics": stats,
    }
    with open(os.path.join(dataset_dir, MANIFEST), "w", encoding="ascii", newline="\n") as f:
        f.write(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return {**stats, "seconds": time.perf_counter() - start}


def _check_complete(dataset_dir: str, manifest: dict) -> None:
    """Every folder holds the number of files the manifest promises."""
    try:
        stats = manifest["statistics"]
        expected = {
            "train": int(stats["train"]["images"]),
            "query": int(stats["query"]["images"]),
            "test": int(stats["gallery"]["images"]),
            "info": len(INFO_FILES),
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise SynthCCError(
            f"'{os.path.join(dataset_dir, MANIFEST)}' lacks the image counts ({exc!r}). Delete "
            f"'{dataset_dir}' to have it generated again."
        ) from exc
    for folder, count in expected.items():
        path = os.path.join(dataset_dir, folder)
        found = len(os.listdir(path)) if os.path.isdir(path) else 0
        if found != count:
            raise SynthCCError(
                f"SynthCC tree '{dataset_dir}' is damaged: '{path}' holds {found} files, its "
                f"{MANIFEST} says {count}. Delete '{dataset_dir}' to have it generated again."
            )


def _usable(dataset_dir: str, preset: str, seed: int) -> bool:
    """True for a complete tree of this generator version and of the preset's current spec;
    False when there is none, an older version or one made from another version of the preset's
    numbers (either may be replaced); an error for anything else at that path."""
    manifest = finished_manifest(dataset_dir, MANIFEST, "SynthCC", preset, seed, SynthCCError)
    if manifest is None:
        return False
    if manifest.get("generator_version") != GENERATOR_VERSION:
        return False
    if manifest.get("spec") != json.loads(json.dumps(asdict(get_preset(preset)))):
        return False  # the preset's numbers were changed since this tree was generated
    _check_complete(dataset_dir, manifest)
    return True


def ensure_synthcc(root: str, preset: str = "default", seed: int = 0) -> str:
    """The folder of the SynthCC tree (preset, seed) under ``root``, generated when missing.

    Returns ``<root>/synthcc/<preset>_seed<seed>`` (absolute), which holds ``train/ query/ test/
    info/`` in LTCC's layout. Safe against killed runs and concurrent callers (see module doc).
    """
    get_preset(preset)
    seed = check_seed(seed)
    dataset_dir = synthcc_dir(root, preset, seed)
    stats = ensure_built(
        dataset_dir,
        lambda: _usable(dataset_dir, preset, seed),
        lambda tmp: generate_synthcc(tmp, preset, seed),
        f"SynthCC (preset '{preset}' seed {seed})",
    )
    if stats is not None:
        get_logger().info(
            f"SynthCC: generated {stats['total_images']} images ({stats['train']['ids']} train "
            f"ids, {stats['query']['ids']} test ids) in {stats['seconds']:.1f} s"
        )
    return dataset_dir
