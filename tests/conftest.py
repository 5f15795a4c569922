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

torch.set_num_threads(1)  # small ops on a shared 2-core CPU run faster single-threaded


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
