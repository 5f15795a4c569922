"""Pretrain SynthCLIP: a small CLIP per image tower on the captioned SynthCC corpus (CPU-sized).

    python tools/pretrain_clip.py [--root reid-data] [--tower both] [--steps N] [--sequential]

Generates the captioned corpus on first use, then pretrains each tower ('vit', 'rn' or 'both':
side by side, one single-threaded process each, unless ``--sequential``) into the cache under
``<root>/synthclip/`` (an entry per corpus and settings; a complete entry is reused at once, a
killed run resumes from its last checkpoint). Prints each tower's weight files and its training
record (steps, wall time, loss curve); ``--probe`` then measures each tower on the held-out images
as tools/probe_synthclip.py does. Unset options take the project's settings
(``csgn_plugin.pretraining.default_settings``). A bad setting ends the command with one line on
stderr and exit code 2 (``--debug``: with its traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _cli import DEBUG_HELP, run  # noqa: E402

from csgn_plugin.errors import ConfigError  # noqa: E402
from csgn_plugin.pretraining import default_settings, ensure_synthclip_towers  # noqa: E402
from csgn_plugin.pretraining.cache import MANIFEST  # noqa: E402
from csgn_plugin.pretraining.probe import probe_weights  # noqa: E402

SETTING_FLAGS = {
    "steps": int,
    "batch_size": int,
    "lr": float,
    "weight_decay": float,
    "warmup_steps": int,
    "seed": int,
    "corpus": str,
    "corpus_seed": int,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="reid-data", help="data root (as data.root)")
    parser.add_argument("--tower", choices=("vit", "rn", "both"), default="both")
    for name, kind in SETTING_FLAGS.items():
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=kind, default=None, help="default: the project's"
        )
    parser.add_argument("--sequential", action="store_true", help="one tower after the other")
    parser.add_argument("--workers", type=int, default=None, help="corpus generation processes")
    parser.add_argument(
        "--checkpoint-every", type=int, default=100, help="steps between resumable checkpoints"
    )
    parser.add_argument("--probe", action="store_true", help="probe each tower afterwards")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {
        name: getattr(args, name) for name in SETTING_FLAGS if getattr(args, name) is not None
    }
    towers = ("vit", "rn") if args.tower == "both" else (args.tower,)
    try:
        settings = {tower: default_settings(tower, **overrides) for tower in towers}
    except ValueError as exc:  # the settings' own check names the field
        raise ConfigError(str(exc)) from exc
    began = time.perf_counter()
    paths = ensure_synthclip_towers(
        args.root,
        towers,
        settings,
        parallel=not args.sequential,
        workers=args.workers,
        checkpoint_every=args.checkpoint_every,
    )
    print(f"SynthCLIP: {time.perf_counter() - began:.1f} s wall for {', '.join(towers)}")
    for tower, path in paths.items():
        entry = os.path.dirname(path)
        with open(os.path.join(entry, MANIFEST), encoding="utf-8") as f:
            record = json.load(f)["training"]
        print(f"SynthCLIP {tower}: {path}  (open_clip format: open_clip.pt beside it)")
        print(f"  training record: {json.dumps(record)}")
        if args.probe:
            probe_weights(args.root, tower, path, settings[tower], k=20, out_dir=entry)
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
