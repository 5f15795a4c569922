"""Evaluate a checkpoint under the clothes-changing protocols.

    python tools/test.py --config-file configs/csgn_ltcc.yaml model.load_weights PATH \
        [test.visrank True] [test.rerank True] [KEY VALUE ...]
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from csgn_plugin.launcher import main  # noqa: E402

if __name__ == "__main__":
    main(test_only=True)
