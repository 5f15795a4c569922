"""Shared test set-up: the plugin registered, torch on one thread, deterministic seeds.

The tests mirror the package (``tests/data``, ``tests/modeling``, ...); the helpers shared by all
of them (``run_helpers``, ``dataset_trees``) live here, on the import path of every test.
"""

import os
import random
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import csgn_plugin  # noqa: E402, F401  (registers datasets and models with torchreid)
from csgn_plugin.runtime import set_cpu_numerics  # noqa: E402

# the kernels runs pin (runtime.cpu_kernels avx2), before any test computes; one thread: small
# ops on a shared 2-core CPU run faster single-threaded
set_cpu_numerics("avx2", threads=1)


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
