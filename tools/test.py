"""Evaluate a checkpoint under the clothes-changing protocols.

    python tools/test.py --config-file configs/csgn_ltcc.yaml model.load_weights PATH \
        [test.visrank True] [test.rerank True] [KEY VALUE ...] [--debug]

Without ``model.load_weights`` it refuses, unless ``test.allow_untrained True`` asks to evaluate
the model as initialised. An error you can fix ends the command with one line on stderr and exit
code 2 (``--debug``: with its traceback).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _cli import run  # noqa: E402

from csgn_plugin.launcher import main as launch  # noqa: E402


def main(argv: list[str]) -> None:
    launch(argv, test_only=True)


if __name__ == "__main__":
    sys.exit(run(main))
