"""Fetch a public clothes-changing dataset or a CLIP-ReID model from Google Drive (with gdown).

    python tools/download.py NAME --root DIR [--archive FILE] [--no-check]
    python tools/download.py list

A dataset is downloaded into DIR/archives/ (resumable: run the same command again after an
interruption), verified, unpacked into DIR/<its folder> and checked like tools/check_dataset.py
does; a CLIP-ReID model is written to DIR/clipreid/NAME.pth and verified to load. What is
already there is reported, not fetched again. Without network it stops at once and says where
to fetch the file by hand; pass that file with --archive FILE. Exits 2 on any failure (the
message on stderr; ``--debug``: with its traceback). Design and sources:
csgn_plugin/data/download.py.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _cli import DEBUG_HELP, run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="'list' prints every NAME with what it is and where it comes from.",
        allow_abbrev=False,
    )
    parser.add_argument("name", help="what to fetch (e.g. ccvid, last, clipreid_vitb16_msmt17)")
    parser.add_argument("--root", help="folder that holds the dataset folders (data.root)")
    parser.add_argument("--archive", help="the file fetched by hand, used instead of downloading")
    parser.add_argument(
        "--no-check", action="store_true", help="do not check the unpacked dataset afterwards"
    )
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    args = parser.parse_args(argv)
    if args.name != "list" and not args.root:
        parser.error("--root is required")

    # imported only now: importing the plugin loads torch and torchreid
    from csgn_plugin.data.download import describe_catalogue, fetch

    if args.name == "list":
        print("\n".join(describe_catalogue()))
        return 0
    fetch(args.name, args.root, archive=args.archive, check=not args.no_check)
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
