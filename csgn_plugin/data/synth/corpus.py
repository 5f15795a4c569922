"""The captioned corpus: SynthCC-world people, each image with a caption, to pretrain a CLIP on.

``ensure_corpus(root, preset, seed)`` returns the folder of a corpus (generated on first use)::

    <root>/synthclip_corpus/<preset>_seed<seed>/
        images.npy      uint8 (N, H, W, 3), RGB
        samples.json    per image: caption, person, outfit, camera, split, attributes
        corpus.json     version, preset, seed, spec, counts, how often captions mention what

The people, outfits and cameras are drawn like SynthCC's (the same samplers, so the corpus shows
the colours, garments and scenes the ReID data has) but from the corpus's own stream kinds
(``world.CORPUS_*``), so none of them is a SynthCC identity, outfit or camera. Image ``i`` is
person ``i // (outfits * images)``, outfit and view by the remainder; each image has its own
stream for its camera, its rendering and its caption, so the corpus is the same whatever order or
number of processes renders it. The last ``heldout_people`` people form the held-out split (their
outfits are never trained on), on which the probes measure.

Generation follows SynthCC's crash-safety: built in a hidden sibling under a lock, renamed when
complete (``atomic_dir``). Captions need open_clip's tokenizer to keep within the text context.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

from ...errors import ConfigError, UserError
from ...progress import get_logger
from ..atomic_dir import ensure_built, finished_manifest, read_manifest
from .captions import (
    COLOUR_NAMES,
    MAX_TOKENS,
    Attributes,
    Caption,
    caption_tokens,
    describe,
    write_caption,
)
from .generator import GENERATOR_VERSION
from .render import render_image_with_parts
from .world import (
    CORPUS_CAMERA,
    CORPUS_CAPTION,
    CORPUS_IMAGE,
    CORPUS_OUTFIT,
    CORPUS_PERSON,
    CORPUS_VIEW,
    camera_from,
    identity_from,
    sample_outfit,
    stream,
)

#: bump when a change to the corpus or the captions changes any file (a change to SynthCC's
#: renderer bumps its GENERATOR_VERSION, which the corpus's manifest records and checks too)
CORPUS_VERSION = 1
MANIFEST = "corpus.json"
CORPUS_DATASET = "SynthCLIP corpus"  # the manifest's "dataset" value
IMAGES = "images.npy"
SAMPLES = "samples.json"


class CorpusError(UserError, RuntimeError):
    """A corpus folder that is not a complete corpus of the requested preset and seed."""


@dataclass(frozen=True)
class CorpusSpec:
    """The shape of one captioned corpus."""

    num_people: int
    outfits_per_person: int
    images_per_outfit: int
    num_cameras: int
    #: the last people, whose images are held out of pretraining (probes measure on them)
    heldout_people: int
    #: (height, width) of every image
    image_size: tuple[int, int]

    def __post_init__(self) -> None:
        for field in ("num_people", "outfits_per_person", "images_per_outfit", "num_cameras"):
            if getattr(self, field) < 1:
                raise ValueError(f"CorpusSpec.{field} = {getattr(self, field)!r}: expected >= 1")
        if not 0 <= self.heldout_people < self.num_people:
            raise ValueError(
                f"CorpusSpec.heldout_people = {self.heldout_people}: expected 0 <= heldout_people "
                f"< num_people = {self.num_people}"
            )
        height, width = self.image_size
        if height < 32 or width < 16:
            raise ValueError(f"CorpusSpec.image_size = {self.image_size}: expected >= (32, 16)")

    @property
    def images_per_person(self) -> int:
        return self.outfits_per_person * self.images_per_outfit

    @property
    def num_images(self) -> int:
        return self.num_people * self.images_per_person


CORPUS_PRESETS: dict[str, CorpusSpec] = {
    # unit tests: 48 images, generated in well under a second
    "tiny": CorpusSpec(12, 2, 2, 4, 3, (128, 64)),
    # pretraining on a 2-core CPU: 12,000 images (1,000 held out), SynthCC default's image size
    "default": CorpusSpec(1500, 2, 4, 24, 125, (128, 64)),
}


def get_corpus_spec(preset: str) -> CorpusSpec:
    """The spec of a named corpus preset, or one clear error listing the names."""
    if preset not in CORPUS_PRESETS:
        raise ConfigError(
            f"unknown captioned-corpus preset '{preset}': expected one of "
            f"{', '.join(sorted(CORPUS_PRESETS))}"
        )
    return CORPUS_PRESETS[preset]


def corpus_dir(root: str, preset: str, seed: int) -> str:
    """Where :func:`ensure_corpus` keeps the corpus of (preset, seed)."""
    return os.path.abspath(
        os.path.join(os.path.expanduser(root), "synthclip_corpus", f"{preset}_seed{seed}")
    )


def sample_keys(spec: CorpusSpec, index: int) -> tuple[int, int, int]:
    """(person, outfit, view) of image ``index``."""
    person, rest = divmod(index, spec.images_per_person)
    outfit, view = divmod(rest, spec.images_per_outfit)
    return person, outfit, view


def render_sample(
    spec: CorpusSpec, seed: int, index: int
) -> tuple[np.ndarray, np.ndarray, Attributes, Caption, int]:
    """Image ``index`` of the corpus (spec, seed): ``(image uint8 (H, W, 3), part map,
    attributes, caption, camera)``, exactly as the corpus stores it."""
    person, outfit_no, view = sample_keys(spec, index)
    identity = identity_from(stream(seed, CORPUS_PERSON, person), person)
    outfit = sample_outfit(stream(seed, CORPUS_OUTFIT, person, outfit_no))
    camera_no = int(stream(seed, CORPUS_VIEW, person, outfit_no, view).integers(spec.num_cameras))
    camera = camera_from(stream(seed, CORPUS_CAMERA, camera_no), camera_no + 1)
    image, parts = render_image_with_parts(
        identity,
        outfit,
        camera,
        stream(seed, CORPUS_IMAGE, person, outfit_no, view),
        spec.image_size,
    )
    pixels = np.asarray(image)
    attributes = describe(identity, outfit, pixels, parts)
    caption = write_caption(attributes, stream(seed, CORPUS_CAPTION, person, outfit_no, view))
    return pixels, parts, attributes, caption, camera_no + 1


def _render_range(job: tuple[CorpusSpec, int, int, int]) -> tuple[int, np.ndarray, list[dict]]:
    spec, seed, start, stop = job
    images = np.empty((stop - start, *spec.image_size, 3), dtype=np.uint8)
    samples = []
    for offset, index in enumerate(range(start, stop)):
        pixels, _, attributes, caption, camera = render_sample(spec, seed, index)
        images[offset] = pixels
        person, outfit, _ = sample_keys(spec, index)
        split = "heldout" if person >= spec.num_people - spec.heldout_people else "train"
        samples.append(
            {
                "caption": caption.text,
                "mentions": list(caption.mentions),
                "person": person,
                "outfit": outfit,
                "camera": camera,
                "split": split,
                "attributes": attributes.to_dict(),
            }
        )
    return start, images, samples


def _caption_statistics(samples: list[dict]) -> dict:
    """How often captions mention each thing, and the colour names the pixels gave."""
    mentions = Counter(tag for s in samples for tag in s["mentions"])
    return {
        "mention_rates": {tag: round(n / len(samples), 4) for tag, n in sorted(mentions.items())},
        "top_colours": dict(
            sorted(Counter(s["attributes"]["top_colour"] or "-" for s in samples).items())
        ),
        "bottom_colours": dict(
            sorted(Counter(s["attributes"]["bottom_colour"] or "-" for s in samples).items())
        ),
        "palette": list(COLOUR_NAMES),
    }


def generate_corpus(out_dir: str, preset: str, seed: int, workers: Optional[int] = None) -> dict:
    """Write the corpus of (preset, seed) into ``out_dir`` (absent or empty) with ``workers``
    processes (default: one per CPU, at most 2) and return its manifest. Not atomic on its own:
    use :func:`ensure_corpus`."""
    spec = get_corpus_spec(preset)
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise CorpusError(f"cannot generate the corpus into '{out_dir}': the folder is not empty")
    os.makedirs(out_dir, exist_ok=True)
    start_time = time.perf_counter()
    workers = workers or min(2, os.cpu_count() or 1)
    images = np.lib.format.open_memmap(
        os.path.join(out_dir, IMAGES),
        mode="w+",
        dtype=np.uint8,
        shape=(spec.num_images, *spec.image_size, 3),
    )
    chunk = 200
    jobs = [
        (spec, seed, start, min(start + chunk, spec.num_images))
        for start in range(0, spec.num_images, chunk)
    ]
    samples: list[dict] = [{}] * spec.num_images
    if workers > 1 and len(jobs) > 1:
        caption_tokens("")  # load the tokenizer once, before the workers fork
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            results = pool.imap_unordered(_render_range, jobs)
            for start, block, block_samples in results:
                images[start : start + len(block)] = block
                samples[start : start + len(block)] = block_samples
    else:
        for job in jobs:
            start, block, block_samples = _render_range(job)
            images[start : start + len(block)] = block
            samples[start : start + len(block)] = block_samples
    images.flush()
    del images
    with open(os.path.join(out_dir, SAMPLES), "w", encoding="utf-8", newline="\n") as f:
        json.dump(samples, f, separators=(",", ":"))
        f.write("\n")
    heldout = spec.heldout_people * spec.images_per_person
    manifest = {
        "dataset": CORPUS_DATASET,
        "corpus_version": CORPUS_VERSION,
        "synthcc_generator_version": GENERATOR_VERSION,
        "preset": preset,
        "seed": seed,
        "spec": asdict(spec),
        "max_caption_tokens": MAX_TOKENS,
        "counts": {
            "images": spec.num_images,
            "train": spec.num_images - heldout,
            "heldout": heldout,
        },
        "captions": _caption_statistics(samples),
    }
    with open(os.path.join(out_dir, MANIFEST), "w", encoding="ascii", newline="\n") as f:
        f.write(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return {**manifest, "seconds": time.perf_counter() - start_time}


def _usable(path: str, preset: str, seed: int) -> bool:
    """True for a complete corpus of this version and spec; False when absent or outdated (either
    may be replaced); an error for anything else at that path."""
    manifest = finished_manifest(path, MANIFEST, CORPUS_DATASET, preset, seed, CorpusError)
    if manifest is None:
        return False
    if manifest.get("corpus_version") != CORPUS_VERSION:
        return False
    if manifest.get("synthcc_generator_version") != GENERATOR_VERSION:
        return False  # SynthCC's renderer, which draws the corpus too, has changed
    if manifest.get("spec") != json.loads(json.dumps(asdict(get_corpus_spec(preset)))):
        return False
    missing = [name for name in (IMAGES, SAMPLES) if not os.path.isfile(os.path.join(path, name))]
    if missing:
        raise CorpusError(
            f"captioned corpus '{path}' is damaged: {missing} missing. Delete '{path}' to have it "
            "generated again."
        )
    return True


def ensure_corpus(
    root: str, preset: str = "default", seed: int = 0, workers: Optional[int] = None
) -> str:
    """The folder of the captioned corpus (preset, seed) under ``root``, generated when missing
    (see the module doc). Safe against killed runs and concurrent callers."""
    get_corpus_spec(preset)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"corpus seed must be a non-negative integer, got {seed!r}")
    path = corpus_dir(root, preset, seed)
    manifest = ensure_built(
        path,
        lambda: _usable(path, preset, seed),
        lambda tmp: generate_corpus(tmp, preset, seed, workers),
        f"SynthCLIP corpus (preset '{preset}' seed {seed})",
    )
    if manifest is not None:
        get_logger().info(
            f"SynthCLIP corpus: generated {manifest['counts']['images']} captioned images in "
            f"{manifest['seconds']:.1f} s"
        )
    return path


@dataclass(frozen=True)
class Corpus:
    """A loaded corpus: images (memory-mapped), captions, attributes and the two splits."""

    path: str
    images: np.ndarray  # uint8 (N, H, W, 3), memory-mapped copy-on-write
    captions: tuple[str, ...]
    samples: tuple[dict, ...]
    train_index: np.ndarray  # int64 indices of the training images
    heldout_index: np.ndarray
    manifest: dict


def load_corpus(path: str) -> Corpus:
    """Read a corpus folder written by :func:`ensure_corpus`."""
    manifest = read_manifest(path, MANIFEST, CORPUS_DATASET)
    if manifest is None:
        raise CorpusError(f"'{path}' holds no valid {MANIFEST}: not a captioned corpus")
    try:
        # copy-on-write mapping: pages are read when used and shared with other readers, and
        # the array is writable (torch wraps it without a copy); the file is never written
        images = np.load(os.path.join(path, IMAGES), mmap_mode="c")
        with open(os.path.join(path, SAMPLES), encoding="utf-8") as f:
            samples = json.load(f)
    except (OSError, ValueError) as exc:
        raise CorpusError(f"captioned corpus '{path}' is damaged: {exc}") from exc
    if images.ndim != 4 or images.dtype != np.uint8 or len(images) != len(samples):
        raise CorpusError(
            f"captioned corpus '{path}': {IMAGES} holds {images.dtype} {images.shape}, expected "
            f"uint8 (N, H, W, 3) with N = {len(samples)} samples"
        )
    split = np.array([s["split"] for s in samples])
    return Corpus(
        path=path,
        images=images,
        captions=tuple(s["caption"] for s in samples),
        samples=tuple(samples),
        train_index=np.flatnonzero(split == "train"),
        heldout_index=np.flatnonzero(split == "heldout"),
        manifest=manifest,
    )
