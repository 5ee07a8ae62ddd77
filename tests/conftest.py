import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def wait_until(cond, timeout, interval=0.01, what=None):
    """Poll ``cond()`` every ``interval`` s; return its (truthy) value as soon as it has one, or fail
    the test after ``timeout`` s, naming ``what`` (default: the condition's source). Tests import it
    with ``from conftest import wait_until``: for waiting on an event instead of a fixed sleep."""
    t_end = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() >= t_end:
            pytest.fail(f"timed out after {timeout} s waiting for {what or _describe(cond)}")
        time.sleep(interval)


def _describe(cond):
    import inspect

    try:
        return inspect.getsource(cond).strip()
    except (OSError, TypeError):
        return repr(cond)


@pytest.fixture(autouse=True)
def _torch_threads():
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    yield


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def tone_mix(sr=16000, seconds=3.0, freqs=(220.0, 330.0), seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * seconds)) / sr
    x = sum(np.sin(2 * np.pi * f * t) for f in freqs) * 0.2 + 0.01 * rng.standard_normal(t.size)
    return x.astype(np.float32)


@pytest.fixture(scope="session")
def server_assets(tmp_path_factory):
    """A real model directory (fresh micro checkpoint, exported) and real stem libraries, built
    once per session under pytest's tmp dir; see tests/server_assets.py."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from server_assets import build_server_assets

    return build_server_assets(tmp_path_factory.mktemp("server_assets"))


@pytest.fixture
def ctx():
    """A ZeroMQ context for one test, destroyed (every socket closed, no linger) after it."""
    import zmq

    c = zmq.Context()
    yield c
    c.destroy(linger=0)
