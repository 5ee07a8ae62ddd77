"""The base install has no ONNX Runtime (it comes with the ``cpu`` or ``gpu`` extra): the shipped
text encoder then runs in numpy (engine.onnxlite), and the server conditions on any instrument
name. Checked against ONNX Runtime on the same file, and end to end with onnxruntime hidden."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.onnxlite import Graph, OnnxLiteError
from engine.text import OnnxText, TextEncoderError

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "engine" / "assets" / "model"
ENV = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
NAMES = ["upright bass", "theremin", "drums", "a warm synth pad", "fretless bass", "tubular bells",
         "distorted electric guitar with lots of feedback and a very long name that gets truncated at 32 tokens"]
needs_model = pytest.mark.skipif(not (MODEL / "text_encoder.onnx").is_file(), reason="no shipped text encoder")


@needs_model
def test_numpy_runner_agrees_with_onnx_runtime():
    pytest.importorskip("onnxruntime")
    tok = MODEL / "tokenizer.json"
    ref = OnnxText(MODEL / "text_encoder.onnx", tok, runtime="onnxruntime")
    mine = OnnxText(MODEL / "text_encoder.onnx", tok, runtime="numpy")
    assert mine.runtime == "numpy" and ref.runtime == "onnxruntime" and mine.dim == ref.dim == 384
    a, b = mine.encode(NAMES), ref.encode(NAMES)
    assert a.shape == (len(NAMES), 384) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert np.min(np.sum(a * b, axis=1)) > 0.9999
    assert np.abs(a - b).max() < 1e-4
    # different names give different vectors (not a constant output)
    assert np.sum(a[0] * a[1]) < 0.95


def test_unknown_operator_and_bad_file_are_refused(tmp_path):
    bad = tmp_path / "x.onnx"
    bad.write_bytes(b"\x00\x01garbage")
    with pytest.raises(OnnxLiteError):
        Graph(bad)
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    g = helper.make_graph([helper.make_node("Celu", ["x"], ["y"])], "g", [x], [y])
    p = tmp_path / "celu.onnx"
    onnx.save(helper.make_model(g), str(p))
    with pytest.raises(OnnxLiteError, match="Celu"):
        Graph(p)
    with pytest.raises(TextEncoderError, match="runtime"):
        OnnxText(p, p, runtime="tensorflow")


def test_small_graph_matches_onnx_reference(tmp_path):
    """Ops with attributes and initialisers, compared with onnx's own reference evaluator."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("LayerNormalization", ["h", "g", "b"], ["n"], axis=-1, epsilon=1e-5),
             helper.make_node("Softmax", ["n"], ["s"], axis=-1),
             helper.make_node("Transpose", ["s"], ["t"], perm=[1, 0]),
             helper.make_node("Unsqueeze", ["t", "ax"], ["u"]),
             helper.make_node("ReduceSum", ["u", "ax2"], ["y"], keepdims=0)]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.ones(3, np.float32), "g"),
             numpy_helper.from_array(np.full(3, 0.5, np.float32), "b"),
             numpy_helper.from_array(np.array([0], np.int64), "ax"),
             numpy_helper.from_array(np.array([2], np.int64), "ax2")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    p = tmp_path / "g.onnx"
    onnx.save(m, str(p))
    x = rng.standard_normal((2, 4)).astype(np.float32)
    (want,) = ReferenceEvaluator(m).run(None, {"x": x})
    (got,) = Graph(p).run({"x": x})
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@needs_model
def test_base_install_conditions_on_any_name_without_onnxruntime():
    """As after a plain ``pip install .``: onnxruntime absent, the backend is torch, and names
    outside the model directory's cache are encoded by the numpy runner."""
    code = (
        "import json, numpy as np\n"
        "import importlib.util\n"
        "assert importlib.util.find_spec('onnxruntime') is None\n"
        "from engine.backends import load_backend\n"
        f"b = load_backend({str(MODEL)!r}, threads=1)\n"
        "v = np.asarray(b.condition(['upright bass', 'theremin']))\n"
        "print(json.dumps({'backend': b.name, 'shape': list(v.shape), 'vec': v.tolist()}))\n")
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "hide_modules.py"), "onnxruntime", "-c", code],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["backend"].startswith("torch"), out["backend"]
    assert out["shape"][0] == 2
    pytest.importorskip("onnxruntime")
    from engine.backends import load_backend

    ref = np.asarray(load_backend(MODEL, kind=out["backend"], threads=1).condition(["upright bass", "theremin"]))
    np.testing.assert_allclose(np.asarray(out["vec"]), ref, atol=1e-4)
