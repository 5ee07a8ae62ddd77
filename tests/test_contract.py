"""engine/contract.py: the one input check of every backend, and no import circle (the contract
imports neither backend). That the ONNX and torch backends satisfy ``Backend`` and reject the same
bad inputs the same way: tests/test_backends.py (it needs an exported model directory)."""
import ast
from pathlib import Path

import numpy as np
import pytest

from engine.contract import BackendError, BackendInputError, InputSpec
from engine.manifest import Manifest

ROOT = Path(__file__).resolve().parents[1]


def _spec(conditioning="film"):
    cfg = {"n_mels": 80, "patch": 16, "max_frames": 800, "d_model": 64, "text_dim": 384, "conditioning": conditioning}
    return InputSpec(Manifest(Path("."), {"config": cfg}))


def test_input_spec_casts_good_inputs():
    s = _spec()
    x = s.logmel(np.zeros((2, 80, 160), np.float64))
    assert x.dtype == np.float32 and x.flags.c_contiguous and x.shape == (2, 80, 160)
    assert s.tokens(np.zeros((1, 250, 64), np.float16), one=True).dtype == np.float32
    assert s.cond(np.zeros((3, 384), np.float64)).dtype == np.float32
    c = _spec("class")
    assert c.cond(np.array([0, 3], np.int32)).dtype == np.int64


@pytest.mark.parametrize("method,arg,match", [
    ("logmel", np.zeros((80, 160), np.float32), r"\(B, 80, T\)"),
    ("logmel", np.zeros((1, 64, 160), np.float32), r"got \(1, 64, 160\)"),
    ("logmel", np.zeros((1, 80, 150), np.float32), "multiple of 16"),
    ("logmel", np.zeros((1, 80, 816), np.float32), "up to 800"),
    ("logmel", np.zeros((1, 80, 0), np.float32), "multiple of 16"),
    ("logmel", np.array([[["a"] * 16] * 80]), "real numeric"),
    ("tokens", np.zeros((1, 250, 32), np.float32), r"\(B, P, 64\)"),
    ("tokens", np.zeros((1, 7, 64), np.float32), "multiple of 5"),
    ("cond", np.zeros((2, 100), np.float32), r"\(N, 384\)"),
    ("cond", np.array([0, 1]), "float vectors"),
])
def test_input_spec_rejects(method, arg, match):
    with pytest.raises(BackendInputError, match=match) as e:
        getattr(_spec(), method)(arg)
    assert isinstance(e.value, BackendError) and isinstance(e.value, ValueError)


def test_input_spec_class_ids():
    c = _spec("class")
    for bad in (np.array([0.0, 1.0]), np.zeros((2, 384), np.float32), np.array([4]), np.array([-1]),
                np.zeros(0, np.int64)):
        with pytest.raises(BackendInputError):
            c.cond(bad)


def test_contract_imports_no_backend():
    """No circle: the contract imports neither backend; both backends import the contract."""
    def imported(name):
        tree = ast.parse((ROOT / "engine" / f"{name}.py").read_text())
        return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}

    assert not {"backends", "torch_backend"} & imported("contract")
    assert "contract" in imported("backends") and "contract" in imported("torch_backend")
    assert "backends" not in imported("torch_backend")
