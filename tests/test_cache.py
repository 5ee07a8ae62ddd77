"""Packed model directories (export.cache): one form of the weights in git, the ONNX and
TorchScript forms built once into a cache that agrees with the shipped weights."""
import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from test_export import _checkpoint, micro_dir  # noqa: E402,F401  (session fixture)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STEMJEPA_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def packed(tmp_path, micro_dir):  # noqa: F811
    from export.cache import pack_model

    ck = _checkpoint(tmp_path / "m.pt", "micro")
    pack_model(ck, tmp_path / "packed", precisions=("fp32", "int8"), text_from=micro_dir, log=lambda m: None)
    return tmp_path / "packed", ck


def test_pack_writes_one_weights_file_and_no_graphs(packed):
    d, _ = packed
    names = sorted(p.name for p in d.iterdir())
    assert names == ["conditioning.npz", "packed.json", "text_encoder.onnx", "tokenizer.json", "weights.pt"]
    doc = json.loads((d / "packed.json").read_text())
    assert doc["weights"]["dtype"] == "float16" and doc["precisions"] == ["fp32", "int8"]
    sd = torch.load(d / "weights.pt", weights_only=False)["model"]
    assert all(v.dtype == torch.float16 for v in sd.values() if v.is_floating_point())


def test_unbuilt_packed_dir_names_the_build_command(packed, cache):
    from engine.manifest import ModelDirError, load_manifest

    with pytest.raises(ModelDirError, match="python -m export.cache"):
        load_manifest(packed[0])


@pytest.mark.slow
def test_built_forms_agree_with_the_shipped_weights(packed, cache):
    """The cache is built from weights.pt; its fingerprint is packed.json's, and every ONNX and
    TorchScript form computes what the fp16 weights (as fp32) compute in eager PyTorch."""
    from engine.backends import load_backend
    from engine.manifest import load_manifest
    from export.cache import ensure_built
    from training.checkpoint import load_model

    d, _ = packed
    out = ensure_built(d, log=lambda m: None)
    assert out.is_relative_to(cache)
    m = load_manifest(d)  # the packed directory now reads as its built forms
    assert m.root == out and m.fingerprint == json.loads((d / "packed.json").read_text())["fingerprint"]
    assert ensure_built(d, log=lambda m: None) == out  # second call: found, not rebuilt
    model, state = load_model(d / "weights.pt")
    rng = np.random.default_rng(0)
    logmel = rng.normal(-4.0, 2.0, size=(2, 80, 160)).astype(np.float32)
    x = (torch.from_numpy(logmel) - state["norm"]["mean"]) / state["norm"]["std"]
    with torch.no_grad():
        ref = model.encoder(x).numpy()
        ref_t = model.target_encoder(x).numpy()
    for kind in ("onnx-fp32", "torch-fp32"):
        b = load_backend(d, kind=kind)
        np.testing.assert_allclose(b.encode(logmel), ref, atol=2e-3)
        np.testing.assert_allclose(b.encode_target(logmel), ref_t, atol=2e-3)


def test_corrupt_weights_are_refused_before_building(packed, cache):
    from engine.manifest import ModelDirError
    from export.cache import ensure_built

    d, _ = packed
    raw = bytearray((d / "weights.pt").read_bytes())
    raw[-100] ^= 0xFF
    (d / "weights.pt").write_bytes(bytes(raw))
    with pytest.raises(ModelDirError, match="corrupt"):
        ensure_built(d, log=lambda m: None)
    assert not (cache / "models").exists() or not any(p.name[0] != "." for p in (cache / "models").iterdir())


@pytest.mark.slow
def test_mismatched_packed_json_is_refused(packed, cache, tmp_path):
    """weights.pt of another model under this packed.json: the built fingerprint disagrees."""
    from engine.manifest import ModelDirError
    from engine.manifest import sha256_file
    from export.cache import ensure_built, pack_model

    d, _ = packed
    other = _checkpoint(tmp_path / "o.pt", "micro", predictor_layers=4)  # another model
    pack_model(other, tmp_path / "other", text_from=d, log=lambda m: None)
    shutil.copyfile(tmp_path / "other" / "weights.pt", d / "weights.pt")
    doc = json.loads((d / "packed.json").read_text())
    doc["weights"]["sha256"] = sha256_file(d / "weights.pt")
    (d / "packed.json").write_text(json.dumps(doc))
    with pytest.raises(ModelDirError, match="fingerprint"):
        ensure_built(d, log=lambda m: None)
