"""Calibrate the live tracker's confidence, and measure how well it is calibrated.

    python -m training.beatcal --data DIR [--model engine/assets/model] [--beat-source net|head]
        [--max-tracks N] [--out engine/assets/beat_calibration.json] [--json REPORT] [--cache ACTS.npz]

Every track of the dataset (the mix of its stems) goes through the live path as a performer's
input would: the real :class:`engine.pipeline.Matcher` (front end, beat network -- or streaming
encoder and beat head with ``--beat-source head``) on the model directory, then the tracker with
that source's settings, fed one hop (8 activation frames, and their downbeat activation) at a
time with its calibration off. Each beat it reports is scored correct when a reference beat lies within 70 ms
(mir_eval's F-measure window), and paired with the raw confidence of the hop that reported it.
Beatless inputs (:func:`beatless_signals`: silence, white and pink noise, steady sines, a
sustained chord, an organ and a slowly swelling drone) join both sides: any beat reported there
is wrong.

The calibration is the isotonic (pool-adjacent-violators) fit of correctness on raw confidence
over the *validation* split (the train split's activations are those of the model's own training
data, too good to calibrate on), written as knots ``(raw, calibrated)`` under the
source's name in ``--out`` (the other source's entry is kept), which
:class:`engine.tracker.CausalBeatTracker` interpolates. Its reliability is measured by two-fold
cross-fitting: the split is cut in two halves by song (the CRC-32 of each track's ``group``, so
the renders of one song stay together), each half is calibrated by the fit on the other, and the
reported beats of both are binned by calibrated confidence: the fraction correct per bin and the
expected calibration error (ECE, count-weighted mean |confidence - fraction correct|), beside the
same figures for the raw confidence.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

HOP_FRAMES = 8  # activation frames per 160-ms hop
TOLERANCE_S = 0.07


def beatless_signals(sr: int = 16000, seconds: float = 20.0, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs with no beat, ``{name: (S,) float32}``."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * seconds)) / sr

    def pink():
        f = np.fft.rfft(rng.standard_normal(t.size))
        f[1:] /= np.sqrt(np.arange(1, len(f)))
        x = np.fft.irfft(f, t.size)
        return x / np.std(x)

    def harm(f0s, amp=0.08):
        return sum(amp * np.sin(2 * np.pi * f * k * t) / k for f in f0s for k in range(1, 6))

    sig = {"silence": 0.0 * t, "white noise": 0.2 * rng.standard_normal(t.size),
           "soft noise": 0.01 * rng.standard_normal(t.size), "pink noise": 0.3 * pink(),
           "sine 440 Hz": 0.3 * np.sin(2 * np.pi * 440 * t), "sine 110 Hz": 0.3 * np.sin(2 * np.pi * 110 * t),
           "sine 1 kHz": 0.1 * np.sin(2 * np.pi * 1000 * t),
           "chord": sum(0.1 * np.sin(2 * np.pi * f * t) for f in (261.6, 329.6, 392.0, 523.2)),
           "organ": harm((220.0, 277.2, 329.6)), "swelling drone": harm((110.0, 165.0)) * (1 + 0.3 * np.sin(2 * np.pi * 0.3 * t))}
    return {k: v.astype(np.float32) for k, v in sig.items()}


def live_activation(matcher, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, float, np.ndarray | None]:
    """(beat activation (T,), downbeat activation (T,) or None (the beat head has none), stream
    time of their first frame, tempo-class probabilities (T, K) or None) of ``audio`` through the
    live hop."""
    matcher.reset()
    origin = matcher.act_time(0) - matcher.fe.frames_centre_s(matcher.frames_per_act)
    res = [r for r in matcher.run_array(audio) if r.ready]
    if not res:
        return np.zeros(0, np.float32), None, 0.0, None
    down = tempo = None
    if all(r.downbeat_activation is not None for r in res):
        down = np.concatenate([r.downbeat_activation for r in res]).astype(np.float32)
    if all(r.tempo_activation is not None for r in res):
        tempo = np.concatenate([r.tempo_activation for r in res]).astype(np.float32)
    return (np.concatenate([r.activation for r in res]).astype(np.float32), down,
            float(res[0].activation_time - origin), tempo)


def collect(act: np.ndarray, t0: float, ref: np.ndarray, tracker, down: np.ndarray | None = None,
            tempo: np.ndarray | None = None, tempo_classes: np.ndarray | None = None):
    """(raw confidence, correct) of every beat ``tracker`` reports on ``act`` (and ``down``, and
    the tempo classes ``tempo`` of BPM ``tempo_classes``), fed hop by hop."""
    cal, tracker.calibration = tracker.calibration, None
    try:
        tracker.reset(t0)
        conf, ok = [], []
        for i in range(0, len(act), HOP_FRAMES):
            st = tracker.process(act[i:i + HOP_FRAMES], None if down is None else down[i:i + HOP_FRAMES],
                                 tempo=None if tempo is None else tempo[i:i + HOP_FRAMES], tempo_classes=tempo_classes)
            for b in st.beats:
                conf.append(st.confidence)
                ok.append(bool(len(ref) and np.min(np.abs(ref - b)) <= TOLERANCE_S))
    finally:
        tracker.calibration = cal
    return np.asarray(conf, dtype=np.float64), np.asarray(ok, dtype=bool)


def isotonic(x: np.ndarray, y: np.ndarray, n_knots: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Pool-adjacent-violators fit of ``y`` (0/1) on ``x``, as at most ``n_knots`` interpolation
    knots over [0, 1] (raw 0 maps to the fit's lowest value, raw 1 to its highest)."""
    o = np.argsort(x, kind="stable")
    xs, ys = x[o], y[o].astype(np.float64)
    blocks = []  # [sum y, count, sum x]
    for xi, yi in zip(xs, ys):
        blocks.append([yi, 1.0, xi])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] >= blocks[-1][0] / blocks[-1][1]:
            s, c, sx = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += c
            blocks[-1][2] += sx
    bx = np.array([b[2] / b[1] for b in blocks])
    by = np.array([b[0] / b[1] for b in blocks])
    if len(bx) > n_knots:  # keep knots evenly spread over the samples
        idx = np.unique(np.linspace(0, len(bx) - 1, n_knots).round().astype(int))
        bx, by = bx[idx], by[idx]
    kx = np.concatenate([[0.0], bx, [1.0]])
    ky = np.concatenate([[min(by[0], 0.0) if bx[0] > 0 else by[0]], by, [by[-1]]])
    # knots as written (4 decimals): of raw values that round alike, the last (highest output) stays
    kx, ky = kx.round(4), np.maximum.accumulate(ky).round(4)
    keep = np.concatenate([np.diff(kx) > 0, [True]])
    return kx[keep], ky[keep]


