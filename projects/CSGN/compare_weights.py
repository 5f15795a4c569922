"""Which tensors two weight files hold differently, and by how much.

    python projects/CSGN/compare_weights.py A.pt B.pt

For each tensor both files hold (flat state dicts, or ``{"state_dict": ...}``): equal bit for
bit, or the number of rows (first dimension) that differ and the largest difference relative to
B's value. Used to check that a change to SynthCLIP's training left the towers' weights as they
were (projects/CSGN/README, "SynthCLIP").
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from csgn_plugin.compat import load_checkpoint  # noqa: E402


def state_dict(path: str) -> dict:
    checkpoint = load_checkpoint(path)
    return checkpoint.get("state_dict", checkpoint)


def compare(a: dict, b: dict) -> list[str]:
    """One line per tensor of either file, in B's order, then the names only one file holds."""
    lines = []
    for name, theirs in b.items():
        if name not in a:
            continue
        ours = a[name]
        if ours.shape != theirs.shape:
            lines.append(f"{name}: shapes differ, {tuple(ours.shape)} vs {tuple(theirs.shape)}")
        elif torch.equal(ours, theirs):
            lines.append(f"{name}: equal")
        else:
            diff = (ours.float() - theirs.float()).abs()
            rows = int((diff.reshape(len(diff), -1).amax(1) > 0).sum()) if diff.ndim else 1
            relative = float((diff / theirs.float().abs().clamp_min(1e-12)).max())
            lines.append(
                f"{name}: {rows} of {len(diff) if diff.ndim else 1} rows differ, "
                f"largest relative difference {relative:.2e}"
            )
    for name in sorted(set(a) ^ set(b)):
        lines.append(f"{name}: only in {'A' if name in a else 'B'}")
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("a", help="weight file A")
    p.add_argument("b", help="weight file B (relative differences are to its values)")
    args = p.parse_args(argv)
    lines = compare(state_dict(args.a), state_dict(args.b))
    equal = sum(line.endswith(": equal") for line in lines)
    print(f"{equal} of {len(lines)} tensors equal bit for bit")
    print("\n".join(line for line in lines if not line.endswith(": equal")))


if __name__ == "__main__":
    main()
