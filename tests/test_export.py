"""python -m export: parity per precision, manifest round trip, refusal of bad directories, text
encoder agreement, --trt refusal without CUDA. Model directories are built once per session."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from engine.manifest import ModelDirError, load_manifest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["bass", "Drums", "electric guitar"]


def _checkpoint(path, name, **over):
    from training.checkpoint import save_checkpoint
    from training.config import get_config
    from training.model import StemJEPA

    torch.manual_seed(0)
    m = StemJEPA(get_config(name, **over))
    for p in m.predictor.parameters():  # FiLM starts at zero: give it something to carry
        p.data.add_(0.02 * torch.randn_like(p))
    save_checkpoint(path, m, norm={"mean": -4.0, "std": 3.0}, text={"encoder": "all-MiniLM-L6-v2", "dim": 384},
                    labels=LABELS)
    return path


_BUILT: dict = {}  # other test modules import these fixtures: build each directory once per session


@pytest.fixture(scope="session")
def micro_dir(tmp_path_factory):
    """micro config, every CPU precision, text encoder exported (and checked) once."""
    from export.core import export_model

    if "micro" not in _BUILT:
        d = tmp_path_factory.mktemp("micro")
        ck = _checkpoint(d / "micro.pt", "micro")
        export_model(ck, d / "model", ("fp32", "fp16", "int8", "bf16"), log=lambda m: None)
        _BUILT["micro"] = d / "model"
    return _BUILT["micro"]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, micro_dir):
    from export.core import export_model

    if "tiny" not in _BUILT:
        d = tmp_path_factory.mktemp("tiny")
        ck = _checkpoint(d / "tiny.pt", "tiny")
        export_model(ck, d / "model", ("fp32", "fp16", "int8"), text_from=micro_dir, log=lambda m: None)
        _BUILT["tiny"] = d / "model"
    return _BUILT["tiny"]


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_micro_exports_every_cpu_precision_with_parity(micro_dir):
    m = load_manifest(micro_dir)
    from export.core import ort_cpu_supports

    for g in ("encoder", "target_encoder", "predictor", "beat_head"):
        for p in ("fp32", "fp16", "int8"):
            e = m.graphs[g][p]
            assert e["parity"]["ok"], (g, p, e["parity"])
            assert (micro_dir / e["path"]).is_file()
    assert m.graphs["encoder"]["fp32"]["parity"]["max_abs"] < 1e-3
    # bf16 is recorded as skipped exactly when ONNX Runtime's CPU provider cannot run it
    ok, _ = ort_cpu_supports("bf16")
    assert ("bf16" in m.data["skipped"]) == (not ok)
    assert m.data["precisions"] == ["fp32", "fp16", "int8"] + (["bf16"] if ok else [])
    for f in ("model.pt", "tokenizer.json", "text_encoder.onnx", "conditioning.npz"):
        assert (micro_dir / f).is_file()


@pytest.mark.slow
def test_tiny_exports(tiny_dir):
    m = load_manifest(tiny_dir)
    assert m.config["name"] == "tiny" and m.precisions() == ["fp32", "fp16", "int8"]


def test_manifest_round_trip(micro_dir):
    m = load_manifest(micro_dir)
    raw = json.loads((micro_dir / "manifest.json").read_text())
    assert m.data == raw
    assert raw["format"] == "stemjepa-model"
    assert raw["version"] == 1 and len(m.fingerprint) == 64
    assert m.config["d_model"] == 64 and m.norm == {"mean": -4.0, "std": 3.0}
    assert m.graphs["encoder"]["fp32"]["inputs"]["logmel"]["shape"] == ["B", 80, "T"]
    assert m.graphs["predictor"]["fp32"]["inputs"]["cond"]["shape"] == ["N", 384]
    assert m.graphs["predictor"]["fp32"]["outputs"]["embedding"]["shape"] == ["N", 64]
    z = np.load(micro_dir / "conditioning.npz")
    assert sorted(z["names"].tolist()) == ["bass", "drums", "electric guitar"] and z["vectors"].shape == (3, 384)
    # the fingerprint is the weights' (same checkpoint -> same fingerprint)
    from export.core import fingerprint
    from training.checkpoint import load_model

    model, _ = load_model(micro_dir / "model.pt")
    assert fingerprint(model) == m.fingerprint


def test_refuses_corrupt_file(micro_dir, tmp_path):
    d = _copy(micro_dir, tmp_path / "m")
    p = d / "encoder.onnx"
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0xFF
    p.write_bytes(bytes(b))
    with pytest.raises(ModelDirError, match=r"encoder.onnx is corrupt \(sha256"):
        load_manifest(d)


def test_refuses_missing_bad_json_and_version(micro_dir, tmp_path):
    with pytest.raises(ModelDirError, match="no manifest.json"):
        load_manifest(tmp_path)
    d = _copy(micro_dir, tmp_path / "m")
    (d / "beat_head.int8.onnx").unlink()
    with pytest.raises(ModelDirError, match="beat_head.int8.onnx is missing"):
        load_manifest(d)
    raw = (micro_dir / "manifest.json").read_text()
    (d / "manifest.json").write_text(raw[:-20])
    with pytest.raises(ModelDirError, match="not valid JSON"):
        load_manifest(d)
    data = json.loads(raw)
    data["version"] = 2
    (d / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ModelDirError, match="version 2"):
        load_manifest(d)


def test_refuses_config_graph_mismatch(micro_dir, tmp_path):
    d = _copy(micro_dir, tmp_path / "m")
    data = json.loads((d / "manifest.json").read_text())
    data["config"]["d_model"] = 128
    (d / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ModelDirError, match="config/graph mismatch"):
        load_manifest(d)
    # recorded I/O consistent with the edited config, files not: the ONNX files themselves are read
    for per in data["graphs"].values():
        for e in per.values():
            for side in ("inputs", "outputs"):
                for spec in e[side].values():
                    spec["shape"] = [128 if s == 64 else s for s in spec["shape"]]
    (d / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ModelDirError, match="config/graph mismatch: encoder.onnx"):
        load_manifest(d)


def test_failed_parity_leaves_nothing(tmp_path, monkeypatch, micro_dir):
    import export.core as core

    ck = _checkpoint(tmp_path / "micro.pt", "micro")
    monkeypatch.setitem(core.TOLERANCES, "int8", {"max_abs": 1e-9, "min_cos": 1.0})
    with pytest.raises(core.ExportError, match="parity check failed: encoder \\(int8\\)"):
        core.export_model(ck, tmp_path / "out", ("fp32", "int8"), text_from=micro_dir, log=lambda m: None)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["micro.pt"]


def test_class_model_without_labels(tmp_path):
    from export.core import export_model
    from training.checkpoint import save_checkpoint
    from training.config import get_config
    from training.model import StemJEPA

    m = StemJEPA(get_config("micro", conditioning="class"))
    save_checkpoint(tmp_path / "c.pt", m, norm={"mean": 0.0, "std": 1.0}, text={"encoder": "none", "dim": 384})
    man = export_model(tmp_path / "c.pt", tmp_path / "out", ("fp32",), checkpoint_copy=False, log=lambda m: None)
    assert "text_encoder" not in man["graphs"] and man["labels"] == []
    # the slim export (as shipped) has no model.pt and still loads and validates
    assert "model_pt" not in man["files"] and not (tmp_path / "out" / "model.pt").exists()
    assert load_manifest(tmp_path / "out").fingerprint == man["fingerprint"]
    from engine.backends import load_backend

    b = load_backend(tmp_path / "out", kind="onnx-fp32")
    ids = b.condition(["electric bass", "kick drum", "lead vocals", "violin"])
    assert ids.tolist() == [0, 1, 2, 3]
    x = np.random.default_rng(0).standard_normal((1, 80, 320)).astype(np.float32)
    e = b.predict(b.encode(x), ids)
    assert e.shape == (4, 64)


@pytest.mark.slow
def test_ranking_weight_travels_from_export_to_the_matcher(tmp_path):
    """The fused ranking's weight is the model directory's (one owner), written by export: given,
    else the checkpoint's, else the engine default; the matcher starts with it."""
    from engine.backends import load_backend
    from engine.keytempo import DEFAULT_WEIGHT
    from engine.pipeline import Matcher
    from export.core import ExportError, export_model
    from training.checkpoint import save_checkpoint
    from training.config import get_config
    from training.model import StemJEPA

    m = StemJEPA(get_config("micro", conditioning="class"))
    save_checkpoint(tmp_path / "c.pt", m, norm={"mean": 0.0, "std": 1.0}, text={"encoder": "none", "dim": 384})
    man = export_model(tmp_path / "c.pt", tmp_path / "a", ("fp32",), checkpoint_copy=False, log=lambda m: None)
    assert man["ranking"] == {"keytempo_weight": DEFAULT_WEIGHT, "source": "default"}
    man = export_model(tmp_path / "c.pt", tmp_path / "b", ("fp32",), checkpoint_copy=False, keytempo_weight=0.3,
                       log=lambda m: None)
    assert man["ranking"] == {"keytempo_weight": 0.3, "source": "given"}
    assert load_manifest(tmp_path / "b").ranking["keytempo_weight"] == 0.3
    b = load_backend(tmp_path / "b", kind="onnx-fp32")
    assert Matcher(b, None, instruments=["bass"]).keytempo_weight == 0.3
    assert Matcher(b, None, instruments=["bass"], keytempo_weight=0.0).keytempo_weight == 0.0
    with pytest.raises(ValueError):
        Matcher(b, None, instruments=["bass"], keytempo_weight=2.0)
    with pytest.raises(ExportError):
        export_model(tmp_path / "c.pt", tmp_path / "c", ("fp32",), checkpoint_copy=False, keytempo_weight=-1,
                     log=lambda m: None)


