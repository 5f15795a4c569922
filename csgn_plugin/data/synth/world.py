"""What SynthCC is made of: identities, outfits, cameras and the plan of who is seen where.

Every random draw comes from its own stream, seeded by ``(seed, kind, keys...)`` (for example
``(seed, IDENTITY, pid)``), so a person's look, an outfit or an image never depends on the order in
which the others were drawn or written.

* An identity carries what survives a change of clothes: build (shoulder, hip, head, legs), skin
  tone, hair colour (natural or dyed) and style, a bag (backpack, shoulder bag or none) and a head
  accessory (cap, glasses, headphones, beard or none), each in the person's own colour, gait
  (stride, arm swing, lean).
* An outfit is what changes: top and bottom colours, patterns, sleeve length, trousers / shorts /
  skirt, shoes. Some outfits come from a pool that several identities share (hard negatives).
* A camera is a place and a sensor: background, horizon, light, colour cast, person scale, blur
  and noise.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .presets import SynthSpec

Colour = tuple[float, float, float]  # RGB in [0, 1]

# stream kinds (the second entropy word of every sub-seed)
SPLIT, IDENTITY, PLAN, OUTFIT, POOL, CAMERA, IMAGE, POOL_CHOICE = range(8)
# the captioned corpus's kinds (corpus.py): its own, so its people, outfits and scenes are never
# SynthCC's, whatever the two seeds
CORPUS_PERSON, CORPUS_OUTFIT, CORPUS_CAMERA, CORPUS_VIEW, CORPUS_IMAGE, CORPUS_CAPTION = range(
    100, 106
)

HAIR_STYLES = ("short", "long", "ponytail", "bun", "curly", "bald")
BAGS = ("none", "backpack", "shoulder_bag")
ACCESSORIES = ("none", "cap", "glasses", "headphones", "beard")
TOP_PATTERNS = ("solid", "hstripes", "vstripes", "checks", "dots")
BOTTOM_STYLES = ("trousers", "shorts", "skirt")

_HAIR_COLOURS: tuple[Colour, ...] = (
    (0.07, 0.06, 0.05),  # black
    (0.22, 0.13, 0.07),  # dark brown
    (0.42, 0.27, 0.13),  # brown
    (0.82, 0.67, 0.38),  # blond
    (0.55, 0.20, 0.09),  # auburn
    (0.62, 0.61, 0.60),  # grey
    (0.66, 0.16, 0.07),  # red
    (0.92, 0.88, 0.74),  # platinum
)
#: odds that a person's hair is dyed: any hue, vivid
_DYED_ODDS = 0.35
_SKIN_LIGHT: Colour = (0.96, 0.80, 0.69)
_SKIN_DARK: Colour = (0.33, 0.20, 0.13)
# colours clothes are most often in
_NEUTRALS: tuple[Colour, ...] = (
    (0.08, 0.08, 0.09),  # black
    (0.92, 0.92, 0.90),  # white
    (0.50, 0.50, 0.50),  # grey
    (0.12, 0.16, 0.35),  # navy
    (0.80, 0.72, 0.56),  # beige
    (0.18, 0.30, 0.18),  # dark green
    (0.36, 0.24, 0.15),  # brown
    (0.28, 0.40, 0.60),  # denim
)


def stream(seed: int, kind: int, *keys: int) -> np.random.Generator:
    """The random stream of one thing, independent of every other stream."""
    return np.random.default_rng(np.random.SeedSequence([seed, kind, *keys]))


@dataclass(frozen=True)
class IdentitySpec:
    """What stays the same when a person changes clothes. Lengths are fractions of height."""

    pid: int
    shoulder: float  # half shoulder width
    hip: float  # half hip width
    head: float  # head radius
    leg: float  # hip-to-sole length
    skin: Colour
    hair: Colour
    hair_style: str
    bag: str  # 'none', 'backpack' or 'shoulder_bag'
    bag_colour: Colour
    accessory: str  # on the head: 'none', 'cap', 'glasses', 'headphones' or 'beard'
    accessory_colour: Colour
    stride: float  # largest leg angle of the walk (radians)
    arm_swing: float  # largest arm angle of the walk (radians)
    lean: float  # horizontal offset of the head over the feet


@dataclass(frozen=True)
class OutfitSpec:
    """What a person wears in one outfit."""

    top: Colour
    top_pattern: str
    top_pattern_colour: Colour
    pattern_period: float  # stripe / check / dot period, fraction of height
    long_sleeves: bool
    bottom: Colour
    bottom_style: str
    bottom_checked: bool
    shoes: Colour


@dataclass(frozen=True)
class CameraSpec:
    """One camera: its scene and its imaging."""

    camera: int  # 1-based, as in the file names
    wall: Colour
    floor: Colour
    horizon: float  # fraction of the image height where the floor begins
    texture: str  # 'plain', 'stripes', 'tiles' or 'clutter'
    texture_colour: Colour
    texture_period: float  # stripe / tile period, fraction of the image width
    brightness: float
    cast: Colour  # per-channel gain
    light_side: float  # left-right light gradient on the person, -1..1
    scale: float  # person height as a fraction of the image height
    blur: float  # Gaussian sigma, in pixels of a 128-pixel-high image
    noise: float  # Gaussian noise sigma, fraction of full scale


@dataclass(frozen=True)
class Tracklet:
    """The images of one (identity, outfit, camera)."""

    pid: int
    outfit: int  # counter that restarts per person, from 1
    camera: int  # 1-based
    frames: tuple[int, ...]
    split: str  # 'train' or 'test'
    query_frame: Optional[int]  # test tracklets: the frame written to query/


@dataclass(frozen=True)
class World:
    """Everything a SynthCC tree is rendered from."""

    spec: SynthSpec
    seed: int
    identities: dict  # pid -> IdentitySpec
    outfits: dict  # (pid, outfit) -> OutfitSpec
    shared_outfits: dict  # (pid, outfit) -> index in the shared pool, for pooled outfits only
    cameras: dict  # camera -> CameraSpec
    train_pids: tuple
    test_pids: tuple
    tracklets: tuple  # Tracklet, sorted by (pid, outfit, camera)


def _jitter(rng: np.random.Generator, colour: Colour, amount: float) -> Colour:
    values = np.clip(np.asarray(colour) + rng.uniform(-amount, amount, 3), 0.0, 1.0)
    return tuple(float(v) for v in values)


def _hsv(rng: np.random.Generator, sat: tuple, val: tuple) -> Colour:
    rgb = colorsys.hsv_to_rgb(rng.uniform(0.0, 1.0), rng.uniform(*sat), rng.uniform(*val))
    return tuple(float(v) for v in rgb)


def _clothes_colour(rng: np.random.Generator, neutral_odds: float) -> Colour:
    if rng.random() < neutral_odds:
        return _jitter(rng, _NEUTRALS[rng.integers(len(_NEUTRALS))], 0.05)
    return _hsv(rng, (0.4, 0.9), (0.35, 0.95))


def _contrasting(rng: np.random.Generator, base: Colour) -> Colour:
    """A second colour far enough from ``base`` for a pattern to show."""
    for _ in range(8):
        colour = _clothes_colour(rng, 0.3)
        if np.abs(np.subtract(colour, base)).sum() > 0.6:
            return colour
    return tuple(float(1.0 - v) for v in base)


def _hair_colour(rng: np.random.Generator) -> Colour:
    if rng.random() < _DYED_ODDS:
        return _hsv(rng, (0.55, 0.95), (0.45, 0.95))
    return _jitter(rng, _HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))], 0.05)


def sample_identity(seed: int, pid: int) -> IdentitySpec:
    return identity_from(stream(seed, IDENTITY, pid), pid)


def identity_from(rng: np.random.Generator, pid: int) -> IdentitySpec:
    """A person drawn from ``rng`` (other worlds, such as the captioned corpus, bring their own
    streams)."""
    tone = rng.uniform(0.0, 1.0)
    skin = tuple(float(a + tone * (b - a)) for a, b in zip(_SKIN_LIGHT, _SKIN_DARK))
    return IdentitySpec(
        pid=pid,
        shoulder=float(rng.uniform(0.095, 0.165)),
        hip=float(rng.uniform(0.075, 0.125)),
        head=float(rng.uniform(0.065, 0.085)),
        leg=float(rng.uniform(0.42, 0.53)),
        skin=_jitter(rng, skin, 0.03),
        hair=_hair_colour(rng),
        hair_style=HAIR_STYLES[rng.integers(len(HAIR_STYLES))],
        bag=BAGS[rng.choice(len(BAGS), p=[0.3, 0.35, 0.35])],
        bag_colour=_hsv(rng, (0.5, 1.0), (0.45, 1.0)),
        accessory=ACCESSORIES[rng.choice(len(ACCESSORIES), p=[0.2, 0.2, 0.2, 0.2, 0.2])],
        accessory_colour=_hsv(rng, (0.5, 1.0), (0.45, 1.0)),
        stride=float(rng.uniform(0.04, 0.32)),
        arm_swing=float(rng.uniform(0.04, 0.35)),
        lean=float(rng.uniform(-0.035, 0.035)),
    )


def sample_outfit(rng: np.random.Generator) -> OutfitSpec:
    top = _clothes_colour(rng, 0.4)
    bottom = _clothes_colour(rng, 0.65)
    return OutfitSpec(
        top=top,
        top_pattern=TOP_PATTERNS[rng.choice(len(TOP_PATTERNS), p=[0.4, 0.15, 0.1, 0.15, 0.2])],
        top_pattern_colour=_contrasting(rng, top),
        pattern_period=float(rng.uniform(0.035, 0.07)),
        long_sleeves=bool(rng.random() < 0.6),
        bottom=bottom,
        bottom_style=BOTTOM_STYLES[rng.choice(len(BOTTOM_STYLES), p=[0.65, 0.15, 0.2])],
        bottom_checked=bool(rng.random() < 0.12),
        shoes=_clothes_colour(rng, 0.85),
    )


def sample_camera(seed: int, camera: int) -> CameraSpec:
    return camera_from(stream(seed, CAMERA, camera), camera)


def camera_from(rng: np.random.Generator, camera: int) -> CameraSpec:
    """A camera drawn from ``rng``."""
    cast = rng.uniform(0.82, 1.18, 3)
    cast = cast / cast.mean()  # a tint, not a brightness change
    return CameraSpec(
        camera=camera,
        wall=_hsv(rng, (0.05, 0.4), (0.3, 0.85)),
        floor=_hsv(rng, (0.0, 0.3), (0.2, 0.7)),
        horizon=float(rng.uniform(0.55, 0.85)),
        texture=("plain", "stripes", "tiles", "clutter")[rng.integers(4)],
        texture_colour=_hsv(rng, (0.1, 0.6), (0.2, 0.9)),
        texture_period=float(rng.uniform(0.15, 0.4)),
        brightness=float(rng.uniform(0.7, 1.2)),
        cast=tuple(float(v) for v in cast),
        light_side=float(rng.uniform(-0.5, 0.5)),
        scale=float(rng.uniform(0.80, 0.94)),
        blur=float(rng.uniform(0.0, 1.1)),
        noise=float(rng.uniform(0.004, 0.035)),
    )


def _plan_person(
    spec: SynthSpec, seed: int, pid: int, split: str, same_clothes: bool
) -> tuple[list[Tracklet], dict]:
    """The tracklets of one person, and which of its outfits come from the shared pool."""
    rng = stream(seed, PLAN, pid)
    # pool choices draw from their own stream: presets that differ only in outfit sharing
    # (default, hard) then see the same people, cameras and frames
    pool_rng = stream(seed, POOL_CHOICE, pid)
    num_outfits = 1 if same_clothes else int(rng.integers(*spec.outfits_per_id, endpoint=True))
    tracklets, pooled = [], {}
    for outfit in range(1, num_outfits + 1):
        if pool_rng.random() < spec.shared_outfit_fraction:
            free = sorted(set(range(spec.shared_outfit_pool)) - set(pooled.values()))
            pooled[(pid, outfit)] = int(free[pool_rng.integers(len(free))])
        num_cams = int(rng.integers(*spec.cameras_per_outfit, endpoint=True))
        cameras = np.sort(rng.choice(spec.num_cameras, num_cams, replace=False)) + 1
        for camera in cameras:
            count = int(rng.integers(*spec.images_per_camera, endpoint=True))
            step = int(rng.integers(3, 13))
            start = int(rng.integers(0, 999_999 - step * count))
            frames = tuple(start + step * i for i in range(count))
            query = int(frames[rng.integers(count)]) if split == "test" else None
            tracklets.append(Tracklet(pid, outfit, int(camera), frames, split, query))
    return tracklets, pooled


def build_world(spec: SynthSpec, seed: int) -> World:
    """Draw the identities, outfits, cameras and tracklets of one SynthCC tree."""
    rng = stream(seed, SPLIT)
    num_ids = spec.num_train_ids + spec.num_test_ids
    order = rng.permutation(num_ids)
    splits = {
        "train": sorted(int(p) for p in order[: spec.num_train_ids]),
        "test": sorted(int(p) for p in order[spec.num_train_ids :]),
    }
    tracklets: list[Tracklet] = []
    shared: dict = {}
    for split, pids in splits.items():
        num_same = int(round(spec.same_clothes_fraction * len(pids)))
        same_clothes = {int(p) for p in rng.choice(pids, num_same, replace=False)}
        for pid in pids:
            person, pooled = _plan_person(spec, seed, pid, split, pid in same_clothes)
            tracklets += person
            shared.update(pooled)
    outfits = {}
    for t in tracklets:
        key = (t.pid, t.outfit)
        if key not in outfits:
            pool_index = shared.get(key)
            source = (
                stream(seed, POOL, pool_index)
                if pool_index is not None
                else stream(seed, OUTFIT, *key)
            )
            outfits[key] = sample_outfit(source)
    tracklets.sort(key=lambda t: (t.pid, t.outfit, t.camera))
    return World(
        spec=spec,
        seed=seed,
        identities={pid: sample_identity(seed, pid) for pid in range(num_ids)},
        outfits=outfits,
        shared_outfits=shared,
        cameras={c: sample_camera(seed, c) for c in range(1, spec.num_cameras + 1)},
        train_pids=tuple(splits["train"]),
        test_pids=tuple(splits["test"]),
        tracklets=tuple(tracklets),
    )
