"""python -m export.bench: runs on a micro model and writes the documented JSON schema."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from tests.test_export import micro_dir  # noqa: E402,F401

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_json_schema(micro_dir, tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, "-m", "export.bench", "--model", str(micro_dir), "--hops", "6", "--warmup", "2",
                        "--library-size", "300", "--instruments", "3", "--agree-windows", "4", "--json", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "GFLOP" in r.stdout and "p50" in r.stdout
    j = json.loads(out.read_text())
    assert j["schema"] == "stemjepa-bench/1"
    for k in ("created", "device", "threads", "machine", "model", "settings", "hop_impl", "flops", "baseline",
              "backends", "skipped", "best", "target"):
        assert k in j, k
    assert j["baseline"] == "torch-fp32-full" and j["model"]["fallback"] is False
    assert j["settings"]["instruments"] == 3 and j["settings"]["library_size"] == 300
    assert j["flops"]["encoder_gflop"] > 0 and j["flops"]["predictor_gflop"] > 0
    names = [b["name"] for b in j["backends"]]
    assert names[0] == "torch-fp32-full" and {"onnx-fp32", "onnx-int8", "torch-bf16"} <= set(names)
    for b in j["backends"]:
        assert set(b["ms"]) == {"p50", "p95", "p99", "mean", "max"}
        assert b["ms"]["p50"] <= b["ms"]["p99"]
        assert set(b["stages_ms"]) == {"frontend", "keytempo", "beatnet", "encoder", "predictor", "search",
                                      "beats"}
        assert b["stages_ms"]["keytempo"] > 0  # the descriptor of the live input is computed every hop
        assert b["speedup"] > 0 and b["hops_per_s"] > 0 and b["encoder_gflop_per_s"] > 0
        assert 0 <= b["agreement"]["top1"] <= 1 and b["agreement"]["queries"] == 12
    assert j["backends"][0]["speedup"] == 1.0
    assert isinstance(j["target"]["met"], bool)


@pytest.mark.slow
def test_bench_states_the_beat_networks_cost(micro_dir, tmp_path):  # noqa: F811
    """A model directory with the beat network (engine/beatnet.py): the network has its own stage
    and arithmetic, and the beat head's is then zero."""
    import shutil

    from engine.beatnet import BeatNet, BeatNetArch
    from export.cache import add_file
    from test_beatnet import random_arrays

    d = tmp_path / "model"
    shutil.copytree(micro_dir, d)
    arch = BeatNetArch()
    BeatNet.save(tmp_path / "beatnet.npz", random_arrays(arch), {"arch": arch.to_dict(), "frontend": {}})
    add_file(d, tmp_path / "beatnet.npz")
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, "-m", "export.bench", "--model", str(d), "--hops", "4", "--warmup", "1",
                        "--library-size", "100", "--instruments", "1", "--agree-windows", "2",
                        "--backends", "onnx-fp32", "--json", str(out)], cwd=ROOT, capture_output=True, text=True,
                       timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    j = json.loads(out.read_text())
    assert j["flops"]["beatnet_gflop"] > 0 and j["flops"]["beat_gflop"] == 0 and "beat network" in r.stdout
    assert j["backends"][0]["stages_ms"]["beatnet"] > 0


def test_encoder_flops_count():
    from export.bench import encoder_flops

    cfg = {"n_mels": 80, "patch": 16, "max_frames": 800, "d_model": 192, "depth": 6, "mlp_ratio": 4.0}
    p, d = 250, 192
    expect = 2 * (p * 256 * d + 6 * (p * 12 * d * d + 2 * p * p * d))
    assert encoder_flops(cfg) == expect
