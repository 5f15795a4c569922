"""Parse one clothes-changing dataset and compare its statistics with the official counts.

    python tools/check_dataset.py ltcc --root /data/reid [--ltcc_train_ids cc] [--name_policy skip]

Prints ids, images, cameras and outfits per split (and over all splits), flags every difference
from the counts the dataset class declares (``official_counts``), exits 2 on a layout error or a
bad option (one line on stderr; ``--debug``: with its traceback), 0 otherwise (differences are
reported, not fatal). Options are
the keys of the ``cc_data`` config section. ``synthcc`` is generated, not checked: when its tree
is missing, the tool says so and generates it first.

The arguments are read before the plugin (and torch, some seconds) is imported, so ``--help``
and malformed options answer at once.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _cli import DEBUG_HELP, run  # noqa: E402


def option_pairs(rest: list[str]) -> list[tuple[str, str]]:
    """``['--key', 'value', ...]`` -> ``[('key', 'value'), ...]``; the keys are checked later."""
    if len(rest) % 2 or any(not k.startswith("--") for k in rest[0::2]):
        raise ValueError(f"options must come as '--key value' pairs, got {rest}")
    return [(flag[2:], value) for flag, value in zip(rest[0::2], rest[1::2])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Options: --key value, for any key of the cc_data config section "
        "(see docs/datasets.md). An unknown NAME lists the registered datasets.",
        allow_abbrev=False,
    )
    parser.add_argument("name", help="a dataset registered by csgn_plugin, e.g. ltcc, ccvid")
    parser.add_argument("--root", required=True, help="folder that holds the dataset folder")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    args, rest = parser.parse_known_args(argv)
    try:
        pairs = option_pairs(rest)
    except ValueError as exc:
        parser.error(str(exc))

    # imported only now: importing the plugin loads torch and torchreid
    from csgn_plugin.data.check import check_dataset, generation_notice, parse_options

    options = parse_options(pairs)
    notice = generation_notice(args.name, args.root, options)
    if notice:
        print(notice, flush=True)
    report = check_dataset(args.name, args.root, options)
    print("\n".join(report.lines()))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
