"""Rendering one SynthCC image: a person drawn as a label map, painted, placed in a camera's scene.

The person is drawn at twice the output resolution into a label map (skin, hair, top, bottom,
shoes, head accessory, bag, dark details) with PIL's ImageDraw, painted with numpy (colours, clothes
patterns, shading), reduced by averaging (anti-aliased edges) and composited over the camera's
background; the camera then applies light, colour cast, blur and noise. The same label map, reduced
to the output pixels (``render_image_with_parts``), says which rendered pixels show which part, so
a caption can name the colour a garment actually has in the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .world import CameraSpec, IdentitySpec, OutfitSpec

# labels of the person map (0 = not the person)
BACKGROUND, SKIN, HAIR, TOP, BOTTOM, SHOES, ACCESSORY, DARK, BAG = range(9)
# extra labels of a part map (render_image_with_parts): a garment's second (pattern) colour, and
# output pixels whose supersampled block holds more than one label (edges)
TOP_PATTERN, BOTTOM_PATTERN, MIXED = 9, 10, 255
SUPERSAMPLE = 2
_DARK: tuple = (0.05, 0.05, 0.06)


@dataclass(frozen=True)
class Pose:
    """Where and how one person stands in one image (canvas pixels, i.e. supersampled)."""

    phase: float  # walking phase, radians
    height: float  # crown to sole
    centre_x: float
    feet_y: float


def sample_pose(camera: CameraSpec, rng: np.random.Generator, size: tuple) -> Pose:
    """A pose in a canvas of ``size`` = (height, width) output pixels."""
    canvas_h, canvas_w = size[0] * SUPERSAMPLE, size[1] * SUPERSAMPLE
    height = canvas_h * camera.scale * rng.uniform(0.96, 1.03)
    return Pose(
        phase=float(rng.uniform(0.0, 2.0 * math.pi)),
        height=float(height),
        centre_x=float(canvas_w * (0.5 + rng.uniform(-0.06, 0.06))),
        feet_y=float(canvas_h - (canvas_h - height) * rng.uniform(0.25, 0.6)),
    )


def _ellipse(draw: ImageDraw.ImageDraw, cx: float, cy: float, rx: float, ry: float, label: int):
    draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=label)


def _limb(draw: ImageDraw.ImageDraw, start: tuple, end: tuple, width: float, label: int) -> None:
    """A limb segment with round joints."""
    draw.line((start, end), fill=label, width=max(1, round(width)))
    for x, y in (start, end):
        _ellipse(draw, x, y, width / 2, width / 2, label)


def _along(start: tuple, end: tuple, t: float) -> tuple:
    return (start[0] + t * (end[0] - start[0]), start[1] + t * (end[1] - start[1]))


def draw_labels(
    identity: IdentitySpec, outfit: OutfitSpec, pose: Pose, canvas: tuple
) -> np.ndarray:
    """The person's label map, ``canvas`` = (height, width) canvas pixels, back to front."""
    img = Image.new("L", (canvas[1], canvas[0]), BACKGROUND)
    draw = ImageDraw.Draw(img)
    ph, cx, feet = pose.height, pose.centre_x, pose.feet_y
    top = feet - ph
    r = identity.head * ph
    head = (cx + identity.lean * ph, top + r)
    shoulder_y = top + 2 * r + 0.03 * ph
    hip_y = feet - identity.leg * ph
    sx, hx = cx + 0.6 * identity.lean * ph, cx + 0.2 * identity.lean * ph
    sw, hw = identity.shoulder * ph, identity.hip * ph
    arm_w, leg_w = 0.055 * ph, 0.95 * hw
    swing = math.sin(pose.phase)

    # behind the body: long and curly hair, ponytail, backpack
    style = identity.hair_style
    if style == "long":
        draw.rectangle((head[0] - 1.1 * r, head[1], head[0] + 1.1 * r, shoulder_y + 0.1 * ph), HAIR)
    elif style == "curly":
        _ellipse(draw, head[0], head[1] - 0.1 * r, 1.45 * r, 1.35 * r, HAIR)
    elif style == "ponytail":
        _ellipse(draw, head[0] + 1.05 * r, head[1] + 0.5 * r, 0.45 * r, 0.9 * r, HAIR)
    if identity.bag == "backpack":
        draw.rectangle(
            (sx - 1.25 * sw, shoulder_y + 0.02 * ph, sx + 1.25 * sw, hip_y - 0.06 * ph), BAG
        )

    # legs, shoes and the garment over them
    leg_len = identity.leg * ph - 0.02 * ph
    for side in (-1, 1):
        angle = side * identity.stride * swing
        hip = (hx + side * 0.5 * hw, hip_y)
        foot = (hip[0] + leg_len * math.sin(angle), hip[1] + leg_len * math.cos(angle))
        trousers = outfit.bottom_style == "trousers"
        _limb(draw, hip, foot, leg_w, BOTTOM if trousers else SKIN)
        if outfit.bottom_style == "shorts":
            _limb(draw, hip, _along(hip, foot, 0.4), leg_w * 1.1, BOTTOM)
        _ellipse(
            draw, foot[0] + side * 0.01 * ph, foot[1] + 0.005 * ph, 0.65 * leg_w, 0.025 * ph, SHOES
        )
    if outfit.bottom_style == "skirt":
        hem = hip_y + 0.35 * identity.leg * ph
        draw.polygon(
            [
                (hx - hw, hip_y - 0.03 * ph),
                (hx + hw, hip_y - 0.03 * ph),
                (hx + 1.55 * hw, hem),
                (hx - 1.55 * hw, hem),
            ],
            BOTTOM,
        )
    else:
        draw.rectangle((hx - hw, hip_y - 0.03 * ph, hx + hw, hip_y + 0.06 * ph), BOTTOM)

    # torso, with rounded shoulders
    draw.polygon(
        [
            (sx - sw, shoulder_y),
            (sx + sw, shoulder_y),
            (hx + hw, hip_y + 0.03 * ph),
            (hx - hw, hip_y + 0.03 * ph),
        ],
        TOP,
    )
    for side in (-1, 1):
        _ellipse(
            draw, sx + side * (sw - arm_w / 2), shoulder_y + arm_w / 2, arm_w / 2, arm_w / 2, TOP
        )
    if identity.bag == "backpack":
        for side in (-1, 1):
            x = sx + side * 0.55 * sw
            draw.rectangle(
                (x - 0.012 * ph, shoulder_y, x + 0.012 * ph, shoulder_y + 0.17 * ph), BAG
            )

    # arms swing against the legs
    arm_len = 0.36 * ph
    for side in (-1, 1):
        angle = side * 0.07 - side * identity.arm_swing * swing
        shoulder = (sx + side * (sw - arm_w / 2), shoulder_y + arm_w / 2)
        hand = (shoulder[0] + arm_len * math.sin(angle), shoulder[1] + arm_len * math.cos(angle))
        if outfit.long_sleeves:
            _limb(draw, shoulder, _along(shoulder, hand, 0.9), arm_w, TOP)
        else:
            _limb(draw, shoulder, hand, arm_w * 0.9, SKIN)
            _limb(draw, shoulder, _along(shoulder, hand, 0.4), arm_w, TOP)
        _ellipse(draw, hand[0], hand[1], 0.55 * arm_w, 0.6 * arm_w, SKIN)
    if identity.bag == "shoulder_bag":
        _limb(
            draw,
            (sx - 0.7 * sw, shoulder_y),
            (hx + 1.1 * hw, hip_y - 0.02 * ph),
            0.022 * ph,
            BAG,
        )
        draw.rectangle(
            (hx + 0.85 * hw, hip_y - 0.07 * ph, hx + 0.85 * hw + 0.1 * ph, hip_y + 0.04 * ph),
            BAG,
        )

    # neck, head, hair on top, face
    draw.rectangle((head[0] - 0.4 * r, head[1], head[0] + 0.4 * r, shoulder_y + 0.01 * ph), SKIN)
    _ellipse(draw, head[0], head[1], 0.88 * r, r, SKIN)
    if style != "bald":
        cap_box = (head[0] - 0.95 * r, head[1] - 1.08 * r, head[0] + 0.95 * r, head[1] + 0.7 * r)
        draw.chord(cap_box, 180, 360, HAIR)
        if style == "bun":
            _ellipse(draw, head[0], head[1] - 1.15 * r, 0.45 * r, 0.4 * r, HAIR)
        if style == "long":
            for side in (-1, 1):
                draw.rectangle(
                    (
                        head[0] + side * 0.78 * r - 0.2 * r,
                        head[1] - 0.2 * r,
                        head[0] + side * 0.78 * r + 0.2 * r,
                        head[1] + 1.1 * r,
                    ),
                    HAIR,
                )
    if identity.accessory == "beard":
        draw.chord(
            (head[0] - 0.88 * r, head[1] - 0.55 * r, head[0] + 0.88 * r, head[1] + r), 15, 165, HAIR
        )
    eye_y, eye_r = head[1] + 0.05 * r, max(1.0, 0.12 * r)
    for side in (-1, 1):
        _ellipse(draw, head[0] + side * 0.36 * r, eye_y, eye_r, eye_r, DARK)
    if identity.accessory == "glasses":
        draw.rectangle(
            (head[0] - 0.8 * r, eye_y - 0.17 * r, head[0] + 0.8 * r, eye_y + 0.17 * r), DARK
        )
    elif identity.accessory == "cap":
        draw.chord(
            (head[0] - 1.0 * r, head[1] - 1.15 * r, head[0] + 1.0 * r, head[1] + 0.5 * r),
            180,
            360,
            ACCESSORY,
        )
        draw.rectangle(
            (head[0] - 1.15 * r, head[1] - 0.4 * r, head[0] + 1.15 * r, head[1] - 0.22 * r),
            ACCESSORY,
        )
    elif identity.accessory == "headphones":
        draw.arc(
            (head[0] - 1.05 * r, head[1] - 1.12 * r, head[0] + 1.05 * r, head[1] + 0.9 * r),
            190,
            350,
            ACCESSORY,
            width=max(1, round(0.2 * r)),
        )
        for side in (-1, 1):
            _ellipse(
                draw, head[0] + side * 0.92 * r, head[1] + 0.05 * r, 0.25 * r, 0.35 * r, ACCESSORY
            )
    return np.asarray(img)