def test_text_encoder_matches_sentence_transformers(micro_dir):
    from engine.text import MiniLMText, OnnxText
    from export.text import CHECK_NAMES

    m = load_manifest(micro_dir)
    assert m.text["min_cosine"] >= 0.99
    assert (micro_dir / "text_encoder.onnx").stat().st_size < 30e6
    onnx_t = OnnxText(micro_dir / "text_encoder.onnx", micro_dir / "tokenizer.json")
    names = CHECK_NAMES + ["fretless bass", "congas"]
    cos = np.sum(MiniLMText().encode(names) * onnx_t.encode(names), axis=1)
    assert cos.min() >= 0.99, dict(zip(names, cos))


def test_trt_refuses_without_cuda(tmp_path):
    from export.trt import cuda_status

    ok, why = cuda_status()
    if ok:
        pytest.skip("CUDA + TensorRT present: the refusal path does not apply")
    r = subprocess.run([sys.executable, "-m", "export", str(tmp_path / "none.pt"), str(tmp_path / "out"), "--trt"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "--trt needs a CUDA GPU" in r.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.gpu
def test_trt_builds_engines(micro_dir, tmp_path):
    from export.trt import build_trt, cuda_status

    ok, why = cuda_status()
    if not ok:
        pytest.skip(f"TensorRT unavailable: {why}")
    d = _copy(micro_dir, tmp_path / "m")
    built = build_trt(d)
    assert "encoder" in built and any((d / "trt").iterdir())


def test_recover_rebuilds_the_exported_checkpoint(tmp_path, micro_dir):
    """A full model directory back to a checkpoint: same fingerprint, same outputs, and a
    directory whose graph belongs to another model is refused."""
    import shutil

    import torch

    from export.core import fingerprint
    from export.recover import RecoverError, recover
    from training.checkpoint import load_model

    recover(micro_dir, tmp_path / "back.pt")
    model, state = load_model(tmp_path / "back.pt")
    man = json.loads((micro_dir / "manifest.json").read_text())
    assert fingerprint(model) == man["fingerprint"]
    assert state["norm"] == man["norm"] and len(state["labels"]) == len(man["labels"])
    x = torch.randn(1, 80, 320)
    ts = torch.jit.load(str(micro_dir / man["torch"]["graphs"]["encoder"]["fp32"]["path"]))
    with torch.no_grad():  # the graph normalises its raw log-mel input itself
        ref = model.encoder((x - state["norm"]["mean"]) / state["norm"]["std"])
        torch.testing.assert_close(ref, ts(x), rtol=1e-4, atol=1e-4)
    bad = tmp_path / "bad"
    shutil.copytree(micro_dir, bad)
    enc = man["torch"]["graphs"]["encoder"]["fp32"]["path"]
    shutil.copyfile(bad / man["torch"]["graphs"]["predictor"]["fp32"]["path"], bad / enc)
    with pytest.raises(RecoverError, match="no weights under"):
        recover(bad, tmp_path / "bad.pt")
