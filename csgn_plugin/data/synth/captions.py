"""Captions of rendered SynthCC people: colour names read from the pixels, varied templates.

A caption says what an image shows, as a web caption would: mostly the clothes' colours, sometimes
the garment kinds, patterns, hair, bag, head accessory or shoes, rarely the body build.

* Colours are named from the rendered pixels, not from the colour the outfit asked for: a
  garment's colour is the median of its interior pixels in the finished image (after light,
  colour cast, blur and noise), and its name is the nearest of a fixed palette of basic colour
  terms, measured in CIELAB (where distance follows perceived difference). A garment too small or
  too hidden to show interior pixels gets no colour and its colour is never mentioned.
* :func:`describe` turns (identity, outfit, image, part map) into :class:`Attributes`, everything
  a caption may say; :func:`write_caption` picks what to mention and how, from a random stream.
  Every colour word stands directly before the noun it describes ("a red striped t-shirt", "long
  black hair"), which is what lets a test check each colour word against its part's pixels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

from .render import ACCESSORY, BAG, BOTTOM, HAIR, SHOES, TOP, TOP_PATTERN
from .world import IdentitySpec, OutfitSpec

#: basic colour terms and their sRGB prototypes (several where one name covers distinct looks)
PALETTE: dict[str, tuple[tuple[float, float, float], ...]] = {
    "black": ((0.06, 0.06, 0.06),),
    "white": ((0.95, 0.95, 0.95),),
    "grey": ((0.35, 0.35, 0.35), (0.55, 0.55, 0.55), (0.75, 0.75, 0.75)),
    "red": ((0.80, 0.10, 0.10), (0.55, 0.05, 0.08)),
    "orange": ((0.95, 0.50, 0.10),),
    "yellow": ((0.95, 0.90, 0.20), (0.75, 0.70, 0.15)),
    "green": ((0.15, 0.60, 0.20), (0.15, 0.30, 0.15), (0.55, 0.80, 0.30)),
    "blue": ((0.15, 0.30, 0.85), (0.10, 0.15, 0.40), (0.30, 0.60, 0.90), (0.30, 0.40, 0.60)),
    "purple": ((0.50, 0.20, 0.65), (0.30, 0.10, 0.35)),
    "pink": ((0.95, 0.55, 0.70), (0.85, 0.25, 0.55)),
    "brown": ((0.45, 0.28, 0.12), (0.30, 0.18, 0.10), (0.75, 0.65, 0.50)),
}
COLOUR_NAMES: tuple[str, ...] = tuple(PALETTE)

#: CLIP tokens of a caption, start and end tokens included (the SynthCLIP text context)
MAX_TOKENS = 24
#: pixels of a part needed before its colour is named (fewer: the part is not really visible)
MIN_PIXELS = 4

#: how often a caption mentions each thing the image shows (clothing colour far more than build)
MENTION_ODDS = {
    "top_colour": 0.9,
    "bottom_colour": 0.7,
    "top_pattern": 0.5,  # of patterned tops
    "garment_kind": 0.6,  # 'a red t-shirt' rather than 'a red top'
    "hair": 0.3,
    "bag": 0.35,  # of people with a bag
    "accessory": 0.3,  # of people with a head accessory
    "shoes": 0.1,
    "build": 0.12,
}

_TOP_KINDS = {True: ("sweater", "long-sleeved shirt", "jumper", "shirt"), False: ("t-shirt", "tee")}
_TOP_GENERIC = ("top", "shirt")
_BOTTOM_KINDS = {"trousers": ("trousers", "pants"), "shorts": ("shorts",), "skirt": ("skirt",)}
_PATTERN_WORDS = {
    "hstripes": ("striped",),
    "vstripes": ("striped",),
    "checks": ("checked", "plaid"),
    "dots": ("dotted", "polka-dot"),
}
_HAIR_STYLE_WORDS = {
    "short": "short",
    "long": "long",
    "ponytail": "",
    "bun": "",
    "curly": "curly",
    "bald": "",
}
_ACCESSORY_WORDS = {"cap": "a {} cap", "glasses": "glasses", "headphones": "headphones"}
_SUBJECTS = ("a person", "a pedestrian", "someone", "a walker", "a passer-by")
_OPENINGS = ("", "", "a photo of ", "an image of ", "a picture of ")


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of sRGB colours in [0, 1], shape (..., 3)."""
    rgb = np.asarray(rgb, dtype=np.float64)
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    to_xyz = np.array(
        [
            [0.4124564, 0.3575761, 0.1804375],
            [0.2126729, 0.7151522, 0.0721750],
            [0.0193339, 0.1191920, 0.9503041],
        ]
    )
    xyz = linear @ to_xyz.T / np.array([0.95047, 1.0, 1.08883])
    delta = 6.0 / 29.0
    f = np.where(xyz > delta**3, np.cbrt(xyz), xyz / (3 * delta**2) + 4.0 / 29.0)
    return np.stack(
        [
            116.0 * f[..., 1] - 16.0,
            500.0 * (f[..., 0] - f[..., 1]),
            200.0 * (f[..., 1] - f[..., 2]),
        ],
        axis=-1,
    )


