"""Shared fixtures of the test suite.

- `one_thread`: torch on one thread for the test (on a shared 2-core machine oversubscribed BLAS
  threads make tiny matmuls up to a hundred times slower).
- `tiny_replica`: a hand-made Replica-layout folder (tests/tiny_scene.py) and what was written.
- `tiny_renderer_f64`: a small coarse + fine NeRF with random weights, float64, eval mode.
Tests that run whole pipelines carry the `slow` marker (`-m "not slow"` skips them; CI runs all).
The frame cache (datasets/frame_cache.py) of every scene a test loads goes to a temporary folder
of the session (JNERF_CACHE_DIR, inherited by the main.py child processes), removed at the end.
"""
import os
import shutil
import tempfile

import pytest
import torch

from tests.tiny_models import tiny_renderer
from tests.tiny_scene import write_tiny_replica


_CACHE = tempfile.mkdtemp(prefix="jnerf_test_cache_")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end runs of main.py stages (seconds to a minute each)")
    os.environ["JNERF_CACHE_DIR"] = _CACHE


def pytest_unconfigure(config):
    shutil.rmtree(_CACHE, ignore_errors=True)


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny_replica(tmp_path):
    root = tmp_path / "scene"
    info = write_tiny_replica(str(root))
    return root, info


@pytest.fixture
def tiny_renderer_f64():
    return tiny_renderer()
