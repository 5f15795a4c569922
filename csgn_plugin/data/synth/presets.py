"""Size presets of SynthCC: how many identities, outfits, cameras and images a tree holds."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ...errors import ConfigError


@dataclass(frozen=True)
class SynthSpec:
    """The shape of one generated SynthCC tree. Ranges are inclusive ``(low, high)``."""

    num_train_ids: int
    num_test_ids: int
    num_cameras: int
    #: outfits of a clothes-changing identity (a same-clothes identity has exactly one)
    outfits_per_id: tuple[int, int]
    #: fraction of the identities of each split that keep one outfit (LTCC: 31 of 77 train ids)
    same_clothes_fraction: float
    #: distinct cameras each (identity, outfit) is seen by
    cameras_per_outfit: tuple[int, int]
    #: images per (identity, outfit, camera); at least 2, so a query's tracklet stays in the gallery
    images_per_camera: tuple[int, int]
    #: (height, width) of every image
    image_size: tuple[int, int]
    #: fraction of outfits drawn from a pool that several identities share (hard negatives)
    shared_outfit_fraction: float
    #: number of outfits in that shared pool
    shared_outfit_pool: int

    def __post_init__(self) -> None:
        def fail(field: str, expected: str) -> None:
            raise ValueError(f"SynthSpec.{field} = {getattr(self, field)!r}: expected {expected}")

        for field in ("num_train_ids", "num_test_ids"):
            if getattr(self, field) < 1:
                fail(field, "at least 1")
        if self.num_train_ids + self.num_test_ids > 1000:
            fail("num_test_ids", "num_train_ids + num_test_ids <= 1000 (pids have 3 digits)")
        if self.num_cameras < 2:
            fail("num_cameras", "at least 2 (retrieval needs a second camera)")
        for field, low in (
            ("outfits_per_id", 2),
            ("cameras_per_outfit", 1),
            ("images_per_camera", 2),
        ):
            lo, hi = getattr(self, field)
            if not low <= lo <= hi:
                fail(field, f"a range (low, high) with {low} <= low <= high")
        if self.cameras_per_outfit[1] > self.num_cameras:
            fail("cameras_per_outfit", f"at most num_cameras = {self.num_cameras} cameras")
        for field in ("same_clothes_fraction", "shared_outfit_fraction"):
            if not 0.0 <= getattr(self, field) <= 1.0:
                fail(field, "a fraction in [0, 1]")
        height, width = self.image_size
        if height < 32 or width < 16:
            fail("image_size", "(height, width) of at least (32, 16)")
        if self.shared_outfit_pool < self.outfits_per_id[1]:
            fail("shared_outfit_pool", "at least outfits_per_id's high end")


PRESETS: dict[str, SynthSpec] = {
    # unit tests: about 200 images, generated in well under a second
    "tiny": SynthSpec(
        num_train_ids=8,
        num_test_ids=6,
        num_cameras=4,
        outfits_per_id=(2, 3),
        same_clothes_fraction=0.25,
        cameras_per_outfit=(2, 3),
        images_per_camera=(2, 3),
        image_size=(64, 32),
        shared_outfit_fraction=0.3,
        shared_outfit_pool=6,
    ),
}
# the README demo: about 1,800 train images at 128x64, small enough for a few CPU epochs.
# Many identities with few images each (120 train ids, 2-4 images per camera): identity cues
# only generalise to unseen test ids when a model has seen many people (LTCC has 77)
PRESETS["default"] = SynthSpec(
    num_train_ids=120,
    num_test_ids=30,
    num_cameras=6,
    outfits_per_id=(2, 3),
    same_clothes_fraction=0.4,
    cameras_per_outfit=(2, 3),
    images_per_camera=(2, 4),
    image_size=(128, 64),
    shared_outfit_fraction=0.25,
    shared_outfit_pool=26,
)
# the accuracy study: default's people, cameras and images, but most outfits come from a pool
# worn by about 15 identities each, so colour says little about who someone is. The pools of
# default and hard (26, 17) grew with the ids (150, up from 12 and 8 for 70 ids), so each pooled
# outfit is worn by about as many people as before
PRESETS["hard"] = replace(PRESETS["default"], shared_outfit_fraction=0.9, shared_outfit_pool=17)


# LTCC's size at the real configs' input: 80 train ids, 9,457 train images; 64 test ids, 492
# query and 7,156 gallery images (LTCC: 77 ids and 9,576 images; 493 and 7,050), 12 cameras,
# 256x128. For timing the real-size schedule (projects/CSGN/configs/synthcc_ltcc_size.yaml);
# rendered by one process per CPU
PRESETS["ltcc"] = SynthSpec(
    num_train_ids=80,
    num_test_ids=64,
    num_cameras=12,
    outfits_per_id=(2, 5),
    same_clothes_fraction=0.4,
    cameras_per_outfit=(2, 4),
    images_per_camera=(12, 19),
    image_size=(256, 128),
    shared_outfit_fraction=0.25,
    shared_outfit_pool=26,
)


def get_preset(preset: str) -> SynthSpec:
    """The spec of a named preset, or one clear error listing the names."""
    if preset not in PRESETS:
        raise ConfigError(
            f"unknown SynthCC preset '{preset}' (cc_data.synthcc_preset): expected one of "
            f"{', '.join(sorted(PRESETS))}"
        )
    return PRESETS[preset]