_PROTOTYPE_NAMES = tuple(name for name, protos in PALETTE.items() for _ in protos)
_PROTOTYPE_LAB = srgb_to_lab(np.array([p for protos in PALETTE.values() for p in protos]))


def name_colour(rgb: tuple[float, float, float] | np.ndarray) -> str:
    """The palette name nearest to an sRGB colour in [0, 1] (CIE76 distance in CIELAB)."""
    distance = np.linalg.norm(_PROTOTYPE_LAB - srgb_to_lab(np.asarray(rgb)), axis=-1)
    return _PROTOTYPE_NAMES[int(np.argmin(distance))]


def interior(parts: np.ndarray) -> np.ndarray:
    """Pixels whose four neighbours carry the same label as they do (away from a part's edges,
    where blur mixes in the neighbours' colours); the image border is never interior."""
    core = np.zeros(parts.shape, dtype=bool)
    centre = parts[1:-1, 1:-1]
    core[1:-1, 1:-1] = (
        (parts[:-2, 1:-1] == centre)
        & (parts[2:, 1:-1] == centre)
        & (parts[1:-1, :-2] == centre)
        & (parts[1:-1, 2:] == centre)
    )
    return core


def part_colour(
    image: np.ndarray, parts: np.ndarray, label: int, core: Optional[np.ndarray] = None
) -> Optional[np.ndarray]:
    """Median sRGB (in [0, 1]) of a part's interior pixels in the rendered ``image`` (uint8
    (H, W, 3)); ``None`` when fewer than :data:`MIN_PIXELS` interior pixels show it. ``core``:
    :func:`interior` of ``parts``, when the caller has it already."""
    mask = (interior(parts) if core is None else core) & (parts == label)
    if int(mask.sum()) < MIN_PIXELS:
        return None
    return np.median(image[mask].astype(np.float64), axis=0) / 255.0


@dataclass(frozen=True)
class Attributes:
    """What one image shows that a caption may mention; colours are palette names or ``None``
    (not visible enough to name)."""

    top_colour: Optional[str]
    top_pattern: str  # 'solid', 'hstripes', 'vstripes', 'checks', 'dots'
    top_pattern_colour: Optional[str]
    long_sleeves: bool
    bottom_colour: Optional[str]
    bottom_style: str  # 'trousers', 'shorts', 'skirt'
    bottom_checked: bool
    shoes_colour: Optional[str]
    hair_style: str
    hair_colour: Optional[str]
    bag: str  # 'none', 'backpack', 'shoulder_bag'
    bag_colour: Optional[str]
    accessory: str  # 'none', 'cap', 'glasses', 'headphones', 'beard'
    accessory_colour: Optional[str]
    build: tuple[str, ...]  # 'broad-shouldered', 'slim', 'long-legged', 'short-legged'

    def to_dict(self) -> dict:
        return {**asdict(self), "build": list(self.build)}


def _build_words(identity: IdentitySpec) -> tuple[str, ...]:
    """Body-build words for the extremes of SynthCC's ranges (shoulder 0.095-0.165, leg
    0.42-0.53 of the height)."""
    words = []
    if identity.shoulder > 0.145:
        words.append("broad-shouldered")
    elif identity.shoulder < 0.112:
        words.append("slim")
    if identity.leg > 0.505:
        words.append("long-legged")
    elif identity.leg < 0.445:
        words.append("short-legged")
    return tuple(words)


