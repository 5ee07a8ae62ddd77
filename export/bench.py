"""``python -m export.bench``: time one full live hop per backend.

A hop (every 160 ms of audio; 2 560 samples at 16 kHz):

1. front end: the streaming log-mel computes only the 16 new frames and shifts them into the
   80x800 window; the *baseline* recomputes the whole 8-s window from audio instead;
2. encoder on the 80x800 window;
3. predictor, one batch for the N instruments -> N pooled L2-normed embeddings;
4. top-k search in a library of S segments (``engine.library.StemLibrary.search``: exact,
   numpy matmul + partial sort);
5. beats: when the model directory ships the beat network (``beatnet.npz``, engine/beatnet.py),
   the network on the hop's 16 new log-mel frames (its own stage, ``beatnet``: 8 activation
   frames over its kept state) -- otherwise the beat head on the newest time column (5 tokens ->
   8 activations at 50 Hz) -- and the causal beat tracker (``engine.beats.CausalBeatTracker``).

The bench times ``engine.pipeline.Matcher.process_hop`` (:class:`MatcherHop`), so bench and
server measure the same code; :class:`BenchHop` (the bench's own hop from the same components,
used before the pipeline existed) stays available with ``--own-hop`` and as a fallback.

A causal model (``config.causal``) adds ``KIND-stream`` rows: the streaming encoder of
engine/stream.py (5 new tokens per hop over per-layer key/value rings of 250 tokens, the predictor
on those tokens only, a running sum for the window mean, the beat head on the new column). The
rows then tell the whole story in one run: the reference-style full recompute
(``torch-fp32-full``), today's streaming front end with the full encoder (``KIND``), and the
streaming encoder (``KIND-stream``). ``--base`` adds the same for the paper-size ``base`` config
at random weights (timings only), exported to a temporary directory.

Rows are timed in rotating blocks: ``BLOCK`` (20) hops of one backend after ``BLOCK_WARM`` (2)
untimed ones, then the next backend's, round and round (slow changes of the machine's load hit
every row alike; each row is timed warm, as the one path a live server runs).

Backends: ``torch-fp32-full`` (PyTorch fp32 -- the TorchScript files, eager arithmetic -- + full-window front end = the baseline), then
every backend available on the device with the streaming front end (torch-fp32, torch-bf16,
onnx-fp32/fp16/int8 on CPU; onnx-cuda, trt on CUDA). Each runs ``--warmup`` hops, then ``--hops``
timed hops; reported: p50/p95/p99 ms, hops/s, speed-up vs the baseline (baseline p50 / p50),
per-stage p50, encoder GFLOP/s, the hop's arithmetic rate as a fraction of this CPU's measured
peak (a 1024-square fp32 sgemm on the same threads), and retrieval agreement with the fp32
reference (same top-1; streaming rows: each query window as a fresh stream through the step graphs).

JSON (``--json OUT``), schema ``stemjepa-bench/1``::

    {"schema": "stemjepa-bench/1", "created": iso, "device": "cpu", "threads": 1,
     "model": {"dir", "name", "fingerprint", "fallback": bool, "config": {...}},
     "settings": {"instruments", "library_size", "hops", "warmup", "k", "hop_s"},
     "hop_impl": "engine.pipeline.Matcher" | "export.bench.BenchHop",
     "flops": {"encoder_gflop", "predictor_gflop", "beat_gflop", "total_gflop",   # per hop
               "beatnet_gflop",                                  # with a beat network (beat_gflop is then 0)
               "stream_encoder_gflop", "stream_predictor_gflop", "stream_total_gflop"},  # causal only
     "peak_gflop_per_s": float,
     "baseline": "torch-fp32-full",
     "backends": [{"name", "kind", "frontend": "full"|"streaming", "encoder": "full"|"streaming",
                   "ms": {"p50", "p95", "p99", "mean", "max"}, "hops_per_s",
                   "speedup", "speedup_p99",   # baseline p50 / p50, baseline p99 / p99
                   "peak_fraction",
                   "stages_ms": {"frontend", "keytempo", "beatnet", "encoder", "predictor", "search",
                                 "beats"},  # p50; beats: beat head (no network) + tracker
                   "encoder_gflop_per_s", "total_gflop_per_s",
                   "agreement": {"top1", "mean_cos", "min_cos", "queries"}}],
     "skipped": {"kind": "reason"},
     "best": {"name", "speedup"}, "target": {"speedup": 1.5, "met": bool},
     "base": {...the same document for base, --base only...}}
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from engine.cli import CliError, Parser, guarded
from engine.keytempo import DEFAULT_WEIGHT as KEYTEMPO_DEFAULT_WEIGHT
from engine.keytempo import DIM as KEYTEMPO_DIM
from engine.keytempo import KeyTempoStream
from engine.manifest import DEFAULT_MODEL_DIR

SCHEMA = "stemjepa-bench/1"
TARGET_SPEEDUP = 1.5
STAGES = ("frontend", "keytempo", "beatnet", "encoder", "predictor", "search", "beats")
BLOCK, BLOCK_WARM = 20, 2  # timed hops per backend in a row, untimed hops before each such block
INSTRUMENTS = ["bass", "drums", "piano", "warm synth pad", "electric guitar", "vocals", "violin", "trumpet"]


# ------------------------------------------------------------------------------------------ flops


def encoder_flops(cfg: dict, frames: int | None = None) -> float:
    """Multiply-adds x 2 of one encoder pass on ``frames`` frames (default: the full window)."""
    t = frames or cfg["max_frames"]
    p = (cfg["n_mels"] // cfg["patch"]) * (t // cfg["patch"])
    d, depth = cfg["d_model"], cfg["depth"]
    h = int(d * cfg["mlp_ratio"])
    patch = p * cfg["patch"] ** 2 * d
    block = p * (3 * d * d + d * d + 2 * d * h) + 2 * p * p * d  # qkv, proj, mlp; QK^T and AV
    return 2.0 * (patch + depth * block)


def predictor_flops(cfg: dict, n: int) -> float:
    p = (cfg["n_mels"] // cfg["patch"]) * (cfg["max_frames"] // cfg["patch"])
    d, hdim, layers = cfg["d_model"], cfg["predictor_hidden"], cfg["predictor_layers"]
    if cfg["conditioning"] == "film":
        first = p * d * hdim  # computed once, shared by the N instruments
        rest = n * p * ((layers - 2) * hdim * hdim + hdim * d)
        film = n * (layers - 1) * cfg["text_dim"] * 2 * hdim
        return 2.0 * (first + rest + film)
    return 2.0 * n * p * (2 * d * hdim + (layers - 2) * hdim * hdim + hdim * d)


def beat_flops(cfg: dict) -> float:
    return 2.0 * (cfg["n_mels"] // cfg["patch"]) * cfg["d_model"] * cfg["beat_probes"]


def stream_encoder_flops(cfg: dict, columns: int = 1) -> float:
    """Multiply-adds x 2 of one streaming encoder step on ``columns`` new columns: their 5 tokens
    each through every layer, attending to the 250 cached tokens and to themselves."""
    n = (cfg["n_mels"] // cfg["patch"]) * columns
    s = (cfg["n_mels"] // cfg["patch"]) * (cfg["max_frames"] // cfg["patch"])
    d, depth = cfg["d_model"], cfg["depth"]
    h = int(d * cfg["mlp_ratio"])
    block = n * (3 * d * d + d * d + 2 * d * h) + 2 * n * (s + n) * d
    return 2.0 * (n * cfg["patch"] ** 2 * d + depth * block)


def stream_predictor_flops(cfg: dict, n: int, columns: int = 1) -> float:
    """The predictor on the new tokens only, for ``n`` instruments: the FiLM projections of the
    conditions are computed once per instrument (``predictor_code``), the window mean is a sum."""
    full = predictor_flops(cfg, n)
    p = (cfg["n_mels"] // cfg["patch"]) * (cfg["max_frames"] // cfg["patch"])
    film = 2.0 * n * (cfg["predictor_layers"] - 1) * cfg["text_dim"] * 2 * cfg["predictor_hidden"]
    if cfg["conditioning"] != "film":
        film = 0.0
    return (full - film) * (cfg["n_mels"] // cfg["patch"]) * columns / p


def peak_gflops(threads: int = 1, size: int = 1024, seconds: float = 0.5) -> float:
    """This CPU's measured fp32 matrix-multiply rate (GFLOP/s) with the BLAS pool set to
    ``threads``: best of repeated ``size``-square sgemms for about ``seconds``."""
    a = np.random.default_rng(0).standard_normal((size, size)).astype(np.float32)
    b = a.T.copy()
    best = 0.0
    a @ b
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        a @ b
        best = max(best, 2.0 * size ** 3 / (time.perf_counter() - t0) / 1e9)
    return best


# ------------------------------------------------------------------------------------------ audio


def synth_audio(seconds: float, seed: int, sr: int = 16000) -> np.ndarray:
    """A synthetic 'track': click/kick pattern at a random tempo, a bass line, chord tones, noise."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    bpm = rng.uniform(80, 160)
    beat = 60.0 / bpm
    x = 0.003 * rng.standard_normal(n)
    for b in np.arange(0, seconds, beat):
        i = int(b * sr)
        ln = min(n - i, int(0.08 * sr))
        env = np.exp(-np.arange(ln) / (0.015 * sr))
        x[i:i + ln] += 0.5 * env * np.sin(2 * np.pi * 60 * np.arange(ln) / sr)
    root = 55.0 * 2 ** (rng.integers(0, 12) / 12)
    x += 0.15 * np.sin(2 * np.pi * root * t * (1 + 0.5 * (np.floor(t / (2 * beat)) % 2)))
    for k in rng.choice([3, 4, 5, 7, 10], size=3, replace=False):
        x += 0.05 * np.sin(2 * np.pi * root * 4 * 2 ** (k / 12) * t)
    return (x / max(1e-6, np.abs(x).max()) * 0.8).astype(np.float32)


