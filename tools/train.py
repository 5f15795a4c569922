"""Train a torchreid model or CSGN on clothes-changing data.

python tools/train.py --config-file configs/csgn_ltcc.yaml [KEY VALUE ...] [--debug]
torchrun --nproc_per_node=N tools/train.py --config-file ... [KEY VALUE ...]

An error you can fix ends the command with one line on stderr and exit code 2 (``--debug``: with
its traceback); the run's log file keeps the traceback.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _cli import run  # noqa: E402

from csgn_plugin.launcher import main as launch  # noqa: E402


def main(argv: list[str]) -> None:
    launch(argv)


if __name__ == "__main__":
    sys.exit(run(main))