def describe(
    identity: IdentitySpec, outfit: OutfitSpec, image: np.ndarray, parts: np.ndarray
) -> Attributes:
    """The :class:`Attributes` of one rendered image (``image`` uint8 (H, W, 3), ``parts`` its
    part map from ``render_image_with_parts``)."""

    core = interior(parts)

    def colour(label: int) -> Optional[str]:
        rgb = part_colour(image, parts, label, core)
        return None if rgb is None else name_colour(rgb)

    return Attributes(
        top_colour=colour(TOP),
        top_pattern=outfit.top_pattern,
        top_pattern_colour=colour(TOP_PATTERN) if outfit.top_pattern != "solid" else None,
        long_sleeves=outfit.long_sleeves,
        bottom_colour=colour(BOTTOM),
        bottom_style=outfit.bottom_style,
        bottom_checked=outfit.bottom_checked,
        shoes_colour=colour(SHOES),
        hair_style=identity.hair_style,
        # a beard is drawn in the hair's colour: it shows the hair colour too
        hair_colour=colour(HAIR),
        bag=identity.bag,
        bag_colour=colour(BAG) if identity.bag != "none" else None,
        accessory=identity.accessory,
        accessory_colour=colour(ACCESSORY) if identity.accessory in ("cap",) else None,
        build=_build_words(identity),
    )


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _top_phrase(a: Attributes, rng: np.random.Generator) -> tuple[str, set[str]]:
    """'red striped t-shirt', 'blue and white checked shirt', 'green top', ... and what it
    mentions."""
    words, tags = [], set()
    if a.top_colour and rng.random() < MENTION_ODDS["top_colour"]:
        tags.add("top_colour")
        if a.top_pattern != "solid" and a.top_pattern_colour and rng.random() < 0.5:
            words.append(f"{a.top_colour} and {a.top_pattern_colour}")
            tags.add("top_pattern_colour")
        else:
            words.append(a.top_colour)
    if a.top_pattern != "solid" and rng.random() < MENTION_ODDS["top_pattern"]:
        words.append(_pick(rng, _PATTERN_WORDS[a.top_pattern]))
        tags.add("top_pattern")
    if rng.random() < MENTION_ODDS["garment_kind"]:
        words.append(_pick(rng, _TOP_KINDS[a.long_sleeves]))
        tags.add("top_kind")
    else:
        words.append(_pick(rng, _TOP_GENERIC))
    if not tags - {"top_kind"}:
        return "", set()  # neither colour nor pattern: a bare 'shirt' says next to nothing
    return " ".join(words), tags


def _bottom_phrase(a: Attributes, rng: np.random.Generator) -> tuple[str, set[str]]:
    """'grey trousers', 'checked blue skirt', 'shorts', ... and what it mentions."""
    words, tags = [], set()
    if a.bottom_checked and rng.random() < MENTION_ODDS["top_pattern"]:
        words.append("checked")
        tags.add("bottom_pattern")
    if a.bottom_colour and rng.random() < MENTION_ODDS["bottom_colour"]:
        words.append(a.bottom_colour)
        tags.add("bottom_colour")
    words.append(_pick(rng, _BOTTOM_KINDS[a.bottom_style]))
    if not tags and a.bottom_style == "trousers":
        return "", set()  # plain 'trousers' says nothing
    return " ".join(words), tags | {"bottom_kind"}


def _with_article(phrase: str) -> str:
    if phrase.endswith(("trousers", "pants", "shorts", "glasses", "headphones")):
        return phrase
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _extras(a: Attributes, rng: np.random.Generator) -> list[tuple[str, str]]:
    """Clauses beyond the clothes, each drawn with its own odds: (text, what it mentions)."""
    extras = []
    if a.hair_style != "bald" and a.hair_colour and rng.random() < MENTION_ODDS["hair"]:
        colour = "blond" if a.hair_colour == "yellow" else a.hair_colour
        style = _HAIR_STYLE_WORDS[a.hair_style]
        if a.hair_style in ("ponytail", "bun"):
            hair = f"{colour} hair in a {a.hair_style}"
        else:
            hair = f"{style} {colour} hair" if style else f"{colour} hair"
        extras.append((f"with {hair}", "hair"))
    if a.bag != "none" and rng.random() < MENTION_ODDS["bag"]:
        noun = "backpack" if a.bag == "backpack" else "shoulder bag"
        colour = f"{a.bag_colour} " if a.bag_colour and rng.random() < 0.6 else ""
        extras.append((f"{_pick(rng, ('with', 'carrying'))} {_with_article(colour + noun)}", "bag"))
    if a.accessory != "none" and rng.random() < MENTION_ODDS["accessory"]:
        if a.accessory == "beard":
            extras.append(("with a beard", "accessory"))
        else:
            colour = a.accessory_colour or ""
            thing = _ACCESSORY_WORDS[a.accessory].format(colour).replace("  ", " ")
            extras.append((f"wearing {thing}", "accessory"))
    if a.shoes_colour and rng.random() < MENTION_ODDS["shoes"]:
        extras.append((f"in {a.shoes_colour} shoes", "shoes"))
    return extras


