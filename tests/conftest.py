"""Shared test set-up: the plugin registered, torch on one thread, deterministic seeds."""

import random

import numpy as np
import pytest
import torch

import csgn_plugin  # noqa: F401  (registers datasets and models with torchreid)

torch.set_num_threads(1)  # small ops on a shared 2-core CPU run faster single-threaded


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
