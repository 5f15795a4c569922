"""Measure a SynthCLIP's premise on the held-out corpus images: retrieval and the colour probe.

    python tools/probe_synthclip.py [--root reid-data] [--tower both] [--weights FILE] [--k 20]

For each tower, the weights are ``--weights`` (one tower only) or the cache entry of the default
settings (pretrained first if missing, as tools/pretrain_clip.py would). Prints a table (the
tower's numbers, the same architecture with random weights, and chance) and writes
``probe.json`` and ``probe.txt`` next to the weights (or into ``--out``). An error you can fix
(a missing weight file, bad options) ends the command with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from _cli import DEBUG_HELP, run  # noqa: E402

from csgn_plugin.errors import CheckpointNotFoundError, ConfigError  # noqa: E402
from csgn_plugin.pretraining import default_settings, ensure_synthclip  # noqa: E402
from csgn_plugin.pretraining.probe import probe_weights  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="reid-data", help="data root (as data.root)")
    parser.add_argument("--tower", choices=("vit", "rn", "both"), default="both")
    parser.add_argument("--weights", default="", help="a SynthCLIP file (one tower only)")
    parser.add_argument("--corpus", default="default", help="captioned-corpus preset")
    parser.add_argument("--corpus-seed", type=int, default=0)
    parser.add_argument("--k", type=int, default=20, help="precision at k of the colour probe")
    parser.add_argument("--out", default="", help="folder for probe.json / probe.txt")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    towers = ("vit", "rn") if args.tower == "both" else (args.tower,)
    if args.weights and len(towers) > 1:
        parser.error("--weights needs --tower vit or --tower rn")
    if args.weights and not os.path.isfile(args.weights):  # before the corpus is generated
        raise CheckpointNotFoundError(
            f"--weights: SynthCLIP weight file not found: '{args.weights}'"
        )
    for tower in towers:
        try:
            settings = default_settings(tower, corpus=args.corpus, corpus_seed=args.corpus_seed)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        weights = args.weights or ensure_synthclip(args.root, tower, settings)
        out_dir = args.out or os.path.dirname(os.path.abspath(weights))
        if args.out and len(towers) > 1:  # one folder per tower
            out_dir = os.path.join(args.out, tower)
        probe_weights(args.root, tower, weights, settings, args.k, out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