_tokenizer = None


def caption_tokens(caption: str) -> int:
    """CLIP BPE tokens of ``caption`` with its start and end tokens (open_clip's tokenizer)."""
    global _tokenizer
    if _tokenizer is None:
        from open_clip.tokenizer import SimpleTokenizer  # imports torch: only when captioning

        _tokenizer = SimpleTokenizer()
    return len(_tokenizer.encode(caption)) + 2


def _assemble(opening: str, subject: str, clothes: list[str], extras: list[str], style: int) -> str:
    if not clothes:
        body = subject
    elif style == 0:
        body = f"{subject} in {' and '.join(_with_article(c) for c in clothes)}"
    elif style == 1:
        body = f"{subject} wearing {' and '.join(_with_article(c) for c in clothes)}"
    else:  # a list, as in a short label: 'red t-shirt, grey trousers'
        body = ", ".join(clothes)
    if extras:
        body += (
            (", " + ", ".join(extras))
            if style == 2 or not clothes
            else (" " + " and ".join(extras))
        )
    return (opening + body).strip() + "."


@dataclass(frozen=True)
class Caption:
    """A caption and what it mentions ('top_colour', 'top_pattern', 'top_pattern_colour',
    'top_kind', 'bottom_colour', 'bottom_pattern', 'bottom_kind', 'hair', 'bag', 'accessory',
    'shoes', 'build')."""

    text: str
    mentions: tuple[str, ...]


def write_caption(a: Attributes, rng: np.random.Generator, max_tokens: int = MAX_TOKENS) -> Caption:
    """One caption of an image with attributes ``a``, its wording drawn from ``rng``, at most
    ``max_tokens`` CLIP tokens long: when the drawn wording is longer, the least important
    clauses go first (shoes, head accessory, bag, hair, then the opening and the build)."""
    (top, top_tags), (bottom, bottom_tags) = _top_phrase(a, rng), _bottom_phrase(a, rng)
    if not top and not bottom and a.top_colour:
        # a caption should say something about the clothes: at least the top's colour
        top, top_tags = f"{a.top_colour} {_pick(rng, _TOP_GENERIC)}", {"top_colour"}
    extras = _extras(a, rng)
    subject = plain_subject = _pick(rng, _SUBJECTS)
    build = False
    if a.build and rng.random() < MENTION_ODDS["build"]:
        noun = subject.split(" ", 1)[1] if subject.startswith("a ") else "person"
        subject, build = f"a {_pick(rng, a.build)} {noun}", True
    clothes = [phrase for phrase in (top, bottom) if phrase]
    if rng.random() < 0.5:
        clothes.reverse()
    style = int(rng.integers(3))
    opening = _pick(rng, _OPENINGS) if style != 2 else ""
    if style == 2 and clothes:  # a list of garments has no subject to describe
        subject, build = plain_subject, False
    while True:
        text = _assemble(opening, subject, clothes, [e for e, _ in extras], style)
        if caption_tokens(text) <= max_tokens:
            tags = (
                top_tags
                | bottom_tags
                | {tag for _, tag in extras}
                | ({"build"} if build else set())
            )
            return Caption(text, tuple(sorted(tags)))
        if extras:
            extras.pop()
        elif opening:
            opening = ""
        elif build:
            subject, build = plain_subject, False
        else:
            raise ValueError(
                f"caption '{text}' needs {caption_tokens(text)} CLIP tokens even at its "
                f"shortest; max_tokens is {max_tokens}"
            )
