"""Train a torchreid model or CSGN on clothes-changing data.

python tools/train.py --config-file configs/csgn_ltcc.yaml [KEY VALUE ...]
torchrun --nproc_per_node=N tools/train.py --config-file ... [KEY VALUE ...]
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from csgn_plugin.launcher import main  # noqa: E402

if __name__ == "__main__":
    main()
