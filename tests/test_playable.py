"""Issue 16, item 1: playable matches -- each stem's own beat grid (engine.stemgrid, stored by
engine.library), audio paths relative to an announced root, and a suggested cue that a client can
play in phase with the live beat (server/cues.py)."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zmq

from engine.audio import load_audio
from engine.library import LibraryError, StemLibrary, add_grids
from engine.stemgrid import FPS, Grid, estimate_grid, fold_ratio, onset_strength, track_consensus
from server import config
from server.cues import LEAD_S, CuePlanner, LiveBars
from server.testing import Subscriber

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
SR = 16000


def click_stem(bpm, seconds=20.0, start=0.3, seed=0, accent=True):
    """Hats on every beat, a kick (low, loud) on every 4th beat from ``start``; returns
    (audio, beats, downbeats)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    x = 0.002 * rng.standard_normal(n)
    beats = np.arange(start, seconds - 0.1, 60.0 / bpm)
    for k, b in enumerate(beats):
        i = int(round(b * SR))
        m = min(n - i, int(0.08 * SR))
        t = np.arange(m) / SR
        x[i:i + m] += 0.3 * np.exp(-t / 0.005) * rng.standard_normal(m)  # hat
        if accent and k % 4 == 0:
            x[i:i + m] += 0.8 * np.exp(-t / 0.03) * np.sin(2 * np.pi * 60 * t)  # kick
    return x.astype(np.float32), beats, beats[::4]


@pytest.mark.parametrize("bpm", [84.0, 120.0, 151.0])
def test_grid_of_click_stems(bpm):
    x, beats, downs = click_stem(bpm, seed=int(bpm))
    g = estimate_grid(x, SR)
    assert g is not None and g.scope == "stem"
    # the tempo is right up to an octave (the prior prefers 55-155 BPM: 151 with a kick every
    # 4 beats may come out as 75.5); the stretch ratio is folded the same way
    octave = 2.0 ** round(np.log2(bpm / g.tempo))
    assert abs(g.tempo * octave / bpm - 1) < 0.003, g.tempo
    if bpm < 150:
        assert octave == 1.0, g.tempo
    est = g.beats()
    # every estimated beat is a true beat (sharp clicks are placed up to ~10 ms early: N_FFT)
    err = np.array([np.min(np.abs(beats - b)) for b in est])
    assert np.median(err) < 0.010 and err.max() < 0.015, err
    assert abs(len(est) - len(beats) / octave) <= 1
    if octave == 1.0:  # at half tempo a "bar" is 8 true beats
        d_err = np.array([np.min(np.abs(g.downbeats() - d)) for d in downs])
        assert d_err.max() < 0.015, d_err
    # stored form round-trips
    g2 = Grid.from_dict(json.loads(json.dumps(g.to_dict())))
    assert np.allclose(g2.beats(), est, atol=1e-3) and np.allclose(g2.downbeats(), g.downbeats(), atol=1e-3)


def test_no_grid_without_a_beat_and_bad_input():
    rng = np.random.default_rng(1)
    assert estimate_grid(np.zeros(10 * SR, np.float32), SR) is None  # silence
    assert estimate_grid(0.1 * np.sin(2 * np.pi * 220 * np.arange(10 * SR) / SR), SR) is None  # a held tone
    assert estimate_grid(click_stem(120, seconds=3.0)[0], SR) is None  # too short
    with pytest.raises(ValueError):
        estimate_grid(rng.standard_normal(SR), 0)
    with pytest.raises(ValueError):
        fold_ratio(0.0)


def test_fold_ratio_and_onset_frames():
    assert fold_ratio(120 / 60) == pytest.approx(1.0)
    assert fold_ratio(120 / 100) == pytest.approx(1.2)
    assert fold_ratio(60 / 130) == pytest.approx(120 / 130)
    for r in (0.3, 0.71, 1.0, 1.41, 3.7):
        f = fold_ratio(r)
        assert 1 / np.sqrt(2) <= f < np.sqrt(2) and np.log2(f / r) == pytest.approx(round(np.log2(f / r)))
    # onset frame i is centred at i / FPS: one sharp click at 1.000 s peaks at most 10 ms early
    # (it enters the 32-ms window before the window's centre reaches it), never late
    x = np.zeros(3 * SR, np.float32)
    x[SR:SR + 80] = 1.0
    env, _ = onset_strength(x, SR)
    assert -2 <= int(np.argmax(env)) - int(1.0 * FPS) <= 0