# ------------------------------------------------------------------------------------------ hop


class BenchHop:
    """The live hop from engine components (see module doc). ``full_recompute``: recompute the
    8-s window's log-mel from audio every hop (the baseline) instead of 16 new frames."""

    def __init__(self, backend, library, instruments: list[str], k: int = 5, full_recompute: bool = False):
        from engine.beats import CausalBeatTracker
        from engine.frontend import FrontEndConfig, LogMel, StreamingLogMel

        cfg = backend.manifest.config
        self.fe = FrontEndConfig.from_dict(backend.manifest.frontend)
        self.backend, self.library, self.k = backend, library, k
        self.full = full_recompute
        self.frames = cfg["max_frames"]
        self.rows = cfg["n_mels"] // cfg["patch"]
        self.lm = LogMel(self.fe)
        self.stream = StreamingLogMel(self.fe)
        self.window = np.zeros((1, cfg["n_mels"], self.frames), np.float32)
        self.audio = np.zeros(self.fe.n_samples(self.frames), np.float32)  # last 8 s (+ n_fft - hop)
        self.cond = backend.condition(instruments)
        self.keytempo = KeyTempoStream(self.frames * self.fe.hop / self.fe.sample_rate)
        self.kt_weight = KEYTEMPO_DEFAULT_WEIGHT
        self.tracker = CausalBeatTracker(fps=cfg["beat_probes"] / (cfg["patch"] * self.fe.hop / self.fe.sample_rate))
        self.bnet = _beatnet_stream(backend.manifest)  # the beat network, when the directory ships one
        self.times = {s: [] for s in STAGES}
        self.total = []
        self.last = None

    def prime(self, audio: np.ndarray) -> None:
        """Fill the window with the first 8 s (not timed)."""
        a = audio[: len(self.audio)]
        self.audio[:] = a
        self.keytempo.push(a)
        f = self.stream.push(a)
        self.window[0, :, -f.shape[1]:] = f[:, -self.frames:]
        if self.bnet is not None:
            self.bnet.push(f)

    def process(self, chunk: np.ndarray, record: bool = True):
        t0 = time.perf_counter()
        n = len(chunk)
        self.audio[:-n] = self.audio[n:]
        self.audio[-n:] = chunk
        if self.full:
            self.window[0] = self.lm.offline(self.audio)[:, -self.frames:]
            t1 = time.perf_counter()
            f = self.stream.push(chunk)  # keeps the streaming front end in step: not charged to the baseline
            t0 += time.perf_counter() - t1
            t1 = time.perf_counter()
        else:
            f = self.stream.push(chunk)
            t = f.shape[1]
            if t:
                self.window[0, :, :-t] = self.window[0, :, t:]
                self.window[0, :, -t:] = f
            t1 = time.perf_counter()
        self.keytempo.push(chunk)
        kq = self.keytempo.describe()
        tk = time.perf_counter()
        bact = self.bnet.push(f).beat if self.bnet is not None else None
        tb = time.perf_counter()
        tokens = self.backend.encode(self.window)
        t2 = time.perf_counter()
        emb = self.backend.predict(tokens, self.cond)
        t3 = time.perf_counter()
        matches = self.library.search(emb, k=self.k, keytempo=kq, keytempo_weight=self.kt_weight)
        t4 = time.perf_counter()
        act = bact if bact is not None else self.backend.beats(tokens[:, -self.rows:])[0]
        beat = self.tracker.process(act)
        t5 = time.perf_counter()
        if record:
            for s, dt in zip(STAGES, (t1 - t0, tk - t1, tb - tk, t2 - tb, t3 - t2, t4 - t3, t5 - t4)):
                self.times[s].append(dt * 1e3)
            self.total.append((t5 - t0) * 1e3)
        self.last = (emb, matches, beat)
        return self.last


