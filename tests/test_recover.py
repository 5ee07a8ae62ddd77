"""python -m export.recover: a model directory back to a training checkpoint (fingerprint-checked)."""
import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from tests.test_export import micro_dir  # noqa: E402,F401  (session fixture)


def test_recover_round_trip(micro_dir, tmp_path):
    from export.core import fingerprint
    from export.recover import main, recover
    from training.checkpoint import load_model

    man = json.loads((micro_dir / "manifest.json").read_text())
    assert main([str(micro_dir), str(tmp_path / "r.pt")]) == 0
    model, state = load_model(tmp_path / "r.pt")
    assert fingerprint(model) == man["fingerprint"]
    assert state["norm"] == man["norm"] and state["labels"] == man["labels"]
    # the rebuilt encoder computes what the directory's TorchScript encoder computes
    ts = torch.jit.load(str(micro_dir / "encoder.ts.pt"))
    x = torch.randn(2, 80, 160)
    with torch.no_grad():
        want = ts(x)
        got = model.encoder((x - man["norm"]["mean"]) / man["norm"]["std"])
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5)
    # and training can start from it
    again, _ = recover(micro_dir)
    for a, b in zip(again.predictor.parameters(), model.predictor.parameters()):
        assert torch.equal(a, b)


def test_recover_refuses_mismatched_or_incomplete_dirs(micro_dir, tmp_path):
    from export.recover import RecoverError, main, recover

    d = tmp_path / "m"
    shutil.copytree(micro_dir, d)
    man = json.loads((d / "manifest.json").read_text())
    man["fingerprint"] = "0" * 64
    (d / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(RecoverError, match="do not belong together"):
        recover(d)
    assert main([str(d), str(tmp_path / "x.pt")]) == 2 and not (tmp_path / "x.pt").exists()
    (d / "predictor.ts.pt").unlink()
    with pytest.raises(RecoverError, match="predictor.ts.pt: missing"):
        recover(d)
    with pytest.raises(RecoverError, match="no manifest"):
        recover(tmp_path)
