"""Parse one clothes-changing dataset and compare its statistics with the official counts.

    python tools/check_dataset.py ltcc --root /data/reid [--ltcc_train_ids cc] [--name_policy skip]

Prints ids, images, cameras and outfits per split (and over all splits), flags every difference
from the counts the dataset class declares (``official_counts``), exits 1 on a layout error or a
bad option (message on stderr), 0 otherwise (differences are reported, not fatal). Options are
the keys of the ``cc_data`` config section.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from csgn_plugin.config import get_default_config  # noqa: E402
from csgn_plugin.data.base import DatasetLayoutError, split_statistics  # noqa: E402
from csgn_plugin.data.datasets import IMAGE_DATASETS, VIDEO_DATASETS  # noqa: E402

STATS = ("ids", "images", "cameras", "outfits")


def parse_options(pairs: list[str]) -> dict:
    """``--key value`` pairs -> kwargs typed like the ``cc_data`` defaults."""
    defaults = get_default_config().cc_data
    if len(pairs) % 2 or any(not k.startswith("--") for k in pairs[0::2]):
        raise ValueError(f"options must come as '--key value' pairs, got {pairs}")
    options = {}
    for flag, value in zip(pairs[0::2], pairs[1::2]):
        key = flag[2:]
        if key not in defaults:
            raise ValueError(f"unknown option '--{key}'; known: {', '.join(sorted(defaults))}")
        kind = type(defaults[key])
        if kind is bool:
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"--{key} expects true or false, got '{value}'")
            options[key] = value.lower() in ("true", "1")
        else:
            try:
                options[key] = kind(value)
            except ValueError:
                raise ValueError(f"--{key} expects a {kind.__name__}, got '{value}'") from None
    return options


def all_statistics(dataset: object, train: list) -> dict:
    """Totals over the splits: training and test ids are disjoint, so ids add up."""
    test = [*dataset.query, *dataset.gallery]
    return {
        "ids": len({i[1] for i in train}) + len({i[1] for i in test}),
        "images": len(train) + len(test),
        "cameras": len({i[2] for i in (*train, *test)}),
        "outfits": len({i[4] for i in train}) + len({i[4] for i in test}),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    names = sorted({**IMAGE_DATASETS, **VIDEO_DATASETS})
    parser.add_argument("name", choices=names)
    parser.add_argument("--root", required=True, help="folder that holds the dataset folder")
    args, rest = parser.parse_known_args(argv)
    try:
        options = parse_options(rest)
        cls = IMAGE_DATASETS.get(args.name) or VIDEO_DATASETS[args.name]
        if args.name in VIDEO_DATASETS:
            options["transform"] = lambda frame: frame  # never applied: nothing is loaded
        dataset = cls(root=args.root, mode="train", verbose=False, **options)
    except (DatasetLayoutError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    # video statistics count tracklets, before training chunks
    train = getattr(dataset, "train_videos", dataset.train)
    stats = {
        "train": split_statistics(train),
        "query": split_statistics(dataset.query),
        "gallery": split_statistics(dataset.gallery),
        "all": all_statistics(dataset, train),
    }
    official = getattr(cls, "official_counts", {})
    print(f"{args.name} ({cls.__name__}) at '{dataset.dataset_dir}'")
    print(f"protocols: {', '.join(cls.protocols)}")
    print(f"{'split':<8} " + " ".join(f"{s:>9}" for s in STATS))
    for split, values in stats.items():
        print(f"{split:<8} " + " ".join(f"{values[s]:9d}" for s in STATS))
    differences = [
        f"{split} {stat}: found {stats[split][stat]}, official {expected}"
        for split, counts in official.items()
        for stat, expected in counts.items()
        if stats[split][stat] != expected
    ]
    checked = sum(len(c) for c in official.values())
    print(f"official counts checked: {checked}, differences: {len(differences)}")
    for line in differences:
        print(f"  DIFFERS  {line}")
    note = getattr(cls, "official_note", "")
    if note:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