def _beatnet_stream(manifest):
    """A fresh stream of the model directory's beat network, or None when it ships none."""
    from engine.beatnet import BeatNet, find_beatnet

    path = find_beatnet(manifest)
    return None if path is None else BeatNet.load(path).stream()


def _pct(x: list[float]) -> dict:
    a = np.asarray(x, dtype=np.float64)
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)), "p99": float(np.percentile(a, 99)),
            "mean": float(a.mean()), "max": float(a.max())}


# ------------------------------------------------------------------------------------------ model


def resolve_model(path: str | None, log) -> tuple[Path, bool, tempfile.TemporaryDirectory | None]:
    """The model directory to bench; falls back to a freshly initialised `tiny` export (loudly)."""
    p = Path(path) if path else DEFAULT_MODEL_DIR
    if (p / "packed.json").is_file() and not (p / "manifest.json").is_file():
        from .cache import ensure_built

        return ensure_built(p, log=log), False, None
    if (p / "manifest.json").is_file():
        return p, False, None
    if path:
        raise SystemExit(f"bench: {p} is not a model directory (no manifest.json)")
    bar = "!" * 78
    log(f"{bar}\n!! bench: no shipped model at {p}\n!! falling back to a FRESHLY INITIALISED 'tiny' "
        f"checkpoint (random weights) exported to a temporary directory.\n!! Timings are representative "
        f"of the architecture; retrieval agreement is measured on random weights.\n{bar}")
    import torch

    from training.checkpoint import save_checkpoint
    from training.config import get_config
    from training.model import StemJEPA

    from .core import export_model

    td = tempfile.TemporaryDirectory(prefix="stemjepa-bench-")
    torch.manual_seed(0)
    ck = Path(td.name) / "tiny.pt"
    save_checkpoint(ck, StemJEPA(get_config("tiny")), norm={"mean": -4.0, "std": 3.0},
                    text={"encoder": "all-MiniLM-L6-v2", "dim": 384}, labels=INSTRUMENTS)
    export_model(ck, Path(td.name) / "model", ("fp32", "fp16", "int8"), log=lambda m: None)
    return Path(td.name) / "model", True, td