def _pattern(kind: str, u: np.ndarray, v: np.ndarray, period: float) -> np.ndarray:
    """Where a garment shows its second colour; u, v in person-height units."""
    cu, cv = np.floor(u / period).astype(np.int64), np.floor(v / period).astype(np.int64)
    if kind == "hstripes":
        return cv % 2 == 0
    if kind == "vstripes":
        return cu % 2 == 0
    if kind == "checks":
        return (cu + cv) % 2 == 0
    if kind == "dots":
        du, dv = u / period - cu - 0.5, v / period - cv - 0.5
        return du * du + dv * dv < 0.09
    return np.zeros(u.shape, dtype=bool)


def paint_person(
    identity: IdentitySpec, outfit: OutfitSpec, camera: CameraSpec, pose: Pose, canvas: tuple
) -> tuple[np.ndarray, np.ndarray]:
    """Premultiplied RGB and alpha of the person at output resolution, float32 in [0, 1]."""
    rgb, alpha, _ = _paint(identity, outfit, camera, pose, canvas)
    return rgb, alpha


def _paint(
    identity: IdentitySpec, outfit: OutfitSpec, camera: CameraSpec, pose: Pose, canvas: tuple
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`paint_person`'s RGB and alpha, and the canvas-resolution label map with the
    garments' pattern pixels relabelled TOP_PATTERN / BOTTOM_PATTERN."""
    labels = draw_labels(identity, outfit, pose, canvas)
    parts = labels.copy()
    palette = np.array(
        [
            (0.0, 0.0, 0.0),
            identity.skin,
            identity.hair,
            outfit.top,
            outfit.bottom,
            outfit.shoes,
            identity.accessory_colour,
            _DARK,
            identity.bag_colour,
        ],
        dtype=np.float32,
    )
    rgb = palette[labels]
    top = pose.feet_y - pose.height
    for label, pattern_label, kind, second, period in (
        (TOP, TOP_PATTERN, outfit.top_pattern, outfit.top_pattern_colour, outfit.pattern_period),
        (
            BOTTOM,
            BOTTOM_PATTERN,
            "checks" if outfit.bottom_checked else "solid",
            tuple(0.55 * c for c in outfit.bottom),
            1.3 * outfit.pattern_period,
        ),
    ):
        if kind == "solid":
            continue
        ys, xs = np.nonzero(labels == label)
        u, v = (xs - pose.centre_x) / pose.height, (ys - top) / pose.height
        hit = _pattern(kind, u, v, period)
        rgb[ys[hit], xs[hit]] = second
        parts[ys[hit], xs[hit]] = pattern_label
    # a rounded body lit from one side
    u = np.clip((np.arange(canvas[1]) - pose.centre_x) / (0.2 * pose.height), -1.6, 1.6)
    shade = 1.0 + 0.2 * camera.light_side * u - 0.18 * u * u
    alpha = (labels > 0).astype(np.float32)
    rgb *= (shade[None, :] * alpha)[..., None]
    return _reduce(rgb), _reduce(alpha), parts


def _reduce_parts(parts: np.ndarray) -> np.ndarray:
    """Output-resolution part map: a block's label where all its canvas pixels agree, else
    MIXED."""
    s = SUPERSAMPLE
    first = parts[::s, ::s]
    uniform = np.ones(first.shape, dtype=bool)
    for i in range(s):
        for j in range(s):
            uniform &= parts[i::s, j::s] == first
    return np.where(uniform, first, MIXED).astype(np.uint8)


def _reduce(canvas: np.ndarray) -> np.ndarray:
    """Average SUPERSAMPLE x SUPERSAMPLE blocks (strided sums: far faster than reshape-mean)."""
    s = SUPERSAMPLE
    total = sum(canvas[i::s, j::s] for i in range(s) for j in range(s))
    return total * np.float32(1.0 / (s * s))


def render_background(camera: CameraSpec, rng: np.random.Generator, size: tuple) -> np.ndarray:
    """The camera's scene (float32 RGB), shifted a little per image."""
    h, w = size
    ys = (np.arange(h, dtype=np.float32) / h)[:, None, None]
    horizon = int(round(camera.horizon * h + rng.uniform(-0.03, 0.03) * h))
    wall = np.asarray(camera.wall, dtype=np.float32) * (0.85 + 0.3 * ys)
    floor = np.asarray(camera.floor, dtype=np.float32) * (0.75 + 0.35 * ys)
    img = np.where(np.arange(h)[:, None, None] < horizon, wall, floor)
    img = np.broadcast_to(img, (h, w, 3)).copy()
    texture = np.asarray(camera.texture_colour, dtype=np.float32)
    period = max(2, int(round(camera.texture_period * w)))
    offset = int(rng.integers(period))
    line = max(1, w // 24)
    if camera.texture == "stripes":
        columns = (np.arange(w) + offset) % period < period // 3
        img[:horizon, columns] = 0.5 * img[:horizon, columns] + 0.5 * texture
    elif camera.texture == "tiles":
        columns = (np.arange(w) + offset) % period < line
        rows = (np.arange(h) - horizon) % max(2, period // 2) < line
        img[horizon:][rows[horizon:]] = texture
        img[horizon:, columns] = texture
    elif camera.texture == "clutter":
        for _ in range(int(rng.integers(2, 5))):
            x0, y0 = int(rng.integers(w)), int(rng.integers(max(1, horizon)))
            bw, bh = int(rng.integers(w // 8, w // 3)), int(rng.integers(h // 10, h // 3))
            shade = texture * rng.uniform(0.6, 1.3)
            img[y0 : y0 + bh, x0 : x0 + bw] = np.clip(shade, 0.0, 1.0)
    return img


def render_image(
    identity: IdentitySpec,
    outfit: OutfitSpec,
    camera: CameraSpec,
    rng: np.random.Generator,
    size: tuple,
) -> Image.Image:
    """One RGB image of ``size`` = (height, width). The draws from ``rng`` do not depend on the
    outfit, so the same stream shows the same pose and scene whatever the person wears."""
    return _render(identity, outfit, camera, rng, size, with_parts=False)[0]


def render_image_with_parts(
    identity: IdentitySpec,
    outfit: OutfitSpec,
    camera: CameraSpec,
    rng: np.random.Generator,
    size: tuple,
) -> tuple[Image.Image, np.ndarray]:
    """:func:`render_image`'s image (the same pixels for the same stream) and its part map:
    uint8 (height, width) of the labels above (0 background, SKIN ... BAG, TOP_PATTERN,
    BOTTOM_PATTERN, MIXED at edges), so a garment's rendered pixels can be found."""
    return _render(identity, outfit, camera, rng, size, with_parts=True)


def _render(
    identity: IdentitySpec,
    outfit: OutfitSpec,
    camera: CameraSpec,
    rng: np.random.Generator,
    size: tuple,
    with_parts: bool,
) -> tuple[Image.Image, Optional[np.ndarray]]:
    pose = sample_pose(camera, rng, size)
    background = render_background(camera, rng, size)
    gain = camera.brightness * rng.uniform(0.92, 1.08)
    sigma = camera.blur * size[0] / 128.0 * rng.uniform(0.8, 1.2)
    noise = rng.normal(0.0, camera.noise, (size[0], size[1], 3))

    canvas = (size[0] * SUPERSAMPLE, size[1] * SUPERSAMPLE)
    person, alpha, parts = _paint(identity, outfit, camera, pose, canvas)
    img = background * (1.0 - alpha[..., None]) + person
    img = img * (gain * np.asarray(camera.cast, dtype=np.float32))
    pil = Image.fromarray(np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8), "RGB")
    if sigma > 0.2:
        pil = pil.filter(ImageFilter.GaussianBlur(radius=sigma))
    noisy = np.asarray(pil, dtype=np.float32) + noise * 255.0
    img = Image.fromarray(np.clip(noisy + 0.5, 0, 255).astype(np.uint8), "RGB")
    return img, (_reduce_parts(parts) if with_parts else None)
