"""``python -m export.agreement --data DIR --model MODEL_DIR``: does every backend retrieve what fp32 does?

Runs the retrieval protocol of ``training eval retrieval`` (per track, embeddings averaged over its
8-s chunks; query = predictor(encoder(mix without the stem), fine label); candidates = target
encoder of every stem) through the engine backends of a model directory, and prints per backend
the share of queries whose top-1 equals the fp32 backend's, R@1 and the median normalised rank.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from engine.audio import load_audio
from engine.backends import ALL_KINDS, BackendError, load_backend, pool
from engine.frontend import LogMel
from engine.manifest import DEFAULT_MODEL_DIR


def _windows(x: np.ndarray, win: int, max_chunks: int) -> list[np.ndarray]:
    if len(x) <= win:
        return [np.pad(x, (0, win - len(x)))]
    starts = list(range(0, len(x) - win + 1, win))
    idx = np.linspace(0, len(starts) - 1, min(max_chunks, len(starts))).round().astype(int)
    return [x[starts[i]:starts[i] + win] for i in idx]


def embed(backend, tracks, max_chunks: int = 4):
    lm = LogMel()
    cfg = backend.manifest.config
    frames = cfg["max_frames"]
    win = lm.cfg.n_samples(frames)
    Q, C, labels = [], [], []
    for t in tracks:
        stems = t["stems"]
        mix = np.sum([s["audio"] for s in stems], axis=0)
        names = [s["label"] for s in stems]
        cond = backend.condition(names)
        for i, s in enumerate(stems):
            q, c = [], []
            for wm, ws in zip(_windows(mix - s["audio"], win, max_chunks), _windows(s["audio"], win, max_chunks)):
                m = lm(wm)[None, :, :frames]
                q.append(backend.predict(backend.encode(m), cond[i:i + 1])[0])
                c.append(pool(backend.encode_target(lm(ws)[None, :, :frames]))[0])
            Q.append(np.mean(q, axis=0))
            C.append(np.mean(c, axis=0))
            labels.append(names[i])
    return _finish(np.array(Q)), _finish(np.array(C))


def _finish(e: np.ndarray) -> np.ndarray:
    e = e - e.mean(axis=1, keepdims=True)
    e = e / np.sqrt((e * e).mean(axis=1, keepdims=True) + 1e-5)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m export.agreement")
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", default=str(DEFAULT_MODEL_DIR),
                    help="model directory (default: the shipped model, engine/assets/model)")
    ap.add_argument("--split", default="validation")
    ap.add_argument("--max-tracks", type=int, default=40)
    ap.add_argument("--kinds", nargs="+", default=None)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    from training.data.layout import load_dataset  # the dataset reader (this tool is not on the live path)

    tracks = []
    for t in load_dataset(a.data, split=a.split)[: a.max_tracks]:
        stems = [{"label": s.label, "audio": load_audio(s.path)} for s in t.stems.values()]
        if len(stems) >= 2:
            n = max(len(s["audio"]) for s in stems)
            for s in stems:
                s["audio"] = np.pad(s["audio"], (0, n - len(s["audio"])))
            tracks.append({"stems": stems})
    kinds = a.kinds or [k for k in ("torch-fp32", "onnx-fp32", "onnx-int8", "torch-bf16", "onnx-fp16") if k in ALL_KINDS]
    ref_top1, out = None, {}
    for kind in kinds:
        try:
            b = load_backend(a.model, kind=kind, threads=2)
        except BackendError as e:
            print(f"{kind:12s} skipped: {e}")
            continue
        q, c = embed(b, tracks)
        d = 2.0 - 2.0 * q @ c.T
        ranks = 1 + (d < np.diag(d)[:, None]).sum(1)
        top1 = d.argmin(1)
        if ref_top1 is None:
            ref_top1 = top1
        out[kind] = {"same_top1_as_first": float((top1 == ref_top1).mean()), "R@1": float((ranks == 1).mean() * 100),
                     "nrank_median": float(np.median((ranks - 1) / len(c)) * 100), "queries": int(len(q))}
        print(f"{kind:12s} same top-1 as {kinds[0]}: {out[kind]['same_top1_as_first']:.3f}  "
              f"R@1 {out[kind]['R@1']:.1f}  median norm. rank {out[kind]['nrank_median']:.2f} %  ({len(q)} queries)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"reference": kinds[0], "backends": out, "tracks": len(tracks)}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
