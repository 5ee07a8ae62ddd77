"""The live bar tracker (engine/tracker.py) on synthetic activations: bars and meter, the no-beat
state, holding through a break, chunking invariance, calibration. (Real audio through the shipped
model: tests/test_nobeat_live.py.)"""
import json

import mir_eval
import numpy as np
import pytest

from engine.tracker import BarStateSpace, CausalBeatTracker, load_calibration

FPS = 50


def bars(bpm=120.0, meter=4, dur=30.0, start=0.3, noise=0.05, seed=0, down_level=0.9, gap=None):
    """(beat activation, downbeat activation, beats, downbeats): bumps on every beat, the downbeat
    activation high on each bar's first beat; ``gap = (t0, t1)``: no activation in between."""
    rng = np.random.default_rng(seed)
    n = int(dur * FPS)
    tt = np.arange(n) / FPS
    beats = np.arange(start, dur - 0.2, 60.0 / bpm)
    downs = beats[::meter]
    bump = lambda b: np.exp(-0.5 * ((tt - b) / 0.012) ** 2)  # noqa: E731
    act = sum(0.9 * bump(b) for b in beats) + noise * rng.random(n)
    down = sum(down_level * bump(b) for b in downs) + 0.5 * noise * rng.random(n)
    if gap is not None:
        m = (tt >= gap[0]) & (tt < gap[1])
        act[m] = 0.0
        down[m] = 0.0
        keep = (beats < gap[0]) | (beats >= gap[1])
        beats, downs = beats[keep], downs[(downs < gap[0]) | (downs >= gap[1])]
    return np.clip(act, 0, 1), np.clip(down, 0, 1), beats, downs


def fmeasure(ref, est):
    return mir_eval.beat.f_measure(mir_eval.beat.trim_beats(ref), mir_eval.beat.trim_beats(np.asarray(est)))


def test_state_space_blocks():
    sp = BarStateSpace(50, 55, 215, meters=(4, 3))
    assert sp.n_blocks == 7 and sp.n_states == 7 * sp.beat.n_states
    assert np.allclose(sp.block_trans_t.sum(axis=0), 1.0)  # every block hands on all its mass
    assert sp.down_region.sum() * 7 == sp.beat_region.sum() * 2  # two downbeat blocks of seven
    assert abs(sp.init.sum() - 1.0) < 1e-12
    # the meters share the entry mass alike
    per_meter = [sp.init.reshape(7, -1)[sp.block_meter == m].sum() for m in (4, 3)]
    assert np.allclose(per_meter, 0.5, atol=1e-5)


@pytest.mark.parametrize("meter,bpm", [(4, 120.0), (3, 100.0), (4, 168.0)])
def test_downbeats_and_meter_with_a_downbeat_activation(meter, bpm):
    act, down, ref, ref_down = bars(bpm, meter)
    tr = CausalBeatTracker(FPS)
    st = tr.process(act, down)
    assert fmeasure(ref, st.beats) > 0.95
    assert fmeasure(ref_down, st.downbeats) > 0.9, (st.downbeats[:8], ref_down[:8])
    assert st.meter == meter and st.meter_confidence > 0.9
    assert st.bar_confidence > 0.8
    assert not st.no_beat and st.beat_presence > 0.9
    # the next downbeat forecast is a reference downbeat (extrapolated past the end)
    grid = ref_down[0] + np.arange(200) * meter * 60.0 / bpm
    assert np.min(np.abs(grid - st.next_downbeat)) < 0.04
    assert st.next_downbeat >= st.next_beats[0] - 1e-9
    assert 0.0 <= st.bar_phase < 1.0


