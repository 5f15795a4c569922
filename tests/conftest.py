"""Shared test set-up: the plugin registered, torch on one thread, deterministic seeds, and the
whole suite on two worker processes when pytest-xdist is installed.

The tests mirror the package (``tests/data``, ``tests/modeling``, ...); the helpers shared by all
of them (``run_helpers``, ``dataset_trees``) live here, on the import path of every test.

Tests run single-threaded, so ``python -m pytest -q`` (the whole suite, no paths given) spreads
the test files over ``min(2, cores)`` xdist workers, each file's tests on one worker (module
fixtures made once); ``-n 0`` runs them in this process, ``-n N`` on N workers, and a run of
chosen paths stays in this process unless ``-n`` asks otherwise.
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


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config):
    """Before xdist reads ``-n``: the whole suite on two workers unless ``-n`` was given."""
    whole_suite = config.args_source == pytest.Config.ArgsSource.TESTPATHS
    workers = min(2, os.cpu_count() or 1)
    if (
        workers > 1
        and "PYTEST_XDIST_WORKER" not in os.environ  # a worker itself never spreads further
        and config.pluginmanager.hasplugin("xdist")
        and config.option.numprocesses is None
        and whole_suite
        and not config.option.collectonly
        and not config.getoption("usepdb", False)
    ):
        config.option.numprocesses = workers
        if config.option.dist == "no":
            config.option.dist = "loadfile"


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