def reliability(conf: np.ndarray, ok: np.ndarray, bins: int = 10) -> dict:
    """Per-bin mean confidence, fraction correct and count; ECE."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(conf, edges) - 1, 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        m = idx == b
        if not m.any():
            continue
        c, f = float(conf[m].mean()), float(ok[m].mean())
        rows.append({"bin": [round(edges[b], 2), round(edges[b + 1], 2)], "confidence": round(c, 3),
                     "correct": round(f, 3), "n": int(m.sum())})
        ece += m.sum() * abs(c - f)
    return {"bins": rows, "ece": round(ece / max(1, len(conf)), 4), "n": int(len(conf)),
            "correct": round(float(ok.mean()), 4) if len(ok) else None}


def _tracks(data: Path, split: str, limit: int | None):
    """(track id, fit half?, mix, reference beats) of the split's tracks with beats."""
    import zlib

    from engine.audio import load_audio

    from .data.layout import load_dataset

    for t in load_dataset(data, split=split)[: limit or None]:
        if not t.beats:
            continue
        half = zlib.crc32(str(t.meta.get("group", t.track_id)).encode()) % 2 == 0
        x = None
        for st in t.stems.values():
            a = load_audio(st.path)
            x = a if x is None else (np.pad(x, (0, max(0, len(a) - len(x)))) + np.pad(a, (0, max(0, len(x) - len(a)))))
        yield t.track_id, half, x, np.asarray(t.beats, dtype=np.float64)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.beatcal", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="dataset root (the layout of training/data/README.md)")
    ap.add_argument("--model", default=None, help="model directory (default: the shipped one)")
    ap.add_argument("--beat-source", choices=("net", "head"), default=None,
                    help="the beat network or the ViT beat head (default: the network when the model directory has one)")
    ap.add_argument("--max-tracks", type=int, default=None, help="validation tracks to use (default all)")
    ap.add_argument("--out", default=None, help="write the calibration knots here (e.g. engine/assets/beat_calibration.json)")
    ap.add_argument("--json", default=None, help="write the reliability report here")
    ap.add_argument("--cache", default=None, help="keep the live activations in this .npz (reused when present)")
    a = ap.parse_args(argv)

    from engine.backends import load_backend
    from engine.manifest import DEFAULT_MODEL_DIR
    from engine.pipeline import Matcher
    from engine.tracker import CausalBeatTracker

    model = Path(a.model) if a.model else DEFAULT_MODEL_DIR
    from engine.beatnet import find_beatnet

    source = a.beat_source or ("net" if find_beatnet(model) is not None else "head")
    cache = {}
    if a.cache and Path(a.cache).is_file():
        with np.load(a.cache, allow_pickle=False) as z:
            cache = {k: z[k] for k in z.files}
    matcher = None
    fingerprint = None

    def acts(key, audio):
        nonlocal matcher, fingerprint
        if key + "/act" in cache:
            return cache[key + "/act"], cache.get(key + "/down"), float(cache[key + "/t0"]), cache.get(key + "/tempo")
        if matcher is None:  # a packed directory's built forms: `python -m export.cache` first
            be = load_backend(model, threads=1)
            fingerprint = getattr(be.manifest, "fingerprint", None)
            matcher = Matcher(be, None, instruments=[], drop_late=False, beat_source=source)
            if matcher.beatnet is not None and matcher.beatnet.tempo_bpm is not None:
                cache["tempo_bpm"] = matcher.beatnet.tempo_bpm
        act, down, t0, tempo = live_activation(matcher, audio)
        cache[key + "/act"], cache[key + "/t0"] = act, np.float64(t0)
        if down is not None:
            cache[key + "/down"] = down
        if tempo is not None:
            cache[key + "/tempo"] = tempo
        return act, down, t0, tempo

    tracker = CausalBeatTracker(50.0, calibration=None, source=source)
    sets = {"fit": [], "eval": []}
    names = {"fit": [], "eval": []}
    for tid, fit_half, x, ref in _tracks(Path(a.data), "validation", a.max_tracks):
        part = "fit" if fit_half else "eval"
        act, down, t0, tempo = acts(f"validation/{tid}", x)
        sets[part].append(collect(act, t0, ref, tracker, down, tempo, cache.get("tempo_bpm")))
        names[part].append(tid)
        print(f"[beatcal] half {'AB'[part == 'eval']} {tid}: {len(sets[part][-1][0])} beats", flush=True)
    neg = {}
    for name, x in beatless_signals().items():
        act, down, t0, tempo = acts(f"beatless/{name}", x)
        c, ok = collect(act, t0, np.zeros(0), tracker, down, tempo, cache.get("tempo_bpm"))
        neg[name] = {"beats": int(len(c)), "max_raw_confidence": float(c.max()) if len(c) else 0.0}
        for part in sets:
            sets[part].append((c, ok))
    if a.cache:
        np.savez_compressed(a.cache, **cache)
    cat = {k: (np.concatenate([c for c, _ in v]), np.concatenate([o for _, o in v])) for k, v in sets.items()}
    ka, kb = isotonic(*cat["fit"]), isotonic(*cat["eval"])
    crossed = np.concatenate([np.interp(cat["eval"][0], *ka), np.interp(cat["fit"][0], *kb)])
    raw = np.concatenate([cat["eval"][0], cat["fit"][0]])
    ok = np.concatenate([cat["eval"][1], cat["fit"][1]])
    kx, ky = isotonic(raw, ok)  # the shipped fit: every validation track
    if fingerprint is None and (model / "packed.json").is_file():  # every activation came from the cache
        fingerprint = json.loads((model / "packed.json").read_text()).get("fingerprint")
    report = {"model": str(model), "fingerprint": fingerprint, "data": str(a.data),
              "beat_source": source,
              "halves": {"A": names["fit"], "B": names["eval"]},
              "raw": reliability(raw, ok), "calibrated_crossfit": reliability(crossed, ok), "beatless": neg,
              "knots": {"raw": kx.round(4).tolist(), "calibrated": ky.round(4).tolist()}}
    print(f"[beatcal] knots raw {report['knots']['raw']}\n[beatcal]   -> {report['knots']['calibrated']}")
    v = report["calibrated_crossfit"]
    print(f"[beatcal] validation ({len(names['fit'])} + {len(names['eval'])} tracks): {v['n']} beats, "
          f"{v['correct']:.1%} correct; ECE {v['ece']:.3f} calibrated (two-fold), {report['raw']['ece']:.3f} raw")
    for r in v["bins"]:
        print(f"[beatcal]   confidence {r['bin'][0]:.1f}-{r['bin'][1]:.1f}: mean {r['confidence']:.2f}, "
              f"correct {r['correct']:.2f} (n={r['n']})")
    print(f"[beatcal] beatless: {neg}")
    if a.out:
        out = Path(a.out)
        doc = json.loads(out.read_text()) if out.is_file() else {}
        doc = {} if "raw" in doc else doc  # a file of the one-source form is replaced
        doc[source] = {"raw": report["knots"]["raw"], "calibrated": report["knots"]["calibrated"],
                       "model_fingerprint": fingerprint, "command": f"python -m training.beatcal --beat-source {source}",
                       "fitted_on": f"{a.data}, validation split, {len(names['fit']) + len(names['eval'])} tracks",
                       "ece_crossfit": v["ece"], "ece_raw": report["raw"]["ece"]}
        out.write_text(json.dumps(doc, indent=1) + "\n")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
