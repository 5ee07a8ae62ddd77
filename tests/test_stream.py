"""The streaming live path of a causal model (engine/stream.py): offline == streaming.

The same audio fed whole, in chunks and frame by frame must give the same tokens and query
embeddings as the offline reference (``Encoder.forward_banded`` over the whole stream, the
predictor per token, the window mean), within fp32 tolerance; the exported graphs (ONNX with the
cache as explicit inputs/outputs, TorchScript) must compute the same as PyTorch eager.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from engine.stream import StreamingEncoder, StreamingPredictor, embed_stream, normalise_mean  # noqa: E402

LABELS = ["bass", "drums", "drum kit"]
NORM = {"mean": -4.0, "std": 3.0}


def _micro(seed=0, **kw):
    from training.config import get_config
    from training.model import StemJEPA

    torch.manual_seed(seed)
    m = StemJEPA(get_config("micro", causal=True, **kw)).eval()
    for p in m.predictor.parameters():  # FiLM starts at zero: give conditioning an effect
        p.data.add_(0.05 * torch.randn_like(p))
    return m


def _eager_step(enc, norm=NORM):
    def step(logmel, k, v, age):
        with torch.no_grad():
            x = (torch.from_numpy(logmel) - norm["mean"]) / norm["std"]
            out = enc.step(x, torch.from_numpy(k), torch.from_numpy(v), torch.from_numpy(age))
        return [o.numpy() for o in out]
    return step


def _reference_tokens(enc, logmel):
    with torch.no_grad():
        return enc.forward_banded((torch.from_numpy(logmel) - NORM["mean"]) / NORM["std"]).numpy()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from export.core import export_model
    from training.checkpoint import save_checkpoint

    d = tmp_path_factory.mktemp("micro_causal")
    m = _micro()
    save_checkpoint(d / "m.pt", m, norm=NORM, text={"encoder": "all-MiniLM-L6-v2", "dim": 384}, labels=LABELS)
    export_model(d / "m.pt", d / "model", ("fp32", "int8"), text=False, log=lambda s: None)
    return d


def test_step_equals_banded_reference_whole_chunked_and_column_by_column():
    """Encoder.step through the ring (wrapping twice: 120 columns, a window of 50) == the banded
    mask over the whole stream; the first 50 columns == Encoder.forward on that window; the
    bidirectional encoder refuses to stream."""
    m = _micro()
    cfg = m.cfg.to_dict()
    rng = np.random.default_rng(1)
    x = (NORM["mean"] + NORM["std"] * rng.standard_normal((2, 80, 16 * 120))).astype(np.float32)
    ref = _reference_tokens(m.encoder, x)
    with torch.no_grad():
        win = m.encoder((torch.from_numpy(x[:, :, :800]) - NORM["mean"]) / NORM["std"]).numpy()
    np.testing.assert_allclose(ref[:, :250], win, atol=1e-5)
    enc = StreamingEncoder(_eager_step(m.encoder), cfg, batch=2)
    for chunk in (1, 3, 50, 120):
        enc.reset()
        got = np.concatenate([enc.push(x[:, :, 16 * c:16 * min(120, c + chunk)]) for c in range(0, 120, chunk)], 1)
        np.testing.assert_allclose(got, ref, atol=2e-5, err_msg=f"chunk {chunk}")
    # tokens depend on more than the last 8 s once the stream is longer (depth 2: 2 windows back)
    late = StreamingEncoder(_eager_step(m.encoder), cfg, batch=2).encode(x[:, :, 16 * 60:])
    assert np.abs(late[:, -5:] - ref[:, -5:]).max() > 1e-3
    with pytest.raises(ValueError, match="causal"):
        from training.config import get_config
        from training.model import StemJEPA

        StemJEPA(get_config("micro")).encoder.step(torch.zeros(1, 80, 16), *StemJEPA(get_config(
            "micro", causal=True)).encoder.empty_cache())


def test_streaming_predictor_ring_sum_and_instrument_change():
    """Window sums over the ring == the mean of the per-token outputs of the last W columns;
    changing one instrument recomputes that one only, and gives what a fresh predictor gives."""
    from export.graphs import PredictorGraph

    m = _micro()
    g = PredictorGraph(m.predictor, "film").eval()

    def tokens_fn(t, c):  # the reference: per token, from the condition
        with torch.no_grad():
            return g.per_token(torch.from_numpy(t), torch.from_numpy(c)).numpy()

    def from_code(t, k):
        with torch.no_grad():
            return g.from_code(torch.from_numpy(t), torch.from_numpy(k)).numpy()

    def code(c):
        with torch.no_grad():
            return g.code(torch.from_numpy(c)).numpy()

    rng = np.random.default_rng(2)
    cfg = m.cfg.to_dict()
    toks = rng.standard_normal((5 * 130, 64)).astype(np.float32)
    cond = rng.standard_normal((3, 384)).astype(np.float32)
    cond /= np.linalg.norm(cond, axis=1, keepdims=True)
    sp = StreamingPredictor(from_code, cfg, window_columns=30, code_fn=code)
    sp.set_conditions(["a", "b", "c"], cond)
    for c0, c in ((0, 1), (1, 7), (8, 49), (57, 73)):
        sp.push(toks[5 * c0:5 * (c0 + c)])
        n = c0 + c
        w = toks[5 * max(0, n - 30):5 * n]
        want = normalise_mean(tokens_fn(w[None], cond).mean(axis=1))
        np.testing.assert_allclose(sp.embedding(), want, atol=1e-5)
    cond2 = cond.copy()
    cond2[1] = np.roll(cond[1], 7)
    assert sp.set_conditions(["a", "b2", "c"], cond2) == 1 and sp.recomputed == 4
    fresh = StreamingPredictor(tokens_fn, cfg, window_columns=30)  # no code: the condition itself
    fresh.set_conditions(["a", "b2", "c"], cond2)
    fresh.push(toks)
    np.testing.assert_allclose(sp.embedding(), fresh.embedding(), atol=1e-5)
    sp.reset()
    with pytest.raises(ValueError):
        sp.embedding()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["onnx-fp32", "torch-fp32", "onnx-int8", "torch-bf16"])
def test_exported_stream_graphs_match_eager(model_dir, kind):
    """The exported step graphs (cache as explicit inputs/outputs), driven by the ring, give the
    banded reference's tokens: fp32 within 1e-4, int8 / bf16 by cosine; the library side
    (embed_stream at offsets) pools exactly those tokens."""
    from engine.backends import load_backend
    from training.checkpoint import load_model

    b = load_backend(model_dir / "model", kind=kind)
    assert b.stream is not None and b.stream["ring_tokens"] == 250
    m, _ = load_model(model_dir / "m.pt")
    rng = np.random.default_rng(3)
    x = (NORM["mean"] + NORM["std"] * rng.standard_normal((1, 80, 16 * 80))).astype(np.float32)
    ref = _reference_tokens(m.encoder, x)
    enc = StreamingEncoder(b.encode_step, b.manifest.config)
    got = np.concatenate([enc.push(x[:, :, 16 * c:16 * min(80, c + 9)]) for c in range(0, 80, 9)], 1)
    if kind.endswith("fp32"):
        np.testing.assert_allclose(got, ref, atol=1e-4)
    cos = np.sum(got * ref, -1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(ref, axis=-1)
    assert cos.min() > (0.999 if kind.endswith("fp32") else 0.9)
    tgt = StreamingEncoder(b.encode_target_step, b.manifest.config)
    with torch.no_grad():
        tref = m.target_encoder.forward_banded((torch.from_numpy(x) - NORM["mean"]) / NORM["std"]).numpy()[0]
    emb = embed_stream(tgt, x[0], starts=[0, 10, 30], columns=50)
    want = normalise_mean(np.stack([tref[5 * s:5 * (s + 50)].mean(0) for s in (0, 10, 30)]))
    assert emb.shape == (3, 64)
    assert np.sum(emb * want, 1).min() > (0.99999 if kind.endswith("fp32") else 0.95)
    code = b.predict_code(b.condition(["bass"]))
    assert code.shape == (1, 2 * 128 * 2)  # micro: 2 hidden layers x (gamma, beta) x 128
    pt = b.predict_tokens(ref[:, :10], code)
    assert pt.shape == (1, 10, 64)


def _audio(seconds=11.0, seed=0):
    from export.bench import synth_audio

    return synth_audio(seconds, seed)


def _hops(matcher, audio, chunk):
    """(HopResult, query embeddings of that hop) for every hop, writing ``chunk`` samples at a time."""
    matcher.reset()
    out = []
    for i in range(0, len(audio), chunk):
        matcher.ring.write(audio[i:i + chunk])
        while (r := matcher.process_hop(drop_late=False)) is not None:
            out.append((r, None if matcher.last_query is None else matcher.last_query.copy()))
    return out


@pytest.mark.slow
def test_matcher_streaming_whole_chunked_frame_by_frame_equals_offline(model_dir):
    """The live path on a causal model streams by default; the audio fed whole, in chunks and
    frame by frame gives the same query embeddings and beat activations at every hop, equal to
    the offline computation over the same audio (banded encoder over the whole stream, predictor
    per token, mean over the window's columns); over the first 8 s, equal to the full recompute."""
    from engine.backends import load_backend
    from engine.frontend import FrontEndConfig, LogMel
    from engine.library import StemLibrary
    from engine.pipeline import Matcher
    from export.graphs import PredictorGraph
    from training.checkpoint import load_model

    b = load_backend(model_dir / "model", kind="onnx-fp32")
    lib = StemLibrary.from_arrays(np.eye(64, dtype=np.float32)[:8], [f"s{i}" for i in range(8)],
                                  fingerprint=b.manifest.fingerprint)
    names = ["bass", "drums"]
    audio = _audio()
    m = Matcher(b, lib, instruments=names, k=3)
    assert m.streaming
    runs = {c: _hops(m, audio, c) for c in (len(audio), 2560 * 3 + 17, 160)}
    base = runs[len(audio)]
    assert len(base) == (len(audio) - 240) // 2560 and sum(q is not None for _, q in base) > 40
    for c, hops in runs.items():
        assert len(hops) == len(base)
        for (r0, q0), (r, q) in zip(base, hops):
            assert r.ready == r0.ready and r.window_frames == r0.window_frames
            if q0 is not None:
                np.testing.assert_allclose(q, q0, atol=1e-5, err_msg=f"chunk {c}")
            np.testing.assert_allclose(r.activation, r0.activation, atol=1e-6)
    # offline reference
    model, _ = load_model(model_dir / "m.pt")
    feats = LogMel(FrontEndConfig.from_dict(b.manifest.frontend)).offline(audio)
    cols = feats.shape[1] // 16
    ref_tok = _reference_tokens(model.encoder, feats[None, :, :16 * cols].astype(np.float32))[0]
    g = PredictorGraph(model.predictor, "film").eval()
    cond = b.condition(names)
    checked = 0
    for r, q in base:
        if q is None:
            continue
        n = r.window_frames // 16
        end_col = r.hop_index + 1  # columns since the origin at this hop (a hop is one column)
        w = ref_tok[5 * (end_col - n):5 * end_col]
        with torch.no_grad():
            out = g.per_token(torch.from_numpy(w[None]), torch.from_numpy(cond)).numpy()
        np.testing.assert_allclose(q, normalise_mean(out.mean(1)), atol=1e-4)
        checked += 1
    assert checked > 40
    # first 8 s: the full recompute on the window from the origin is the same computation
    full = _hops(Matcher(b, lib, instruments=names, k=3, stream=False), audio, len(audio))
    same = 0
    for (r0, q0), (r1, q1) in zip(base, full):
        if q0 is not None and r0.window_frames < 800 or (r0.window_frames == 800 and r0.hop_index < 50):
            np.testing.assert_allclose(q0, q1, atol=1e-4)
            np.testing.assert_allclose(r0.activation, r1.activation, atol=1e-4)
            same += 1
    assert same > 30
    from test_pipeline_backend import MicroBackend  # a backend without streaming graphs

    assert not Matcher(MicroBackend()).streaming
    with pytest.raises(ValueError, match="causal"):
        Matcher(MicroBackend(), stream=True)


@pytest.mark.slow
def test_matcher_instrument_change_recomputes_once(model_dir):
    """Changing one instrument recomputes that instrument's ring once (not per hop) and the next
    query equals a matcher that had the new instruments from the start."""
    from engine.backends import load_backend
    from engine.library import StemLibrary
    from engine.pipeline import Matcher

    b = load_backend(model_dir / "model", kind="torch-fp32")
    lib = StemLibrary.from_arrays(np.eye(64, dtype=np.float32)[:8], [f"s{i}" for i in range(8)],
                                  fingerprint=b.manifest.fingerprint)
    audio = _audio(9.0, seed=4)
    half = 16000 * 5
    m = Matcher(b, lib, instruments=["bass", "drums"], k=3)
    m.run_array(audio[:half])
    before = m._shop.predictor.recomputed
    m.set_instruments(["bass", "drum kit"])
    m.run_array(audio[half:])
    assert m._shop.predictor.recomputed == before + 1
    ref = Matcher(b, lib, instruments=["bass", "drum kit"], k=3)
    ref.run_array(audio)
    np.testing.assert_allclose(m.last_query, ref.last_query, atol=1e-5)


@pytest.mark.slow
def test_trt_stream_profiles_fit_the_graphs(model_dir):
    """The TensorRT profiles of the streaming graphs (min / opt / max) are shapes the exported
    graphs accept: checked on the CPU provider, where the outputs must have the contract's shapes."""
    import json

    import onnxruntime as ort

    from export.trt import _feeds_from_profile, _stream_profile

    man = json.loads((model_dir / "model" / "manifest.json").read_text())
    cfg = man["config"]
    for name, per in man["stream"]["graphs"].items():
        sess = ort.InferenceSession(str(model_dir / "model" / per["fp32"]["path"]), providers=["CPUExecutionProvider"])
        prof = _stream_profile(name, cfg)
        for key in ("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes"):
            feeds = _feeds_from_profile(prof[key])
            assert set(feeds) == {i.name for i in sess.get_inputs()}, (name, key)
            outs = sess.run(None, feeds)
            if name.endswith("encoder_step"):
                b, c = feeds["logmel"].shape[0], feeds["logmel"].shape[2] // 16
                assert outs[0].shape == (b, 5 * c, 64) and outs[1].shape == (2, b, 2, 5 * c, 32)
            elif name == "predictor_tokens":
                assert outs[0].shape == (feeds["code"].shape[0], feeds["tokens"].shape[1], 64)


@pytest.mark.slow
def test_trt_builds_stream_engines(model_dir, tmp_path):
    """On a CUDA machine with TensorRT: engines for every graph, the streaming ones included."""
    import shutil

    from export.trt import build_trt, cuda_status

    ok, why = cuda_status()
    if not ok:
        pytest.skip(f"TensorRT unavailable: {why}")
    d = tmp_path / "model"
    shutil.copytree(model_dir / "model", d)
    built = build_trt(d, log=lambda m: None)
    assert {"encoder_step", "predictor_code", "predictor_tokens"} <= set(built)


@pytest.mark.slow
def test_matcher_streaming_catches_up_after_dropped_hops(model_dir):
    """Late hops dropped: the next hop encodes every column it missed in one step (c > 1) and
    gives the query the hop-by-hop stream has at that hop."""
    from engine.backends import load_backend
    from engine.library import StemLibrary
    from engine.pipeline import Matcher

    b = load_backend(model_dir / "model", kind="onnx-fp32")
    lib = StemLibrary.from_arrays(np.eye(64, dtype=np.float32)[:8], [f"s{i}" for i in range(8)],
                                  fingerprint=b.manifest.fingerprint)
    audio = _audio(10.0, seed=6)
    every = {r.hop_index: q for r, q in _hops(Matcher(b, lib, instruments=["bass"], k=2), audio, len(audio))}
    m = Matcher(b, lib, instruments=["bass"], k=2)
    seen = 0
    for i in range(0, len(audio), 2560 * 4):
        m.ring.write(audio[i:i + 2560 * 4])
        r = m.process_hop(drop_late=True)
        if r is not None and m.last_query is not None:
            np.testing.assert_allclose(m.last_query, every[r.hop_index], atol=1e-5)
            seen += 1
    assert seen > 8 and m.drops > 20 and m.restarts == 0


def test_parity_of_zero_outputs_agrees():
    """A graph whose output is exactly zero (a random-init predictor_code: FiLM starts at zero)
    agrees with a zero reference; a zero output against a non-zero reference does not."""
    from export.core import _parity

    z = np.zeros((3, 8), np.float32)
    assert _parity(z, z, "fp32", "predictor_code")["ok"]
    assert not _parity(np.ones((3, 8), np.float32), z, "fp32", "predictor_code")["ok"]


@pytest.mark.slow
def test_bench_streaming_rows(model_dir, tmp_path):
    """python -m export.bench on a causal model: the full recompute, the full encoder and the
    streaming encoder rows in one run, with p50 and p99 ratios, the streaming arithmetic and the
    streaming rows' agreement (fresh streams through the step graphs) with the fp32 reference."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "b.json"
    r = subprocess.run([sys.executable, "-m", "export.bench", "--model", str(model_dir / "model"), "--hops", "4",
                        "--warmup", "1", "--library-size", "200", "--instruments", "2", "--agree-windows", "2",
                        "--backends", "torch-fp32-full,onnx-fp32,onnx-fp32-stream,onnx-int8-stream",
                        "--json", str(out)], cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    j = json.loads(out.read_text())
    rows = {b["name"]: b for b in j["backends"]}
    assert set(rows) == {"torch-fp32-full", "onnx-fp32", "onnx-fp32-stream", "onnx-int8-stream"}
    assert rows["onnx-fp32-stream"]["encoder"] == "streaming" and rows["onnx-fp32"]["encoder"] == "full"
    assert j["flops"]["stream_total_gflop"] * 10 < j["flops"]["total_gflop"]
    assert j["peak_gflop_per_s"] > 0
    for b in rows.values():
        assert b["speedup_p99"] > 0 and b["peak_fraction"] > 0
    assert rows["onnx-fp32-stream"]["agreement"]["min_cos"] > 0.9999
    assert "streaming hop (1 new column)" in r.stdout


def test_library_streamed_segments_equal_the_stream_over_each_stem(model_dir, tmp_path):
    """engine.library build --tokens stream: every segment is the pooled tokens of one causal
    stream over its whole stem (Encoder.forward_banded over the stem, the target encoder), so the
    first segment equals the window-by-window index and the later ones carry the 8 s before them;
    an index of the other kind is not extended, and a model that cannot stream is refused."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_pipeline_backend import MicroBackend, write_dataset

    from engine.audio import load_audio
    from engine.backends import load_backend
    from engine.frontend import FrontEndConfig, LogMel
    from engine.library import LibraryError, build
    from training.checkpoint import load_model

    ds = write_dataset(tmp_path / "ds", n_tracks=1, seconds=20.0)
    b = load_backend(model_dir / "model", kind="onnx-fp32")
    win = build(ds, b, tmp_path / "win", hop_s=4.0, progress=False, log=lambda s: None)
    st = build(ds, b, tmp_path / "st", hop_s=4.0, progress=False, log=lambda s: None, tokens="stream")
    assert st.info["tokens"] == "stream" and win.info["tokens"] == "window"
    np.testing.assert_array_equal(st.seg_offset, win.seg_offset)
    first = st.seg_offset == 0.0
    np.testing.assert_allclose(st.embeddings[first], win.embeddings[first], atol=2e-4)
    assert np.abs(st.embeddings[~first] - win.embeddings[~first]).max() > 1e-3

    m, _ = load_model(model_dir / "m.pt")
    fe = FrontEndConfig()
    stem = st.stems[0]
    x = load_audio(ds / stem["path"], fe.sample_rate)
    feats = LogMel(fe)(np.concatenate([x, np.zeros(fe.n_fft - fe.hop, np.float32)]))
    rows = st.seg_stem == 0
    cols = [int(round(o * 100)) // 16 for o in st.seg_offset[rows]]
    ref = _reference_tokens(m.target_encoder, feats[None, :, : (cols[-1] + 50) * 16])[0]
    want = normalise_mean(np.stack([ref[c * 5:(c + 50) * 5].mean(0) for c in cols]))
    np.testing.assert_allclose(st.embeddings[rows], want, atol=2e-4)

    with pytest.raises(LibraryError, match="whole columns"):
        build(ds, b, tmp_path / "odd", hop_s=2.5, progress=False, log=lambda s: None, tokens="stream")
    with pytest.raises(LibraryError, match="tokens"):
        build(ds, b, tmp_path / "st", hop_s=4.0, progress=False, log=lambda s: None)  # a stream index
    with pytest.raises(LibraryError, match="causal"):
        build(ds, MicroBackend(), tmp_path / "bi", progress=False, log=lambda s: None, tokens="stream")