def test_without_a_downbeat_activation_bars_have_low_confidence_but_count_on():
    act, _, ref, _ = bars(120.0, 4)
    tr = CausalBeatTracker(FPS)
    in_bar = []
    for i in range(0, len(act), 8):
        st = tr.process(act[i:i + 8])
        if st.beats:
            in_bar.append(st.beat_in_bar)
    assert fmeasure(ref, tr.run(act)) > 0.95
    st = tr.state()
    assert st.bar_confidence < 0.6 and st.meter_confidence < 0.75
    # consecutive beats step through the bar one by one
    steps = np.diff(in_bar[4:]) % st.meter
    assert np.all(steps == 1), in_bar


def test_downbeat_activation_length_must_match():
    with pytest.raises(ValueError):
        CausalBeatTracker(FPS).process(np.zeros(10), np.zeros(9))


NO_BEAT = {  # (source, activation): what each beat source draws where there is no beat
    ("net", "zeros"): lambda rng, n: np.zeros(n),
    ("net", "low flat"): lambda rng, n: np.full(n, 0.05),
    ("net", "low noise"): lambda rng, n: 0.02 + 0.1 * rng.random(n),
    ("head", "zeros"): lambda rng, n: np.zeros(n),
    ("head", "flat"): lambda rng, n: np.full(n, 0.3),
    ("head", "uniform noise"): lambda rng, n: 0.2 + 0.1 * rng.random(n),
    ("head", "column ramp"): lambda rng, n: np.tile([0.1, 0.08, 0.15, 0.19, 0.24, 0.41, 0.57, 0.65], n // 8 + 1)[:n],
    ("head", "ramp + noise"): lambda rng, n: np.clip(np.tile(np.linspace(0.1, 0.5, 8), n // 8 + 1)[:n]
                                                     + 0.03 * rng.standard_normal(n), 0, 1),
}


@pytest.mark.parametrize("source,name", sorted(NO_BEAT))
def test_no_beat_state_on_activations_without_a_pulse(source, name):
    """No pulse: no beats, the no-beat state, confidence near 0. The beat network draws little
    on a sound without a beat (below 0.1 on noise, tones, chords); the ViT head draws a flat level,
    noise, and the encoder column's fixed ramp on any steady sound, which the head's background
    removes. (Its noise is as strong as the head's on white noise, std 0.03-0.07 after the
    background; docs/report/beats_clock.md gives the limit.)"""
    rng = np.random.default_rng(0)
    act = NO_BEAT[(source, name)](rng, 20 * FPS)
    tr = CausalBeatTracker(FPS, source=source)
    confs, beats = [], []
    for i in range(0, len(act), 8):
        st = tr.process(act[i:i + 8])
        confs.append(st.confidence)
        beats += st.beats
        assert st.no_beat
    assert beats == []
    assert max(confs) < 0.05, max(confs)


STEEP_LOW_END = ([0.0, 0.0378, 0.4894, 1.0], [0.0, 0.3333, 0.4884, 1.0])  # a refit whose least sure beats were 1/3 right


@pytest.mark.parametrize("name", sorted(n for s, n in NO_BEAT if s == "net"))
def test_no_beat_confidence_stays_near_zero_under_a_steep_calibration(name):
    """The calibration is fitted on reported beats; in the no-beat state no beat is reported and
    the confidence stays the raw one when that is smaller, however steep the map's low end."""
    act = NO_BEAT[("net", name)](np.random.default_rng(0), 20 * FPS)
    tr = CausalBeatTracker(FPS, source="net", calibration=STEEP_LOW_END)
    states = [tr.process(act[i:i + 8]) for i in range(0, len(act), 8)]
    assert all(st.no_beat for st in states) and max(st.confidence for st in states) < 0.05


def test_a_pulse_keeps_its_calibrated_confidence():
    act, _, _, _ = bars(120.0, 4, dur=20.0)
    raw, cal = (CausalBeatTracker(FPS, source="net", calibration=c) for c in (None, STEEP_LOW_END))
    for i in range(0, len(act), 8):
        a, b = raw.process(act[i:i + 8]), cal.process(act[i:i + 8])
    assert not b.no_beat and b.confidence == pytest.approx(np.interp(a.confidence, *STEEP_LOW_END))


@pytest.mark.parametrize("source", ["net", "head"])
def test_locks_fast_holds_through_a_break_and_lets_go_of_silence(source):
    act, _, ref, _ = bars(120.0, 4, dur=40.0, gap=(15.0, 16.2))
    tr = CausalBeatTracker(FPS, source=source)
    states = []
    for i in range(0, len(act), 8):
        states.append(tr.process(act[i:i + 8]))
    beats = np.concatenate([s.beats for s in states if s.beats])
    first_ok = beats[np.min(np.abs(beats[:, None] - ref[None, :]), axis=1) < 0.07][0]
    assert first_ok < 2.5, beats[:6]  # locked within about three beats
    in_gap = [s for s in states if 15.0 < s.time < 16.2]
    assert in_gap and not any(s.no_beat for s in in_gap)  # a 1.2-s break (two beats of nothing) is held
    after = [s for s in states if s.time > 18.0]
    assert fmeasure(ref[ref > 18.0], np.concatenate([s.beats for s in after if s.beats])) > 0.95
    # ...and a long silence is let go: the no-beat state takes over
    for _ in range(int(12 * FPS / 8)):
        st = tr.process(np.zeros(8))
    assert st.no_beat and st.confidence < 0.05 and not st.beats


def _chunked(act, down, mode, rng, source="net"):
    tr = CausalBeatTracker(FPS, source=source)
    beats, downs, st, i = [], [], None, 0
    while i < len(act):
        n = 1 if mode == "frames" else int(rng.integers(1, 40))
        st = tr.process(act[i:i + n], None if down is None else down[i:i + n])
        beats += st.beats
        downs += st.downbeats
        i += n
    return tr, st, beats, downs


@pytest.mark.parametrize("with_down,source", [(True, "net"), (False, "net"), (False, "head")])
def test_chunking_invariance_with_bars_and_no_beat(with_down, source):
    act, down, _, _ = bars(100.0, 3, dur=24.0, gap=(8.0, 16.0), seed=2)
    down = down if with_down else None
    whole = CausalBeatTracker(FPS, source=source)
    s_whole = whole.process(act, down)
    rng = np.random.default_rng(0)
    for mode in ("chunks", "frames"):
        tr, st, beats, downs = _chunked(act, down, mode, rng, source)
        assert beats == s_whole.beats and downs == s_whole.downbeats
        a, b = st.to_dict(), s_whole.to_dict()
        for k in ("beats", "downbeats"):
            a.pop(k), b.pop(k)
        assert a == b
    whole.reset()
    again = whole.process(act, down)
    assert again.beats == s_whole.beats and again.downbeats == s_whole.downbeats
    assert again.to_dict() == s_whole.to_dict()


def test_calibration_file_and_knots(tmp_path):
    p = tmp_path / "cal.json"
    p.write_text(json.dumps({"raw": [0.0, 0.5, 1.0], "calibrated": [0.0, 0.2, 0.9]}))
    x, y = load_calibration(p)
    assert list(x) == [0.0, 0.5, 1.0] and list(y) == [0.0, 0.2, 0.9]
    assert load_calibration(tmp_path / "missing.json") is None
    p.write_text(json.dumps({"raw": [0.0, 0.5, 0.4], "calibrated": [0.0, 0.2, 0.9]}))
    with pytest.raises(ValueError):
        load_calibration(p)
    act, _, _, _ = bars(120.0, 4, dur=12.0)
    raw = CausalBeatTracker(FPS, calibration=None)
    cal = CausalBeatTracker(FPS, calibration=([0.0, 1.0], [0.0, 0.5]))
    a, b = raw.process(act), cal.process(act)
    assert a.beats == b.beats
    assert b.confidence == pytest.approx(0.5 * a.confidence)
    assert 0.0 <= CausalBeatTracker(FPS).process(act).confidence <= 1.0  # the shipped calibration
    # a file of calibrations per source: each source reads its own; a source without one: raw
    p.write_text(json.dumps({"net": {"raw": [0.0, 1.0], "calibrated": [0.0, 0.5]},
                             "head": {"raw": [0.0, 1.0], "calibrated": [0.0, 0.25]}}))
    assert list(load_calibration(p, "head")[1]) == [0.0, 0.25] and list(load_calibration(p, "net")[1]) == [0.0, 0.5]
    p.write_text(json.dumps({"net": {"raw": [0.0, 1.0], "calibrated": [0.0, 0.5]}}))
    assert load_calibration(p, "head") is None


def test_sources_and_retuned():
    net, head = CausalBeatTracker(FPS), CausalBeatTracker(FPS, source="head")
    assert (net.source, net.background, head.background) == ("net", False, True)
    assert head.p_enter > net.p_enter
    t = head.retuned(min_bpm=100.0, max_bpm=140.0, time_offset=2.0)
    assert t.source == "head" and t.background and t.time_offset == 2.0
    assert t.ss.intervals[0] == 21 and t.ss.intervals[-1] == 30
    with pytest.raises(ValueError):
        CausalBeatTracker(FPS, source="madmom")


def test_beat_eval_reads_the_trackers_own_downbeats():
    """``python -m training eval beats`` scores the causal downbeats of the engine's bar tracker."""
    from types import SimpleNamespace

    from training.beat_eval import causal_bars

    act, down, ref, ref_down = bars(120.0, 3, dur=20.0)
    beats, downs = causal_bars(SimpleNamespace(beat=act, downbeat=down, fps=FPS, t0=1.0))
    assert fmeasure(ref + 1.0, beats) > 0.95 and fmeasure(ref_down + 1.0, downs) > 0.9
    assert causal_bars(SimpleNamespace(beat=act, downbeat=None, fps=FPS, t0=0.0))[1] is None


def test_beat_eval_sweep_grid_and_tracker_settings():
    """The tracker sweep's grid is every combination of the values given, and causal_bars hands
    a setting to the tracker (a tempo range that excludes the track's tempo loses its beats)."""
    from types import SimpleNamespace

    from training.beat_eval import causal_bars, parse_grid

    grid = parse_grid(["lambda_obs=4,8", "p_enter=1e-3,3e-3,1e-2"])
    assert len(grid) == 6 and {"lambda_obs": 8.0, "p_enter": 1e-2} in grid
    with pytest.raises(ValueError):
        parse_grid(["lambda_obs"])
    assert parse_grid(["meters=4+3,4+3+2"]) == [{"meters": (4, 3)}, {"meters": (4, 3, 2)}]
    act, down, ref, _ = bars(120.0, 4, dur=20.0)
    a = SimpleNamespace(beat=act, downbeat=down, fps=FPS, t0=0.0)
    assert fmeasure(ref, causal_bars(a)[0]) > 0.95
    assert fmeasure(ref, causal_bars(a, min_bpm=150.0, max_bpm=210.0)[0]) < 0.8


def test_isotonic_knots_survive_rounding_to_the_written_decimals(tmp_path):
    """Knots are written with 4 decimals; raw values that round alike (0.99997 and 1.0) must not
    leave two equal raw knots, which the engine's loader refuses."""
    from engine.beatcal import load_calibration
    from training.beatcal import isotonic

    x = np.r_[np.linspace(0.0, 0.9, 50), np.full(20, 0.99997)]
    y = np.r_[(np.linspace(0.0, 0.9, 50) > 0.4).astype(float), np.ones(20)]
    kx, ky = isotonic(x, y)
    assert np.all(np.diff(kx) > 0) and np.all(np.diff(ky) >= 0) and kx[-1] == 1.0
    assert np.array_equal(kx, kx.round(4)) and np.array_equal(ky, ky.round(4))
    import json
    f = tmp_path / "cal.json"
    f.write_text(json.dumps({"net": {"raw": kx.tolist(), "calibrated": ky.tolist()}}))
    got = load_calibration(f, "net")
    assert np.allclose(got[0], kx)


def test_downbeat_power_weights_the_downbeat_evidence():
    """``downbeat_power`` 0 leaves the downbeat activation without weight (the beats are those of a
    tracker without one, bit for bit); the default still finds the bars; a negative power is refused."""
    act, down, _, ref_down = bars(120.0, 4, 30.0)
    plain = CausalBeatTracker(fps=FPS).run_bars(act, None)[0]
    off = CausalBeatTracker(fps=FPS, downbeat_power=0.0).run_bars(act, down)[0]
    assert np.array_equal(plain, off)
    _, downs = CausalBeatTracker(fps=FPS).run_bars(act, down)
    assert fmeasure(ref_down, downs) > 0.9
    with pytest.raises(ValueError, match="downbeat_power"):
        CausalBeatTracker(fps=FPS, downbeat_power=-1.0)


def test_tempo_input_chooses_the_octave_and_never_the_beat_presence():
    """A beat activation of 60-BPM beats (peaks of 0.9) with weaker half beats (0.6) is tracked at
    120 BPM without a tempo input (both peaks fall in its beat regions); a tempo input
    that says 60 BPM makes the tracker keep 60 with ``tempo_power`` > 0, and changes nothing at
    power 0 (bit for bit). The tempo input only moves mass between tempi, frame by frame: on silence, a
    confident tempo input gives no beats, and the no-beat state holds as much as without it.
    Mismatched shapes are refused."""
    t = np.arange(int(30 * FPS)) / FPS
    d1, d2 = ((t - 0.3 + 0.5) % 1.0) - 0.5, ((t - 0.8 + 0.5) % 1.0) - 0.5  # beats, half beats
    act = np.clip(0.03 + 0.9 * np.exp(-0.5 * (d1 / 0.02) ** 2) + 0.6 * np.exp(-0.5 * (d2 / 0.02) ** 2)
                  + 0.03 * np.random.default_rng(0).random(t.size), 0, 1)
    classes = np.geomspace(50.0, 240.0, 48)
    p = np.exp(-0.5 * ((np.log2(classes) - np.log2(60.0)) / 0.05) ** 2)
    tempo = np.tile(p / p.sum(), (len(t), 1)).astype(np.float32)
    plain = CausalBeatTracker(fps=FPS)
    st = plain.process(act)
    assert abs(st.tempo - 120.0) < 2.0
    off = CausalBeatTracker(fps=FPS, tempo_power=0.0).process(act, tempo=tempo, tempo_classes=classes)
    assert off.beats == st.beats and off.tempo == st.tempo
    on = CausalBeatTracker(fps=FPS, tempo_power=0.05).process(act, tempo=tempo, tempo_classes=classes)
    assert abs(on.tempo - 60.0) < 1.5 and 0.4 * len(st.beats) < len(on.beats) < 0.6 * len(st.beats)
    quiet = np.full(t.size, 0.02)
    a, b = CausalBeatTracker(fps=FPS), CausalBeatTracker(fps=FPS, tempo_power=1.0)
    sa, sb = a.process(quiet), b.process(quiet, tempo=tempo, tempo_classes=classes)
    assert not sa.beats and not sb.beats and sb.no_beat and b.none >= a.none - 0.02
    with pytest.raises(ValueError, match="tempo"):
        CausalBeatTracker(fps=FPS, tempo_power=0.1).process(act, tempo=tempo[:10], tempo_classes=classes)
    with pytest.raises(ValueError, match="tempo"):
        CausalBeatTracker(fps=FPS, tempo_power=0.1).process(act, tempo=tempo, tempo_classes=classes[:5])
    with pytest.raises(ValueError, match="tempo_classes"):
        CausalBeatTracker(fps=FPS, tempo_power=0.1).process(act, tempo=tempo)
    with pytest.raises(ValueError, match="tempo_power"):
        CausalBeatTracker(fps=FPS, tempo_power=-0.5)
