"""Convert a checkpoint released by CLIP-ReID into a plugin checkpoint.

    python tools/convert_clipreid.py IN OUT [--height 256 --width 128]
        [--norm-mean R G B] [--norm-std R G B] [--interpolation bilinear] [--sie-scale S]

IN is CLIP-ReID's saved state dict (its ViT-B/16 or RN50 model, with or without SIE and
overlapping patches). The model it implies (stride from the positional grid at the input size,
SIE cameras from the camera table, QuickGELU) is built with random towers (nothing is
downloaded), the converted weights are loaded strictly, and OUT is written atomically as
``{"state_dict", "model_spec", "converted_from"}``, which tools/test.py and the extractor
rebuild with no config. Input options default to CLIP-ReID's configs for the file's tower
(256x128; mean/std 0.5 for the ViT, ImageNet's for the RN50; bilinear test resize); the SIE scale
is not in the file (see csgn_plugin.modeling.clipreid_format). Prints the spec; exits 2 with the
reason on stderr when IN is missing, not CLIP-ReID's or does not fit (``--debug``: with its
traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _cli import DEBUG_HELP, run  # noqa: E402

from csgn_plugin.compat import load_checkpoint  # noqa: E402
from csgn_plugin.errors import CheckpointMismatchError  # noqa: E402
from csgn_plugin.fileio import atomic_save  # noqa: E402
from csgn_plugin.modeling.clipreid_format import (  # noqa: E402
    clipreid_model_spec,
    convert_clipreid_state_dict,
    is_clipreid_state_dict,
)
from csgn_plugin.modeling.spec import INTERPOLATIONS, ModelSpec, build_model_from_spec  # noqa: E402
from csgn_plugin.modeling.weights import extract_state_dict, load_model_weights  # noqa: E402


def convert(src: str, dst: str, input: dict | None = None, sie_scale: float | None = None):
    """Write the plugin checkpoint of CLIP-ReID file ``src`` to ``dst``; returns its spec."""
    state = extract_state_dict(load_checkpoint(src), src)
    if not is_clipreid_state_dict(state):
        raise CheckpointMismatchError(
            f"'{src}' is not a CLIP-ReID checkpoint (no image_encoder.*, bottleneck_proj.* and "
            "prompt_learner.cls_ctx keys)"
        )
    spec: ModelSpec = clipreid_model_spec(state, input, sie_scale, f"'{src}'")
    model = build_model_from_spec(spec)
    load_model_weights(model, convert_clipreid_state_dict(state, f"'{src}'"), "strict", src)
    atomic_save(
        {
            "state_dict": model.state_dict(),
            "model_spec": spec.to_dict(),
            "converted_from": {"format": "CLIP-ReID", "file": os.path.basename(src)},
        },
        dst,
    )
    return spec


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", metavar="IN", help="CLIP-ReID checkpoint (a state dict)")
    parser.add_argument("dst", metavar="OUT", help="plugin checkpoint to write")
    parser.add_argument("--height", type=int, help="input height (CLIP-ReID: 256)")
    parser.add_argument("--width", type=int, help="input width (CLIP-ReID: 128)")
    parser.add_argument("--norm-mean", type=float, nargs=3, metavar=("R", "G", "B"))
    parser.add_argument("--norm-std", type=float, nargs=3, metavar=("R", "G", "B"))
    parser.add_argument("--interpolation", choices=INTERPOLATIONS)
    parser.add_argument(
        "--sie-scale", type=float, help="SIE coefficient (default: 1.0 at stride 12, else 3.0)"
    )
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = {
        "height": args.height,
        "width": args.width,
        "norm_mean": args.norm_mean,
        "norm_std": args.norm_std,
        "interpolation": args.interpolation,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    spec = convert(args.src, args.dst, overrides, args.sie_scale)
    print(json.dumps(spec.to_dict(), indent=2))
    print(f"=> wrote '{args.dst}'")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
