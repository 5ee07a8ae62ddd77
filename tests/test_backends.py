"""engine.backends over exported model directories: every CPU kind agrees with torch fp32, the
ONNX path does not import torch, pool() equals training.model.pool_embedding."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from tests.test_export import micro_dir, tiny_dir  # noqa: E402,F401  (session fixtures)

ROOT = Path(__file__).resolve().parents[1]


def test_pool_matches_training(rng):
    from engine.backends import pool
    from training.model import pool_embedding

    t = rng.standard_normal((3, 250, 64)).astype(np.float32) * 2 + 0.5
    np.testing.assert_allclose(pool(t), pool_embedding(torch.from_numpy(t)).numpy(), atol=1e-5)


@pytest.mark.parametrize("kind,tol", [("onnx-fp32", 1e-4), ("onnx-fp16", 0.999), ("onnx-int8", 0.99),
                                      ("torch-bf16", 0.99)])
def test_backends_agree_with_torch(micro_dir, kind, tol):
    from engine.backends import load_backend

    ref = load_backend(micro_dir, kind="torch-fp32")
    b = load_backend(micro_dir, kind=kind)
    assert b.name == kind and b.manifest.fingerprint == ref.manifest.fingerprint
    x = (-4 + 3 * np.random.default_rng(1).standard_normal((2, 80, 800))).astype(np.float32)
    names = ["bass", "warm synth pad", "drums"]
    c = b.condition(names)
    assert c.shape == (3, 384)
    np.testing.assert_allclose(c, ref.condition(names), atol=1e-6)
    t, tr = b.encode(x), ref.encode(x)
    assert t.shape == (2, 250, 64)
    e, er = b.predict(t[:1], c), ref.predict(tr[:1], c)
    assert e.shape == (3, 64)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-3)
    bt = b.beats(t[:, -5:])
    assert bt.shape == (2, 8) and bt.min() >= 0 and bt.max() <= 1
    if kind == "onnx-fp32":
        np.testing.assert_allclose(t, tr, atol=tol)
        np.testing.assert_allclose(e, er, atol=tol)
        np.testing.assert_allclose(b.encode_target(x), ref.encode_target(x), atol=tol)
    else:
        assert np.sum(e * er, axis=1).min() >= tol
    # shorter windows (T multiple of 16) work
    assert b.encode(x[:1, :, :160]).shape == (1, 50, 64)


def test_default_kind_and_errors(micro_dir, tmp_path):
    from engine.backends import BackendError, CPU_ORDER, available_kinds, load_backend
    from engine.manifest import load_manifest

    m = load_manifest(micro_dir)
    kinds = available_kinds(m, "cpu")
    assert load_backend(micro_dir).name == kinds[0] == CPU_ORDER[0]
    with pytest.raises(BackendError, match="unknown backend kind"):
        load_backend(micro_dir, kind="magic")
    with pytest.raises(BackendError, match="CUDAExecutionProvider|TensorrtExecutionProvider"):
        import onnxruntime as ort

        if "CUDAExecutionProvider" in ort.get_available_providers():
            pytest.skip("CUDA present")
        load_backend(micro_dir, device="cuda:0", kind="onnx-cuda-fp32")


@pytest.mark.slow
def test_onnx_path_does_not_import_torch(micro_dir):
    code = (
        "import sys, numpy as np\n"
        "import engine.backends as eb\n"
        f"b = eb.load_backend({str(micro_dir)!r}, kind='onnx-int8')\n"
        "c = b.condition(['bass', 'a never seen instrument'])\n"
        "t = b.encode(np.zeros((1, 80, 800), np.float32))\n"
        "e = b.predict(t, c); a = b.beats(t[:, -5:])\n"
        "assert e.shape == (2, 64)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'training' not in sys.modules\n"
        "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


#: a call and one bad argument list each (None: the backend's own conditioning of "bass")
BAD_INPUTS = {
    "encode": [np.zeros((1, 64, 160), np.float32)],  # 64 mel bands
    "encode_target": [np.zeros((1, 80, 100), np.float32)],  # T not a multiple of 16
    "predict": [np.zeros((2, 50, 64), np.float32), None],  # two windows: the predictor takes one
    "predict ": [np.zeros((1, 50, 64), np.float32), np.zeros((2, 7), np.float32)],  # cond width 7
    "beats": [np.zeros((1, 50, 63), np.float32)],  # width 63
    "beats ": [np.array([["x"] * 64] * 50)[None]],  # strings
}


def test_onnx_and_torch_backends_share_the_contract(micro_dir):
    """Both satisfy engine.contract.Backend and reject the same bad inputs with the same
    BackendError (engine.contract.InputSpec), before any graph runs."""
    from engine.backends import load_backend
    from engine.contract import Backend, BackendError, StreamingBackend

    backends = [load_backend(micro_dir, kind=k) for k in ("onnx-fp32", "torch-fp32")]
    cond = backends[0].condition(["bass"])
    messages = []
    for b in backends:
        assert isinstance(b, Backend) and isinstance(b, StreamingBackend), b
        got = {}
        for call, args in BAD_INPUTS.items():
            args = [cond if a is None else a for a in args]
            with pytest.raises(BackendError) as e:
                getattr(b, call.strip())(*args)
            assert isinstance(e.value, ValueError)  # BackendInputError: a bad argument
            got[call] = str(e.value)
        messages.append(got)
    assert messages[0] == messages[1]
    x = np.zeros((1, 80, 160), np.float32)
    e0, e1 = (b.predict(b.encode(x), cond) for b in backends)
    assert e0.shape == e1.shape == (1, 64)