def _library(manifest, size: int, seed: int = 0):
    from engine.library import StemLibrary

    d = int(manifest.config["d_model"])
    rng = np.random.default_rng(seed)
    e = rng.standard_normal((size, d)).astype(np.float32)
    kt = rng.standard_normal((size, KEYTEMPO_DIM)).astype(np.float32)
    kt /= np.linalg.norm(kt, axis=1, keepdims=True)
    per_stem = 20  # 20 segments (80 s at a 4-s hop) per stem
    ids = [f"stem{i // per_stem:05d}" for i in range(size)]
    cats = ["bass", "drums", "vocals", "other"]
    return StemLibrary.from_arrays(e, ids, categories=[cats[(i // per_stem) % 4] for i in range(size)],
                                   offsets=[4.0 * (i % per_stem) for i in range(size)], fingerprint=manifest.fingerprint,
                                   keytempo=kt)


class MatcherHop:
    """The server's hop: ``engine.pipeline.Matcher.process_hop`` (ring -> streaming log-mel ->
    encoder -> predictor -> search; beat head -> causal tracker), timed around the call; the audio
    callback's ring write is not part of the hop. Stage times come from the hop's own timings.

    ``stream``: the streaming encoder path of a causal model (engine/stream.py); otherwise the
    encoder and predictor run on the whole window every hop.

    ``full_recompute`` (the baseline): the hop additionally recomputes the 8-s window's log-mel
    from the newest audio with ``LogMel.offline`` (timed), and that time replaces the Matcher's
    streaming front-end stage in the hop total: baseline = same hop code with a full-window front end.
    """

    def __init__(self, backend, library, instruments: list[str], k: int = 5, full_recompute: bool = False,
                 threads: int = 1, stream: bool = False):
        from engine.frontend import FrontEndConfig, LogMel
        from engine.pipeline import Matcher

        self.m = Matcher(backend, library, instruments=instruments, k=k, drop_late=False, blas_threads=threads,
                         stream=stream)
        self.full = full_recompute
        self.lm = LogMel(FrontEndConfig.from_dict(backend.manifest.frontend))
        self.n_window = self.lm.cfg.n_samples(backend.manifest.config["max_frames"])
        self.audio = np.zeros(self.n_window, np.float32)
        self.times = {s: [] for s in STAGES}
        self.total = []
        self.last = None

    def prime(self, audio: np.ndarray) -> None:
        a = audio[: self.n_window]
        self.audio[:] = a
        self.m.run_array(a, chunk=2560)

    def process(self, chunk: np.ndarray, record: bool = True):
        n = len(chunk)
        self.audio[:-n] = self.audio[n:]
        self.audio[-n:] = chunk
        self.m.ring.write(chunk)
        t0 = time.perf_counter()
        r = self.m.process_hop(drop_late=False)
        total = (time.perf_counter() - t0) * 1e3
        tm = r.timings
        fe = tm.get("read", 0.0) + tm.get("frontend", 0.0)
        if self.full:
            t1 = time.perf_counter()
            full = self.lm.offline(self.audio)
            fe_full = (time.perf_counter() - t1) * 1e3
            total += fe_full - fe
            fe = fe_full
            self.full_window = full
        if record:
            for s, v in zip(STAGES, (fe, tm.get("keytempo", 0.0), tm.get("beatnet", 0.0), tm.get("encode", 0.0),
                                     tm.get("predict", 0.0),
                                     tm.get("search", 0.0),
                                     tm.get("beat_head", 0.0) + tm.get("tracker", 0.0))):
                self.times[s].append(v)
            self.total.append(total)
        self.last = r
        return r


# ------------------------------------------------------------------------------------------ main


def _kinds(manifest, device: str, skipped: dict) -> list[tuple[str, str, bool, bool]]:
    """(label, backend kind, full_recompute, stream). Causal models with streaming graphs add a
    ``KIND-stream`` row per kind (the streaming encoder); the other rows run the full encoder."""
    from engine.backends import available_kinds
    from engine.stream import StreamError, stream_info

    dev = "cpu" if device == "cpu" else "cuda"
    avail = available_kinds(manifest, dev)
    try:
        can_stream = stream_info(manifest) is not None
    except StreamError as e:
        can_stream = False
        skipped["*-stream"] = str(e)
    out = [("torch-fp32-full", "torch-fp32", True, False)]
    if "torch-fp32" not in available_kinds(manifest, "cpu"):
        skipped["torch-fp32-full"] = "torch not importable or no TorchScript files in the model directory"
        out = []
    order = (["torch-fp32", "torch-bf16", "onnx-fp32", "onnx-fp16", "onnx-int8"] if dev == "cpu"
             else ["torch-cuda-fp32", "torch-cuda-bf16", "onnx-cuda-fp32", "onnx-cuda-fp16", "trt-fp16"])
    for k in order:
        if k in avail:
            out.append((k, k, False, False))
        else:
            skipped[k] = "not available here (provider, precision not exported, or torch missing)"
    if can_stream:
        out += [(f"{k}-stream", k, False, True) for k in order if k in avail]
    elif not manifest.config.get("causal"):
        skipped["*-stream"] = "bidirectional model: no streaming encoder (a causal model streams)"
    return out


def agreement_sets(backend_ref, n_windows: int, lib_windows: int, seed: int = 7):
    """Query windows (log-mel) and a small library of reference target embeddings built from
    synthetic tracks, for the top-1 agreement check."""
    from engine.backends import pool
    from engine.frontend import FrontEndConfig, LogMel

    cfg = backend_ref.manifest.config
    lm = LogMel(FrontEndConfig.from_dict(backend_ref.manifest.frontend))
    frames = cfg["max_frames"]

    def windows(count, s):
        out = []
        per = 4
        for i in range((count + per - 1) // per):
            feats = lm(synth_audio(16.0, s + i))
            for j in range(per):
                st = j * (feats.shape[1] - frames) // per
                out.append(feats[:, st:st + frames])
        return np.stack(out[:count]).astype(np.float32)

    q = windows(n_windows, seed)
    libw = windows(lib_windows, seed + 1000)
    lib = np.concatenate([pool(backend_ref.encode_target(libw[i:i + 8])) for i in range(0, len(libw), 8)])
    return q, lib


def _stream_query(backend, logmel: np.ndarray, names: list[str]) -> np.ndarray:
    """``(1, 80, T)`` raw log-mel as a fresh stream through the streaming graphs -> ``(N, d)``."""
    from engine.stream import StreamingEncoder, StreamingPredictor

    cfg = backend.manifest.config
    tokens = StreamingEncoder(backend.encode_step, cfg).encode(logmel)
    sp = StreamingPredictor(backend.predict_tokens, cfg, code_fn=backend.predict_code)
    sp.set_conditions(names, backend.condition(names))
    sp.push(tokens[0])
    return sp.embedding()


def bench_model(model_dir, fallback: bool, a, log, *, hops: int | None = None, warmup: int | None = None,
                agree: int | None = None, want_labels=None) -> dict:
    """Bench every row of one model directory (the JSON document without ``base``)."""
    from engine.backends import load_backend
    from engine.manifest import load_manifest

    n_hops = hops or a.hops
    n_warmup = a.warmup if warmup is None else warmup
    n_agree = agree or a.agree_windows
    peak = peak_gflops(a.threads)
    manifest = load_manifest(model_dir)
    cfg = manifest.config
    names = (INSTRUMENTS * (a.instruments // len(INSTRUMENTS) + 1))[: a.instruments]
    if manifest.conditioning == "film" and a.instruments > len(INSTRUMENTS):
        names = [f"{n} {i}" if i >= len(INSTRUMENTS) else n for i, n in enumerate(names)]
    library = _library(manifest, a.library_size)
    fl = {"encoder_gflop": encoder_flops(cfg) / 1e9, "predictor_gflop": predictor_flops(cfg, a.instruments) / 1e9,
          "beat_gflop": beat_flops(cfg) / 1e9}
    bnet = _beatnet_stream(manifest)
    if bnet is not None:  # the beat network replaces the beat head: 8 activation frames a 160-ms hop
        fl["beat_gflop"] = 0.0
        fl["beatnet_gflop"] = bnet.net.arch.flops_per_frame() * cfg["beat_probes"] / 1e9
    fl["total_gflop"] = sum(fl.values())
    if cfg.get("causal"):  # the streaming hop: one new column
        fl["stream_encoder_gflop"] = stream_encoder_flops(cfg) / 1e9
        fl["stream_predictor_gflop"] = stream_predictor_flops(cfg, a.instruments) / 1e9
        fl["stream_total_gflop"] = (fl["stream_encoder_gflop"] + fl["stream_predictor_gflop"] + fl["beat_gflop"]
                                    + fl.get("beatnet_gflop", 0.0))
    skipped: dict[str, str] = {}
    kinds = _kinds(manifest, a.device, skipped)
    if want_labels is not None:
        kinds = [k for k in kinds if k[0] in want_labels]
    elif a.backends:
        want = set(a.backends.split(","))
        kinds = [k for k in kinds if k[0] in want]
        if not kinds:
            why = "; ".join(f"{b}: {skipped.get(b, 'not available here')}" for b in sorted(want))
            raise CliError(f"--backends {a.backends}: none of them can run here ({why})",
                           "leave --backends out to run every backend this machine offers")
    hop_s = cfg["patch"] * manifest.frontend.get("hop", 160) / manifest.frontend.get("sample_rate", 16000)
    chunk = int(round(hop_s * manifest.frontend.get("sample_rate", 16000)))
    blocks = -(-(n_hops + n_warmup) // BLOCK)
    audio = synth_audio(8.2 + (n_hops + n_warmup + blocks * BLOCK_WARM + 1) * hop_s, seed=1)
    log(f"bench: model {model_dir} ({cfg['name']}, d={cfg['d_model']}, depth={cfg['depth']}, {manifest.conditioning}), "
        f"fingerprint {manifest.fingerprint[:12]}{'  [FALLBACK: random weights]' if fallback else ''}")
    log(f"bench: device {a.device}, threads {a.threads}, {a.instruments} instruments, library {a.library_size} segments, "
        f"{n_hops} hops (+{n_warmup} warm-up), hop {hop_s * 1e3:.0f} ms")
    log(f"bench: arithmetic per hop: encoder {fl['encoder_gflop']:.3f} GFLOP (80x{cfg['max_frames']} window), predictor "
        f"{fl['predictor_gflop']:.3f} GFLOP ({a.instruments} instruments), "
        + (f"beat network {fl['beatnet_gflop'] * 1e3:.3f} MFLOP ({bnet.net.arch.n_params()} parameters, "
           f"{bnet.net.arch.receptive_field() / bnet.net.fps:.1f}-s receptive field)" if bnet is not None else
           f"beat head {fl['beat_gflop'] * 1e3:.3f} MFLOP"))
    if "stream_total_gflop" in fl:
        log(f"bench: streaming hop (1 new column): encoder {fl['stream_encoder_gflop'] * 1e3:.2f} MFLOP (5 tokens over a "
            f"ring of 250), predictor {fl['stream_predictor_gflop'] * 1e3:.2f} MFLOP: "
            f"{fl['total_gflop'] / fl['stream_total_gflop']:.0f}x less arithmetic than the full recompute")
    log(f"bench: this CPU's measured peak: {peak:.1f} GFLOP/s (fp32 sgemm, {a.threads} thread(s))")

    use_matcher = not a.own_hop
    hop_impl = "engine.pipeline.Matcher" if use_matcher else "export.bench.BenchHop"
    log(f"bench: hop code: {hop_impl}")
    results = []
    backends, hops = {}, []
    for label, kind, full, stream in kinds:
        if stream and not use_matcher:
            skipped[label] = "the streaming encoder runs in engine.pipeline.Matcher only (not with --own-hop)"
            continue
        try:
            b = backends.get(kind) or load_backend(manifest, device=a.device, kind=kind, threads=a.threads)
        except Exception as e:
            skipped[label] = f"load failed: {e}"
            continue
        backends[kind] = b
        if use_matcher:
            hop = MatcherHop(b, library, names, k=a.k, full_recompute=full, threads=a.threads, stream=stream)
        else:
            hop = BenchHop(b, library, names, k=a.k, full_recompute=full)
        hop.prime(audio)
        hops.append((label, kind, full, stream, hop))
    # interleaved in blocks: BLOCK timed hops of one backend, then the next backend's, round and
    # round, so load from other processes on this shared machine spreads evenly over the backends
    # compared; each block starts with BLOCK_WARM untimed hops, so that every backend is timed with
    # its own weights in the caches, as in a live server (which runs one path), not just after
    # another backend's 100 MB swept them out (that cost a streaming hop ~5 ms here)
    pos0 = len(hops[0][-1].audio) if hops else 0
    if use_matcher:  # the Matcher's hop grid: its first full hop ends n_fft - hop samples later
        pos0 = hops[0][-1].n_window if hops else 0
    done = [0] * len(hops)  # hops processed per backend (its position in the audio)
    for b0 in range(0, n_warmup + n_hops, BLOCK):
        for j, (*_, hop) in enumerate(hops):
            n = min(BLOCK, n_warmup + n_hops - b0)
            for k in range(BLOCK_WARM + n):
                pos = pos0 + done[j] * chunk
                hop.process(audio[pos:pos + chunk], record=k >= BLOCK_WARM and b0 + k - BLOCK_WARM >= n_warmup)
                done[j] += 1
    for label, kind, full, stream, hop in hops:
        ms = _pct(hop.total)
        stages = {s: float(np.percentile(hop.times[s], 50)) for s in STAGES}
        enc_gf, tot_gf = ((fl["stream_encoder_gflop"], fl["stream_total_gflop"]) if stream
                          else (fl["encoder_gflop"], fl["total_gflop"]))
        r = {"name": label, "kind": kind, "frontend": "full" if full else "streaming",
             "encoder": "streaming" if stream else "full", "ms": ms,
             "hops_per_s": 1e3 / ms["mean"], "stages_ms": stages,
             "encoder_gflop_per_s": enc_gf / (max(stages["encoder"], 1e-6) / 1e3),
             "total_gflop_per_s": tot_gf / (ms["p50"] / 1e3)}
        r["peak_fraction"] = r["total_gflop_per_s"] / peak if peak else None
        results.append(r)

    # retrieval agreement with the fp32 reference
    ref_kind = "torch-fp32" if "torch-fp32" in backends else ("onnx-fp32" if "onnx-fp32" in backends else None)
    if ref_kind is None and results:
        ref_kind = results[0]["kind"]
    if ref_kind:
        ref = backends[ref_kind]
        qw, lib = agreement_sets(ref, n_agree, max(32, n_agree * 2))
        cond_ref = ref.condition(names)
        ref_emb = np.concatenate([ref.predict(ref.encode(qw[i:i + 1]), cond_ref) for i in range(len(qw))])
        ref_top = np.argmax(ref_emb @ lib.T, axis=1)
        for r in results:
            b = backends[r["kind"]]
            if r["encoder"] == "streaming":  # each window as a fresh stream through the step graphs
                emb = np.concatenate([_stream_query(b, qw[i:i + 1], names) for i in range(len(qw))])
            else:
                emb = np.concatenate([b.predict(b.encode(qw[i:i + 1]), b.condition(names)) for i in range(len(qw))])
            top = np.argmax(emb @ lib.T, axis=1)
            cos = np.sum(emb * ref_emb, axis=1)
            r["agreement"] = {"reference": ref_kind, "top1": float(np.mean(top == ref_top)), "mean_cos": float(cos.mean()),
                              "min_cos": float(cos.min()), "queries": int(len(top)), "library": int(len(lib))}

    base = next((r for r in results if r["name"] == "torch-fp32-full"), results[0] if results else None)
    for r in results:
        r["speedup"] = base["ms"]["p50"] / r["ms"]["p50"] if base else None
        r["speedup_p99"] = base["ms"]["p99"] / r["ms"]["p99"] if base else None
    best = max((r for r in results if r is not base), key=lambda r: r["speedup"], default=base)
    log("")
    log(f"{'backend':17s} {'front':9s} {'encoder':9s} {'p50 ms':>8s} {'p95 ms':>8s} {'p99 ms':>8s} {'hops/s':>7s} "
        f"{'x p50':>6s} {'x p99':>6s}  {'fe':>5s} {'kt':>5s} {'bnet':>5s} {'enc':>6s} {'pred':>6s} {'search':>6s} {'beat':>5s}  "
        f"{'enc GF/s':>8s} {'%peak':>5s}  {'top1':>5s} {'cos':>7s}")
    for r in results:
        s, m, ag = r["stages_ms"], r["ms"], r.get("agreement", {})
        log(f"{r['name']:17s} {r['frontend']:9s} {r['encoder']:9s} {m['p50']:8.2f} {m['p95']:8.2f} {m['p99']:8.2f} "
            f"{r['hops_per_s']:7.1f} {r['speedup']:6.2f} {r['speedup_p99']:6.2f}  {s['frontend']:5.2f} {s['keytempo']:5.2f} {s['beatnet']:5.2f} "
            f"{s['encoder']:6.2f} "
            f"{s['predictor']:6.2f} {s['search']:6.2f} {s['beats']:5.2f}  {r['encoder_gflop_per_s']:8.1f} "
            f"{100 * (r['peak_fraction'] or 0):5.1f}  {ag.get('top1', float('nan')):5.2f} {ag.get('mean_cos', float('nan')):7.4f}")
    for k, why in skipped.items():
        log(f"  skipped {k}: {why}")
    met = bool(best and best["speedup"] >= TARGET_SPEEDUP)
    if best:
        log(f"\nbest: {best['name']} {best['speedup']:.2f}x the baseline (torch fp32, full recompute) "
            f"-> target {TARGET_SPEEDUP}x {'MET' if met else 'NOT met'}; hop budget {hop_s * 1e3:.0f} ms")
    if ref_kind:
        log(f"agreement: same top-1 as {ref_kind} over {n_agree} windows x {a.instruments} instruments "
            f"in a library of {max(32, n_agree * 2)} synthetic-track target embeddings")
    out = {"schema": SCHEMA, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "device": a.device, "threads": a.threads,
           "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                       "python": sys.version.split()[0]},
           "model": {"dir": str(model_dir), "name": cfg["name"], "fingerprint": manifest.fingerprint,
                     "fallback": fallback, "config": cfg},
           "settings": {"instruments": a.instruments, "names": names, "library_size": a.library_size, "hops": n_hops,
                        "warmup": n_warmup, "k": a.k, "hop_s": hop_s},
           "peak_gflop_per_s": peak,
           "hop_impl": hop_impl, "flops": fl, "baseline": base["name"] if base else None, "backends": results,
           "skipped": skipped, "best": {"name": best["name"], "speedup": best["speedup"]} if best else None,
           "target": {"speedup": TARGET_SPEEDUP, "met": met}}
    return out


BASE_ROWS = ("torch-fp32-full", "onnx-int8", "torch-fp32-stream", "torch-bf16-stream", "onnx-fp32-stream",
             "onnx-int8-stream")


def export_base(out_dir, text_from, log) -> Path:
    """The paper-size ``base`` config, causal, at random init (seed 0), exported to ``out_dir``
    (fp32 + int8, text encoder copied from ``text_from``)."""
    import torch

    from training.checkpoint import save_checkpoint
    from training.config import get_config
    from training.model import StemJEPA

    from .core import export_model

    out_dir = Path(out_dir)
    log(f"\nbench: base (d=768, depth 12, causal) at random init, exporting to {out_dir} (fp32, int8) ...")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="stemjepa-bench-base-") as td:
        ck = Path(td) / "base.pt"
        save_checkpoint(ck, StemJEPA(get_config("base", causal=True)), norm={"mean": -4.0, "std": 3.0},
                        text={"encoder": "all-MiniLM-L6-v2", "dim": 384}, labels=INSTRUMENTS)
        t0 = time.time()
        export_model(ck, out_dir, ("fp32", "int8"), text_from=text_from, checkpoint_copy=False, overwrite=True,
                     log=lambda m: None)
    log(f"bench: base exported in {time.time() - t0:.0f} s")
    return out_dir


def bench_base(text_from, a, log, reuse=None, keep=None) -> dict:
    """Bench the causal ``base`` config at random weights (timings only) on ``BASE_ROWS`` with
    ``--base-hops`` hops: the full recompute against the streaming encoder. ``reuse``: a directory
    :func:`export_base` wrote before; else it is exported now (to ``keep``, or a temporary one)."""
    if reuse is not None:
        return bench_model(Path(reuse), True, a, log, hops=a.base_hops, warmup=min(a.warmup, 5), agree=4,
                           want_labels=set(BASE_ROWS))
    with tempfile.TemporaryDirectory(prefix="stemjepa-bench-base-") as td:
        d = export_base(Path(keep) if keep else Path(td) / "model", text_from, log)
        return bench_model(d, True, a, log, hops=a.base_hops, warmup=min(a.warmup, 5), agree=4,
                           want_labels=set(BASE_ROWS))


#: every label --backends accepts, each also as LABEL-stream (the streaming encoder of a causal
#: model); which of them run depends on the machine and the model directory
BACKEND_LABELS = ("torch-fp32-full", "torch-fp32", "torch-bf16", "onnx-fp32", "onnx-fp16", "onnx-int8",
                  "torch-cuda-fp32", "torch-cuda-bf16", "onnx-cuda-fp32", "onnx-cuda-fp16", "trt-fp16")


@guarded("python -m export.bench")
def main(argv=None) -> int:
    ap = Parser(prog="python -m export.bench", description="Time one full live hop per backend.")
    ap.add_argument("--device", default="cpu", help="cpu or cuda:N")
    ap.add_argument("--model", metavar="DIR",
                    help="model directory (default: the shipped model, engine/assets/model; a fresh tiny export "
                    "with random weights if it is missing)")
    ap.add_argument("--instruments", type=int, default=4, help="instruments per hop")
    ap.add_argument("--library-size", type=int, default=10000, help="segments in the library")
    ap.add_argument("--hops", type=int, default=200, help="timed hops per backend")
    ap.add_argument("--warmup", type=int, default=20, help="untimed hops per backend first")
    ap.add_argument("--threads", type=int, default=1,
                    help="intra-op threads for torch / ONNX Runtime / BLAS (default 1: on a 2-core machine with the "
                         "other core busy, 1 thread is the fast and stable choice)")
    ap.add_argument("--k", type=int, default=5, help="top-k")
    ap.add_argument("--agree-windows", type=int, default=16, help="windows for the retrieval agreement")
    ap.add_argument("--backends", metavar="LABEL[,LABEL...]",
                    help=f"comma-separated subset to run, from {', '.join(BACKEND_LABELS)}, each also as LABEL-stream "
                    "(default: all available)")
    ap.add_argument("--own-hop", action="store_true",
                    help="time export.bench.BenchHop instead of engine.pipeline.Matcher (for comparison)")
    ap.add_argument("--json", metavar="OUT", help="write results as JSON here (default: not written)")
    ap.add_argument("--base", nargs="?", const=True, default=None, metavar="DIR",
                    help="also bench the paper-size base config (causal, random weights): full recompute vs the "
                         "streaming encoder; exported to a temporary directory, or DIR (an export of such a model, "
                         "e.g. from a previous --base-export DIR) (default: off)")
    ap.add_argument("--base-export", metavar="DIR",
                    help="with --base: keep the base export in DIR for later runs (default: none, a temporary directory)")
    ap.add_argument("--base-hops", type=int, default=60, help="timed hops per backend for --base")
    a = ap.parse_args(argv)
    for name in ("instruments", "library_size", "hops", "threads", "k", "agree_windows"):
        if getattr(a, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if a.warmup < 0:
        ap.error("--warmup must be >= 0")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", a.device):
        ap.error(f"--device {a.device!r}: use cpu or cuda:N")
    if a.backends is not None:
        want = [b.strip() for b in a.backends.split(",") if b.strip()]
        unknown = [b for b in want if b not in BACKEND_LABELS and b.removesuffix("-stream") not in BACKEND_LABELS]
        if unknown or not want:
            ap.error(f"--backends: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(BACKEND_LABELS)}")
        a.backends = ",".join(want)
    if a.model and not Path(a.model).is_dir():
        raise CliError(f"--model {a.model}: no such folder", "give a model directory, or leave --model out")

    def log(msg=""):
        print(msg, flush=True)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    from engine.library import set_blas_threads

    set_blas_threads(a.threads)
    try:
        import torch

        torch.set_num_threads(a.threads)
    except ImportError:
        pass
    model_dir, fallback, _td = resolve_model(a.model, log)
    out = bench_model(model_dir, fallback, a, log)
    if a.base:
        out["base"] = bench_base(model_dir, a, log, reuse=None if a.base is True else a.base, keep=a.base_export)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(out, indent=1))
        log(f"bench: JSON written to {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