def test_track_consensus_fixes_the_odd_stem_out():
    p = 0.5
    good = Grid(120.0, 0.1, 40, 0.6, 0.9)  # bar starts on the second beat
    grids = {"a": good, "b": Grid(120.3, 0.105, 40, 0.605, 0.8),
             "c": Grid(120.0, 0.1 + p / 2, 40, 0.1 + p / 2, 0.9),  # half a beat off
             "d": None, "e": Grid(90.0, 0.0, 30, 0.0, 0.9)}
    durs = {k: 20.0 for k in grids}
    out = track_consensus(grids, durs)
    assert out["a"].scope == "stem" and out["a"].first_beat == good.first_beat
    assert out["b"].scope == "stem" and out["b"].tempo == 120.3
    for k in ("c", "d", "e"):
        g = out[k]
        assert g.scope == "track" and g.tempo == pytest.approx(120.15, abs=0.2)
        assert min(abs(g.beats() - 0.1) % p).min() < 0.01 or np.min(np.abs(g.beats() - 0.1)) < 0.01
    for k in ("a", "b", "c", "d", "e"):  # every stem's bars start where the majority's do
        d = out[k].downbeats()
        assert np.min(np.abs(d - 0.6)) < 0.01 and np.min(np.abs(d - 2.6)) < 0.01, (k, d[:3])


def test_demo_library_grids_match_the_annotated_beats():
    """The shipped demo index stores each stem's grid; its tracks' track.json carry beats and
    downbeats from the source MIDI (never read by the estimator): compare."""
    lib = StemLibrary.load(config.DEFAULT_LIBRARY)
    assert lib.audio_root is not None and lib.audio_root.is_dir()
    beat_ok, down_ok, n = 0, {}, 0
    for st in lib.stems:
        f = lib.stem_file(st)
        assert f.is_file() and f.is_relative_to(lib.audio_root)
        assert st["stem_id"] == f.relative_to(lib.audio_root).with_suffix("").as_posix()  # the documented form
        ann = json.loads((f.parent / "track.json").read_text())
        ref, refd = np.array(ann["beats"]), np.array(ann["downbeats"])
        g = Grid.from_dict(st["grid"])
        assert g is not None, st["stem_id"]
        assert abs(g.tempo / (60 / np.median(np.diff(ref))) - 1) < 0.01, (st["stem_id"], g.tempo)
        b = g.beats()
        inside = ref[(ref > 0.5) & (ref < b[-1])]
        err = np.array([np.min(np.abs(b - r)) for r in inside])
        n += 1
        beat_ok += np.median(err) < 0.025
        hits = np.mean([np.min(np.abs(g.downbeats() - r)) < 0.05 for r in refd[(refd > 0.5) & (refd < b[-1])]])
        down_ok.setdefault(st["track_id"], []).append(hits)
    print(f"demo grids: {beat_ok}/{n} stems within 25 ms (median); downbeats per track "
          f"{ {k: round(float(np.mean(v)), 2) for k, v in down_ok.items()} }")
    assert beat_ok >= 0.9 * n
    assert sum(np.mean(v) > 0.75 for v in down_ok.values()) >= 4


def test_built_index_stores_grids_and_moves_with_its_audio(tmp_path, server_assets):
    """server_assets built its library with engine.library.build from a synthetic dataset whose
    track i plays at 100 + 12 i BPM."""
    lib = server_assets.load_library()
    assert lib.info["audio_root"] and not Path(lib.info["audio_root"]).is_absolute()
    for st in lib.stems:
        assert lib.stem_file(st).is_file() and not Path(st["path"]).is_absolute()
        bpm = 100 + 12 * int(st["track_id"][len("track"):])
        g = Grid.from_dict(st["grid"])
        assert g is not None, st
        assert abs(fold_ratio(g.tempo / bpm) - 1) < 0.01, (st["stem_id"], g.tempo, bpm)
        assert st["duration"] == pytest.approx(8.0, abs=0.01)
        assert lib.segment_length(st, 0.0) == pytest.approx(8.0, abs=0.01)
    # copy index + audio elsewhere: paths still resolve (relative to the index), to the new place
    dst = tmp_path / "moved"
    shutil.copytree(server_assets.dataset, dst / "audio")
    idx = dst / "lib.npz"
    lib.info["audio_root"] = "audio"
    lib.save(idx)
    moved = StemLibrary.load(idx)
    assert moved.audio_root == (dst / "audio").resolve()
    assert all(moved.stem_file(s).is_file() and moved.stem_file(s).is_relative_to(dst) for s in moved.stems)


