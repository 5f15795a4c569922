"""SynthCLIP weights cached under the data root, one entry per corpus and training settings.

``ensure_synthclip(root, tower)`` returns a weight file, pretraining it on first use::

    <root>/synthclip/<tower>_<corpus>_seed<corpus_seed>_<key>/
        openai.pt       flat state dict, OpenAI's key names   (clip.vit_weights / resnet_weights)
        open_clip.pt    {"state_dict": ..., "name", "model_cfg", "steps"}
        synthclip.json  settings, architecture, corpus, loss summary, wall time

``key`` hashes everything that decides the weights: the settings, the architecture's config, the
corpus's version and spec (and SynthCC's renderer version), the training code's version. A
changed setting gets a new entry; a complete entry is reused at once. Training runs in
``.<entry>.partial/`` (holding the resumable ``progress.pt``) under the entry's lock and is
renamed into place when the files are written, so a killed run resumes where its last
checkpoint left it the next time anyone asks.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import time
from dataclasses import asdict, replace
from typing import Any, Callable, Optional

from ..data.atomic_dir import exclusive_lock, lock_path
from ..data.synth.corpus import CORPUS_VERSION, ensure_corpus, get_corpus_spec, load_corpus
from ..data.synth.generator import GENERATOR_VERSION
from ..errors import UserError
from ..fileio import atomic_save, atomic_write_text
from ..progress import get_logger
from .towers import TOWER_ARCHS, arch_config, check_tower, export_state_dict
from .train import TRAINING_VERSION, PretrainSettings, pretrain

MANIFEST = "synthclip.json"
FORMATS = {"openai": "openai.pt", "open_clip": "open_clip.pt"}


class SynthCLIPError(UserError, RuntimeError):
    """A SynthCLIP cache folder that is not a complete entry of the requested settings."""


#: steps per tower: the ResNet is slower per image on a CPU; both end in about the same time
DEFAULT_STEPS = {"vit": 1600, "rn": 1000}


def default_settings(tower: str, **overrides: Any) -> PretrainSettings:
    """The settings the project pretrains ``tower`` with, ``overrides`` applied."""
    check_tower(tower)
    return replace(PretrainSettings(tower=tower, steps=DEFAULT_STEPS[tower]), **overrides)


def cache_identity(settings: PretrainSettings) -> dict:
    """Everything that decides the weights of ``settings`` (hashed into the entry's key)."""
    return {
        "training_version": TRAINING_VERSION,
        "settings": settings.to_dict(),
        "arch": TOWER_ARCHS[settings.tower],
        "arch_config": arch_config(settings.tower),
        "corpus_version": CORPUS_VERSION,
        "synthcc_generator_version": GENERATOR_VERSION,
        "corpus_spec": json.loads(json.dumps(asdict(get_corpus_spec(settings.corpus)))),
    }


def synthclip_dir(root: str, settings: PretrainSettings) -> str:
    """The cache entry of ``settings`` under ``root``."""
    blob = json.dumps(cache_identity(settings), sort_keys=True).encode()
    key = hashlib.sha256(blob).hexdigest()[:12]
    name = f"{settings.tower}_{settings.corpus}_seed{settings.corpus_seed}_{key}"
    return os.path.abspath(os.path.join(os.path.expanduser(root), "synthclip", name))


def _complete(entry: str, settings: PretrainSettings) -> bool:
    if not os.path.exists(entry):
        return False
    try:
        with open(os.path.join(entry, MANIFEST), encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError) as exc:
        raise SynthCLIPError(
            f"'{entry}' holds no readable {MANIFEST} ({exc}); entries are renamed into place "
            "complete, so this folder was made otherwise. Delete it to have it pretrained again."
        ) from exc
    if manifest.get("identity") != cache_identity(settings):
        raise SynthCLIPError(
            f"'{entry}/{MANIFEST}' describes other settings than the ones its name hashes: the "
            "folder was renamed or copied. Delete it to have it pretrained again."
        )
    missing = [f for f in FORMATS.values() if not os.path.isfile(os.path.join(entry, f))]
    if missing:
        raise SynthCLIPError(
            f"SynthCLIP entry '{entry}' lacks {missing}. Delete it to have it pretrained again."
        )
    return True


def _write_entry(
    partial: str, settings: PretrainSettings, corpus_manifest: dict, result: Any, wall: float
) -> None:
    image_size = tuple(corpus_manifest["spec"]["image_size"])
    state = export_state_dict(result.model, settings.tower, image_size)
    arch = TOWER_ARCHS[settings.tower]
    atomic_save(state, os.path.join(partial, FORMATS["openai"]))
    atomic_save(
        {
            "state_dict": state,
            "name": f"synthclip-{settings.tower}",
            "model_cfg": arch_config(settings.tower),
            "steps": settings.steps,
        },
        os.path.join(partial, FORMATS["open_clip"]),
    )
    manifest = {
        "identity": cache_identity(settings),
        "arch": arch,
        "pretraining_image_size": list(image_size),
        "activation": "quick_gelu (the architecture names it: clip.quick_gelu auto picks it)",
        "corpus": {
            "preset": settings.corpus,
            "seed": settings.corpus_seed,
            "counts": corpus_manifest["counts"],
        },
        "training": {**result.summary(), "steps": settings.steps, "wall_seconds": round(wall, 1)},
        "threads": 1,
    }
    atomic_write_text(os.path.join(partial, MANIFEST), json.dumps(manifest, indent=2) + "\n")
    os.remove(os.path.join(partial, "progress.pt"))


def ensure_synthclip(
    root: str,
    tower: str,
    settings: Optional[PretrainSettings] = None,
    fmt: str = "openai",
    workers: Optional[int] = None,
    progress_bar: Optional[bool] = None,
    log: Optional[Callable[[str], None]] = None,
    checkpoint_every: int = 100,
) -> str:
    """The SynthCLIP weight file of ``tower`` ('vit' or 'rn') under ``root``, pretrained (and
    the corpus generated) when missing.

    ``settings``: default :func:`default_settings` (tower); ``fmt``: ``'openai'`` (flat state
    dict) or ``'open_clip'`` (``{"state_dict": ...}``), both loading with ``clip.quick_gelu
    auto``; ``workers``: corpus generation processes; ``checkpoint_every``: steps between two
    saves of the resumable progress.
    """
    log = log or get_logger().info
    if fmt not in FORMATS:
        raise ValueError(f"SynthCLIP format must be one of {sorted(FORMATS)}, got '{fmt}'")
    settings = settings or default_settings(tower)
    if settings.tower != tower:
        raise ValueError(f"settings are for tower '{settings.tower}', asked for '{tower}'")
    entry = synthclip_dir(root, settings)
    target = os.path.join(entry, FORMATS[fmt])
    if _complete(entry, settings):
        return target
    with exclusive_lock(lock_path(entry)):
        if _complete(entry, settings):  # another process finished it while we waited
            return target
        corpus = load_corpus(ensure_corpus(root, settings.corpus, settings.corpus_seed, workers))
        parent, name = os.path.split(entry)
        partial = os.path.join(parent, f".{name}.partial")
        log(f"SynthCLIP {tower}: pretraining into '{entry}' ({settings.steps} steps) ...")
        start = time.perf_counter()
        result = pretrain(
            corpus,
            settings,
            partial,
            checkpoint_every=checkpoint_every,
            progress_bar=progress_bar,
            log=log,
        )
        _write_entry(partial, settings, corpus.manifest, result, time.perf_counter() - start)
        os.replace(partial, entry)
    log(f"SynthCLIP {tower}: ready in '{entry}'")
    return target


def _ensure_in_child(root: str, tower: str, settings: dict, checkpoint_every: int) -> str:
    """:func:`ensure_synthclip` in a worker process (settings as a plain dict); no bar."""
    return ensure_synthclip(
        root,
        tower,
        PretrainSettings.from_dict(settings),
        progress_bar=False,
        checkpoint_every=checkpoint_every,
    )


def ensure_synthclip_towers(
    root: str,
    towers: tuple[str, ...] = ("vit", "rn"),
    settings: Optional[dict[str, PretrainSettings]] = None,
    parallel: bool = True,
    workers: Optional[int] = None,
    log: Optional[Callable[[str], None]] = None,
    checkpoint_every: int = 100,
) -> dict[str, str]:
    """:func:`ensure_synthclip` for several towers: ``{tower: openai-format weight file}``.

    The corpora are generated first; towers still to pretrain then train side by side, one
    single-threaded process each (``parallel``), or one after the other. ``settings``: per tower,
    default :func:`default_settings`.
    """
    log = log or get_logger().info
    chosen = {tower: (settings or {}).get(tower) or default_settings(tower) for tower in towers}
    for s in chosen.values():
        ensure_corpus(root, s.corpus, s.corpus_seed, workers)
    pending = [t for t in towers if not _complete(synthclip_dir(root, chosen[t]), chosen[t])]
    paths = {}
    if parallel and len(pending) > 1:
        log(f"SynthCLIP: pretraining {', '.join(pending)} side by side, one process each")
        context = multiprocessing.get_context("spawn")  # a fresh torch in each: no forked threads
        with context.Pool(len(pending)) as pool:
            jobs = [(root, t, chosen[t].to_dict(), checkpoint_every) for t in pending]
            paths.update(zip(pending, pool.starmap(_ensure_in_child, jobs)))
    for tower in towers:
        if tower not in paths:
            paths[tower] = ensure_synthclip(
                root,
                tower,
                chosen[tower],
                workers=workers,
                log=log,
                checkpoint_every=checkpoint_every,
            )
    return paths
