"""The torch backends load the model directory's TorchScript files with torch alone (no
``training``, no ``export`` import), agree with the ONNX fp32 backend, and the export records and
checks those files."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from tests.test_export import micro_dir  # noqa: E402,F401  (session fixture)

ROOT = Path(__file__).resolve().parents[1]

_CHILD = r"""
import json, sys
import numpy as np
import engine.backends as eb
d = sys.argv[1]
ref = eb.load_backend(d, kind="onnx-fp32")
rng = np.random.default_rng(3)
x = (-4 + 3 * rng.standard_normal((2, 80, 800))).astype(np.float32)
xs = x[:1, :, :160].copy()
names = ["bass", "drums", "warm synth pad"]
out = {}
for kind in ("torch-fp32", "torch-bf16"):
    b = eb.load_backend(d, kind=kind, threads=1)
    assert b.name == kind and b.manifest.fingerprint == ref.manifest.fingerprint
    c = b.condition(names)
    t, tr = b.encode(x), ref.encode(x)
    tt, ttr = b.encode_target(x), ref.encode_target(x)
    ts_, tsr = b.encode(xs), ref.encode(xs)
    one, oner = b.encode(x[:1, :, :16].copy()), ref.encode(x[:1, :, :16].copy())
    e, er = b.predict(tr[:1], c), ref.predict(tr[:1], c)
    e1, e1r = b.predict(tr[:1], c[:1]), ref.predict(tr[:1], c[:1])
    a, ar = b.beats(tr[:, -5:]), ref.beats(tr[:, -5:])
    af, afr = b.beats(tr), ref.beats(tr)
    assert t.dtype == e.dtype == a.dtype == np.float32
    assert t.shape == (2, 250, 64) and ts_.shape == (1, 50, 64) and one.shape == (1, 5, 64)
    assert e.shape == (3, 64) and e1.shape == (1, 64) and a.shape == (2, 8) and af.shape == (2, 400)
    def cos(p, q):
        p = p.reshape(p.shape[0], -1).astype(np.float64); q = q.reshape(q.shape[0], -1).astype(np.float64)
        return float((np.sum(p * q, 1) / (np.linalg.norm(p, axis=1) * np.linalg.norm(q, axis=1))).min())
    pairs = {"encode": (t, tr), "encode_target": (tt, ttr), "encode_160": (ts_, tsr), "encode_16": (one, oner),
             "predict": (e, er), "predict_1": (e1, e1r), "beats": (a, ar), "beats_full": (af, afr)}
    out[kind] = {k: {"max_abs": float(np.abs(p - q).max()), "min_cos": cos(p, q)} for k, (p, q) in pairs.items()}
    out[kind]["norm"] = float(np.abs(np.linalg.norm(e, axis=1) - 1).max())
    out[kind]["beats_range"] = [float(af.min()), float(af.max())]
bad = sorted(m for m in sys.modules if m in ("training", "export") or m.startswith(("training.", "export.")))
out["bad_modules"] = bad
out["torch"] = "torch" in sys.modules
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def child(micro_dir):
    r = subprocess.run([sys.executable, "-c", _CHILD, str(micro_dir)], cwd=ROOT, capture_output=True, text=True,
                       timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


@pytest.mark.slow
def test_torch_kinds_import_neither_training_nor_export(child):
    assert child["torch"]
    assert child["bad_modules"] == []
    assert not any(m == "training" or m.startswith("training.") for m in child["bad_modules"])


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["torch-fp32", "torch-bf16"])
def test_torch_kinds_agree_with_onnx_fp32(child, kind):
    r = child[kind]
    assert r["norm"] < 1e-3 and 0 <= r["beats_range"][0] and r["beats_range"][1] <= 1
    for method, p in r.items():
        if not isinstance(p, dict):
            continue
        if kind == "torch-fp32":  # same fp32 function: ONNX vs TorchScript
            tol = 1e-4 if method.startswith("beats") else 2e-3
            assert p["max_abs"] <= tol and p["min_cos"] >= 0.99999, (method, p)
        else:  # bf16 weights and activations
            if method.startswith("beats"):
                assert p["max_abs"] <= 2e-2, (method, p)
            else:
                assert p["min_cos"] >= 0.99, (method, p)


def test_manifest_lists_torchscript_files(micro_dir):
    from engine.manifest import MODEL_GRAPHS, load_manifest

    m = load_manifest(micro_dir)
    assert m.data["torch"]["format"] == "torchscript" and m.data["torch"]["precisions"] == ["fp32", "bf16"]
    for g in MODEL_GRAPHS:
        for prec in ("fp32", "bf16"):
            e = m.torch_graphs[g][prec]
            assert m.torch_path(g, prec).is_file() and len(e["sha256"]) == 64
            assert e["parity"]["ok"] and len(e["parity"]["shapes"]) >= 2, (g, prec, e["parity"])
        assert m.torch_graphs[g]["fp32"]["parity"]["max_abs"] <= 1e-4
    assert m.torch_graphs["encoder"]["fp32"]["inputs"]["logmel"]["shape"] == ["B", 80, "T"]


def test_corrupt_torchscript_file_is_refused(micro_dir, tmp_path):
    import shutil

    from engine.manifest import ModelDirError, load_manifest

    d = shutil.copytree(micro_dir, tmp_path / "m")
    p = d / "predictor.bf16.ts.pt"
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0xFF
    p.write_bytes(bytes(b))
    with pytest.raises(ModelDirError, match=r"predictor.bf16.ts.pt is corrupt"):
        load_manifest(d)


def test_directory_without_torchscript_has_no_torch_kinds(micro_dir, tmp_path):
    import shutil

    from engine.backends import BackendError, available_kinds, load_backend
    from engine.manifest import load_manifest

    d = shutil.copytree(micro_dir, tmp_path / "m")
    data = json.loads((d / "manifest.json").read_text())
    del data["torch"]  # a directory exported before the TorchScript files existed
    (d / "manifest.json").write_text(json.dumps(data))
    m = load_manifest(d)
    assert not any(k.startswith("torch") for k in available_kinds(m, "cpu"))
    with pytest.raises(BackendError, match="TorchScript"):
        load_backend(d, kind="torch-bf16")


def test_torchscript_parity_failure_fails_export(tmp_path, monkeypatch, micro_dir):
    import export.core as core
    from tests.test_export import _checkpoint

    ck = _checkpoint(tmp_path / "micro.pt", "micro")
    monkeypatch.setitem(core.TOLERANCES, "bf16", {"max_abs": 1e-9, "min_cos": 1.0})
    with pytest.raises(core.ExportError, match=r"parity check failed: encoder \(torchscript bf16\)"):
        core.export_model(ck, tmp_path / "out", ("fp32",), text_from=micro_dir, log=lambda m: None)
    assert not (tmp_path / "out").exists()