@pytest.mark.slow
def test_grid_command_upgrades_an_old_index(tmp_path, server_assets):
    """An index from before grids (paths relative to the build's working folder, no audio root):
    `build` refuses to resume it with a clear message; `grid` adds grids and keeps the embeddings."""
    lib = server_assets.load_library()
    old_stems = [{k: v for k, v in s.items() if k not in ("grid", "duration")} for s in lib.stems]
    for s in old_stems:
        s["path"] = str(lib.stem_file(s))
    info = {k: v for k, v in lib.info.items() if k != "audio_root"}
    old = StemLibrary(lib.embeddings, lib.seg_stem, lib.seg_offset, old_stems, fingerprint=lib.fingerprint,
                      hop_s=lib.hop_s, window_s=lib.window_s, info=info, normalise=False)
    p = old.save(tmp_path / "old.npz")
    from engine.library import build

    with pytest.raises(LibraryError, match="predates beat grids"):
        build(server_assets.dataset, server_assets.backend(), p, progress=False, log=lambda s: None)
    r = subprocess.run([sys.executable, "-m", "engine.library", "grid", str(p), "--audio-dir",
                        str(server_assets.dataset)], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    new = StemLibrary.load(p)
    assert np.array_equal(new.embeddings, old.embeddings)
    assert all(s["grid"] for s in new.stems) and new.audio_root == server_assets.dataset.resolve()
    r = subprocess.run([sys.executable, "-m", "engine.library", "grid", str(tmp_path / "none.npz")],
                       env=ENV, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "no such stem library index" in r.stderr


def test_live_bars_number_beats_and_find_downbeats():
    bars = LiveBars()
    p = 0.5
    t = 0.0
    numbers = []
    for hop in range(60):  # 160-ms hops, a beat every 0.5 s from 1.0 s, one missed detection at 5.0 s
        st = 0.16 * (hop + 1)
        det = [b for b in np.arange(1.0, 12.0, p) if st - 0.16 <= b < st and abs(b - 5.0) > 1e-9]
        nxt = [b for b in np.arange(1.0, 12.0, p) if b > st][:4]
        bars.update(st, 120.0, det, nxt)
        d = bars.next_downbeat(st, 120.0, nxt)
        if d is not None:
            assert d[0] >= st + LEAD_S and d[1] % 4 == 0
            numbers.append(d)
        t = st
    # beat n is at 1.0 + n * 0.5 throughout, the missed beat notwithstanding
    assert numbers and all(abs(tt - (1.0 + n * p)) < 1e-9 for tt, n in numbers)
    bars.update(0.16, 120.0, [], [0.5])  # stream restarted: numbering restarts
    assert bars.last_number == -1


def test_live_bars_give_one_number_per_beat_through_octave_changes():
    """The demo's first seconds: the tracker forecasts at 187 BPM, then at 94, then at 187 again,
    detecting few beats. A client ticks each number at its latest forecast when that time comes. A
    forecast beat whose time passed was ticked, so it counts: the ticks' numbers rise one by one
    with time, none twice, and the octave changes skip no beat of the new tempo."""
    bars = LiveBars()
    fast, slow = 60 / 187.5, 60 / 93.75
    latest, ticks = {}, []  # number -> its latest forecast (stream s); (s, number) ticked
    for hop in range(40):
        st = 1.0 + 0.16 * hop
        for n, t in sorted(latest.items()):
            if t <= st and n not in {m for _, m in ticks}:
                ticks.append((t, n))
        tempo, period = (187.5, fast) if (st < 2.0 or 2.6 <= st < 2.9) else (93.75, slow)
        nxt = [b for b in np.arange(1.1, 12.0, period) if b > st][:4]
        bars.update(st, tempo, [], nxt)
        latest.update({n: t for t, n in zip(nxt, bars.numbers(nxt, period))})
    times, nums = zip(*ticks)
    assert list(nums) == list(range(nums[0], nums[0] + len(nums))), ticks
    assert all(b - a > fast / 2 for a, b in zip(times, times[1:])), ticks
    grid = np.arange(1.1, 7.0, fast)  # every tick is on a beat (of either tempo), and every slow beat ticks
    assert all(np.min(np.abs(grid - t)) < 1e-6 for t in times)
    slow_beats = [b for b in np.arange(1.1, 7.0, slow) if 3.1 < b < 6.8]
    assert all(np.min(np.abs(np.array(times) - b)) < 1e-6 for b in slow_beats), ticks
    assert bars.numbers([], slow) == [] and LiveBars().numbers([1.0], slow) == []


def _hop(st, state, signal=True):
    from engine.hop import HopResult

    return HopResult(stream_time=st, end_sample=int(st * SR), hop_index=int(round(st / 0.16)), ready=True,
                     window_frames=800, matches={}, beat=state, activation=np.zeros(8, np.float32),
                     activation_time=st - 0.16, timings={}, signal=signal)


@pytest.mark.parametrize("meter,bpm,first", [(3, 100.0, 0), (4, 120.0, 1)])
def test_cue_downbeats_are_the_trackers_bars(meter, bpm, first):
    """The real tracker fed a bar of ``meter`` beats whose first downbeat is beat ``first`` (beat
    and downbeat activations, 160-ms hops): once it has the bar, every cue downbeat is one of the
    piece's downbeats and its number a multiple of the meter -- downbeats every 3 beats in 3/4, not
    every 4th beat counted from the first."""
    from engine.tracker import CausalBeatTracker
    from test_tracker import bars as bar_activations

    act, down, beats, _ = bar_activations(bpm, meter, dur=14.0)
    down_times = beats[first] + np.arange(40) * meter * 60.0 / bpm  # on past the end: the forecast
    shift = int(round(first * 60.0 / bpm * 50))  # move the downbeat bumps onto beat ``first`` of each bar
    down = np.roll(down, shift)
    down[:shift] = 0.0
    tracker, planner = CausalBeatTracker(50.0), CuePlanner()
    got = []
    for hop in range(len(act) // 8):
        st = 0.16 * (hop + 1)
        state = tracker.process(act[8 * hop:8 * hop + 8], down[8 * hop:8 * hop + 8])
        planner.plan(_hop(st, state), st, 1000.0 + st, 1.0, None)
        if st > 6.0:
            assert planner.downbeat is not None, st
            got.append(planner.downbeat)
    assert state.meter == meter and planner.bars.meter == meter
    times = np.array([t for t, _ in got])
    assert np.max(np.min(np.abs(times[:, None] - down_times[None, :]), axis=1)) < 0.03, times[:10]
    assert all(n % meter == 0 for _, n in got)
    distinct = sorted({n for _, n in got})
    assert len(distinct) >= 3 and set(np.diff(distinct)) == {meter}, distinct


def test_cues_without_a_tracker_bar_count_in_fours_and_none_without_a_beat():
    """A tracker state with no bar (no ``next_downbeat``) is counted in bars of 4 from the first
    beat; the no-beat state gives no cue and no tempo at all."""
    from engine.tracker import BeatState

    planner = CuePlanner()
    p, downs = 0.5, []
    for hop in range(40):
        st = 0.16 * (hop + 1)
        grid = np.arange(1.0, 12.0, p)
        state = BeatState(time=st, tempo=120.0, phase=0.0, last_beat=1.0, next_beats=grid[grid > st][:4],
                          confidence=0.9, beats=[b for b in grid if st - 0.16 <= b < st], meter=3,
                          next_downbeat=None)
        planner.plan(_hop(st, state), st, None, 1.0, None)
        if planner.downbeat is not None:
            downs.append(planner.downbeat)
    assert downs and all(n % 4 == 0 and abs(t - (1.0 + n * p)) < 1e-9 for t, n in downs)
    state.no_beat = True
    planner.plan(_hop(7.0, state), 7.0, None, 1.0, None)
    assert planner.downbeat is None and planner.tempo is None


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_suggested_cue_played_against_the_live_beat_grid_is_in_phase(tmp_path):
    """The demo replayed through the real server: for the top match of every instrument, render
    the stem the way a client would -- its audio from ``cue.stem_pos``, resampled by ``stretch``,
    starting at ``cue.stream_time`` -- and find the onsets of that rendered audio next to the
    reported live beats (``cue.stream_time + k * 60 / tempo``). Median phase error <= 20 ms."""
    pub, ctl = f"tcp://127.0.0.1:{_free_port()}", f"tcp://127.0.0.1:{_free_port()}"
    p = subprocess.Popen([sys.executable, "-m", "server", "--input", str(config.DEMO_TRACK), "--speed", "1.5",
                          "--pub", pub, "--ctl", ctl], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    ctx = zmq.Context()
    sub = Subscriber(ctx, pub)
    try:
        sub.poll(120, until=lambda t, m: t == "match" and m["stream_time"] > 14.0)
    finally:
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=30)
        sub.close()
        ctx.term()
    assert not sub.errors, sub.errors[:3]
    status = sub.of("status")
    assert status and status[-1]["library"]["audio_root"]
    root = Path(status[-1]["library"]["audio_root"])
    beats = {m["hop"]: m for m in sub.of("beat")}
    checked, errs = 0, []
    next_t = 8.0
    for m in sub.of("match"):  # one hop every ~1.2 s of stream from 8 s (dropped hops do not matter)
        if m["stream_time"] < next_t or m["hop"] not in beats:
            continue
        next_t = m["stream_time"] + 1.2
        b = beats[m["hop"]]
        for inst, items in m["matches"].items():
            it = items[0]
            assert it["cue"] is not None and it["stretch"] is not None, (inst, it)
            cue = it["cue"]
            assert (root / it["path"]).resolve() == Path(it["file"]) and Path(it["file"]).is_file()
            assert cue["stream_time"] >= m["stream_time"] + LEAD_S - 1e-6 and cue["beat"] % 4 == 0
            assert cue["wall_time"] > m["wall_time"] - 1.0
            period = 60.0 / b["tempo"]
            # the cue is on the reported beat grid of the same hop
            k = (cue["stream_time"] - b["next_beats"][0]) / period
            assert abs(k - round(k)) * period < 0.002
            # the cue starts the stem on one of its downbeats inside the segment
            g = Grid.from_dict(it["grid"])
            assert it["offset"] - 1e-3 <= cue["stem_pos"] < it["offset"] + it["length"]
            assert np.min(np.abs(g.beats() - cue["stem_pos"])) < 1e-3
            # render: stem audio from stem_pos at rate `stretch`, on the stream timeline from the cue
            x = load_audio(it["file"], SR)
            dur_out = (it["offset"] + it["length"] - cue["stem_pos"]) / it["stretch"]
            t_out = np.arange(int(dur_out * SR)) / SR
            pos = (cue["stem_pos"] + t_out * it["stretch"]) * SR
            y = np.interp(pos, np.arange(len(x)), x).astype(np.float32)
            env, _ = onset_strength(y, SR)
            strong = 0.3 * env.max()
            e_item = []
            for kk in range(1, int(dur_out / period)):
                c = kk * period  # live beat kk after the cue, in rendered-audio time
                lo, hi = int((c - period / 4) * FPS), int((c + period / 4) * FPS)
                w = env[max(0, lo):hi]
                if len(w) and w.max() > strong:
                    e_item.append((max(0, lo) + int(np.argmax(w))) / FPS - c)
            if len(e_item) >= 4:
                checked += 1
                errs += e_item
    assert checked >= 6, f"only {checked} cues had onsets to check"
    errs = np.abs(errs)
    print(f"cue phase: {checked} cues, {len(errs)} beats, median {1000 * np.median(errs):.1f} ms, "
          f"p90 {1000 * np.percentile(errs, 90):.1f} ms")
    assert np.median(errs) <= 0.020
