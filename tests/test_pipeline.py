import mir_eval
import numpy as np
import pytest
from test_pipeline_backend import MicroBackend, Passthrough, mixture, synth_stems, write_dataset

from engine.library import LibraryError, StemLibrary, build
from engine.pipeline import Matcher

SR = 16000


@pytest.fixture(scope="module")
def backend():
    return MicroBackend(seed=0)


@pytest.fixture(scope="module")
def library(tmp_path_factory, backend):
    root = tmp_path_factory.mktemp("ds")
    ds = write_dataset(root / "ds", n_tracks=4, seconds=16.0)
    return build(ds, backend, root / "idx", progress=False, log=lambda m: None)


def key(r):
    """Everything deterministic in a hop result (timings excluded)."""
    b = r.beat
    return (r.end_sample, r.hop_index, r.ready, r.window_frames,
            {k: [(m.stem_id, m.offset, m.score) for m in v] for k, v in r.matches.items()},
            r.activation.tobytes(), r.activation_time,
            None if b is None else (b.tempo, b.phase, b.last_beat, tuple(b.next_beats), b.confidence, tuple(b.beats)))


@pytest.mark.slow
def test_chunking_invariance(backend, library):
    x = mixture(1, 12.0)
    runs = {}
    for name, chunk in (("whole", len(x)), ("1000", 1000), ("frame", 160)):
        m = Matcher(backend, library, instruments=["drums", "fretless bass"], k=3)
        runs[name] = [key(r) for r in m.run_array(x, chunk=chunk)]
    # irregular callback blocks written straight into the ring, the worker polling in between
    m = Matcher(backend, library, instruments=["drums", "fretless bass"], k=3, drop_late=False)
    rng = np.random.default_rng(0)
    out, i = [], 0
    while i < len(x):
        n = int(rng.integers(1, 3000))
        m.ring.write(x[i:i + n])
        i += n
        while (r := m.process_hop()) is not None:
            out.append(key(r))
    runs["random"] = out
    ref = runs["whole"]
    n_hops = (len(x) - 240) // 2560
    assert len(ref) == n_hops
    for name, r in runs.items():
        assert r == ref, name
    # hop grid: each hop ends 2560 samples after the previous; the lead makes frames = 16 n
    ends = [k[0] for k in ref]
    assert ends[0] == 2560 + 240 and np.all(np.diff(ends) == 2560)
    # window grows by one column per hop until 8 s, then stays 800 frames
    frames = [k[3] for k in ref]
    assert frames[:3] == [16, 32, 48] and frames[-1] == 800 and max(frames) == 800
    ready = [k[2] for k in ref]
    assert ready.index(True) == 6 and frames[6] == 112  # first window of >= 1 s (7 columns)
    assert all(len(k[4]["drums"]) == 3 for k in ref if k[2])


def test_own_stem_found_at_its_offset(backend, library):
    # Untrained weights: the predictor's output is arbitrary, so the query is the pooled context
    # embedding (Passthrough); a fresh model's target encoder equals its encoder. Feeding a stem
    # alone, the hop whose window is the library's segment [4 s, 12 s) must find exactly it.
    stem = synth_stems(2, 16.0, bpm=100 + 12 * 2)["drums"]
    m = Matcher(Passthrough(backend), library, instruments=["drums"], k=5)
    res = m.run_array(stem)
    aligned = [r for r in res if r.ready and r.window_frames == 800 and (r.end_sample - 240) // 160 in (800, 1200)]
    assert len(aligned) == 2
    for r, off in zip(aligned, (0.0, 4.0)):
        top = r.matches["drums"][0]
        assert (top.stem_id, top.track_id, top.offset, top.category) == ("track2/drums", "track2", off, "drums")
        assert top.score > 0.9999
    full = [r for r in res if r.ready and r.window_frames == 800]
    assert sum(r.matches["drums"][0].stem_id == "track2/drums" for r in full) >= 0.8 * len(full)
    # and a track's stems are all in the library under their own track
    assert {s["stem_id"] for s in library.stems if s["track_id"] == "track2"} == {"track2/bass", "track2/drums", "track2/keys"}


def test_predictor_once_per_hop_and_conditioning_cached(library):
    b = MicroBackend(seed=0)
    m = Matcher(b, library, instruments=["drums", "electric bass", "drums"], k=4)
    assert m.instruments == ["drums", "electric bass"]  # duplicates dropped
    assert b.calls["condition"] == 1
    res = m.run_array(mixture(0, 10.0))
    ready = [r for r in res if r.ready]
    assert b.calls["predict"] == len(ready) and b.calls["encode"] == len(ready)
    assert b.calls["condition"] == 1
    last = ready[-1]
    assert set(last.matches) == {"drums", "electric bass"}
    assert [m_.stem_id for m_ in last.matches["drums"]] != [m_.stem_id for m_ in last.matches["electric bass"]] or \
        [m_.score for m_ in last.matches["drums"]] != [m_.score for m_ in last.matches["electric bass"]]
    for v in last.matches.values():
        assert len(v) == 4 and len({x.stem_id for x in v}) == 4
    m.set_instruments(["bass"])
    assert b.calls["condition"] == 2
    # category restriction: "electric bass" is a label of the library -> category bass
    m.set_instruments(["electric bass", "drum kit", "kazoo"])
    assert m.restrict_category  # on by default
    r = m.run_array(mixture(0, 0.32))[-1]
    assert all(x.category == "bass" for x in r.matches["electric bass"])
    assert all(x.category == "drums" for x in r.matches["drum kit"])
    assert len(r.matches["kazoo"]) == 4 and all(x.category == "other" for x in r.matches["kazoo"])
    m.set_restrict_category(False)  # off: every instrument ranks the whole library
    r = m.run_array(mixture(0, 0.32))[-1]
    assert len({x.category for v in r.matches.values() for x in v}) > 1
    assert {x.category for x in r.matches["electric bass"]} != {"bass"}
    m.set_restrict_category(True)
    m.set_k(2)
    r = m.run_array(mixture(0, 0.16))[-1]
    assert all(len(v) == 2 for v in r.matches.values())
    with pytest.raises(ValueError):
        m.set_k(0)
    with pytest.raises(ValueError):
        m.set_instruments(["  "])


def test_empty_instruments_and_no_library(backend, library):
    m = Matcher(backend, library, instruments=[], k=3)
    r = [r for r in m.run_array(mixture(0, 3.0)) if r.ready][-1]
    assert r.matches == {} and r.beat is not None and len(r.activation) == 8
    m = Matcher(backend, None, instruments=["drums"], k=3)
    r = m.run_array(mixture(0, 3.0))[-1]
    assert r.matches == {"drums": []}


def test_late_hops_are_dropped_not_queued(backend, library):
    x = mixture(3, 14.0)
    ref = Matcher(backend, library, instruments=["drums"], k=3).run_array(x[:8 * SR + 240])
    live = Matcher(backend, library, instruments=["drums"], k=3)  # drop_late=True
    live.run_array(x[:6 * SR], drop_late=True)  # keeps up: hop by hop
    n_before = live.hops
    live.ring.write(x[6 * SR:8 * SR + 240])  # 2 s arrive at once
    waiting = live.pending_hops()
    assert waiting == 13  # hops ending at 240 + n * 2560 for n = 38..50
    r = live.process_hop()
    assert live.process_hop() is None  # nothing queued behind it
    assert r.counters["drops"] == 12 and r.counters["hops"] == n_before + 1
    assert key(r)[:5] == key(ref[-1])[:5]  # same window, same matches as computing every hop
    assert r.hop_index == ref[-1].hop_index
    # the beat tracker still receives every activation frame of the skipped audio (13 hops x 8)
    assert len(r.activation) == 13 * 8
    assert r.activation_time == pytest.approx(ref[-13].activation_time)


def test_stall_longer_than_window_restarts_front_end(backend, library):
    x = mixture(3, 16.0)
    ref = Matcher(backend, library, instruments=["drums"], k=3).run_array(x)
    m = Matcher(backend, library, instruments=["drums"], k=3)
    m.run_array(x[:2 * SR], drop_late=True)
    m.ring.write(x[2 * SR:])  # 14 s at once
    r = m.process_hop()
    assert r.counters["restarts"] == 1 and r.counters["drops"] > 60
    assert key(r)[:5] == key(ref[-1])[:5]  # the window is rebuilt exactly from the ring
    assert len(r.activation) == 400  # tracker restarted on the whole new window


def test_nonfinite_samples_are_zeroed_and_counted(backend, library):
    x = mixture(0, 9.0)
    bad = x.copy()
    bad[1000:1010] = np.nan
    bad[50000] = np.inf
    bad[70000] = -np.inf
    clean = x.copy()
    clean[1000:1010] = 0
    clean[[50000, 70000]] = 0
    m = Matcher(backend, library, instruments=["drums"], k=3)
    rb = m.run_array(bad)
    assert rb[-1].counters["nonfinite"] == 12
    rc = Matcher(backend, library, instruments=["drums"], k=3).run_array(clean)
    assert [key(a) for a in rb] == [key(b) for b in rc]
    assert all(np.isfinite(r.activation).all() for r in rb)


def test_reset_and_set_hop(backend, library):
    a, x = mixture(0, 3.0), mixture(1, 10.0)
    m = Matcher(backend, library, instruments=["drums"], k=3)
    m.run_array(a)
    m.reset()
    r1 = m.run_array(x)
    r2 = Matcher(backend, library, instruments=["drums"], k=3).run_array(x)
    assert len(r1) == len(r2)
    for p, q in zip(r1, r2):
        kp, kq = key(p), key(q)
        assert p.end_sample - q.end_sample == len(a)
        assert kp[1:6] == kq[1:6]
        if q.ready:
            assert p.activation_time == pytest.approx(q.activation_time + len(a) / SR)
            assert p.beat.beats == pytest.approx([b + len(a) / SR for b in q.beat.beats])
    assert r1[-1].stream_time == pytest.approx(r1[-1].end_sample / SR)
    m.set_hop(150)
    assert m.hop_ms == 160.0
    m.set_hop(10)
    assert m.hop_ms == 20.0
    m.set_hop(320)
    res = m.run_array(np.zeros(SR, np.float32))
    assert np.all(np.diff([r.end_sample for r in res]) == 5120)
    assert all(len(r.activation) == 16 for r in res)
    with pytest.raises(ValueError):
        m.set_hop(-5)


def test_library_from_another_model_is_refused(backend, library):
    other = MicroBackend(seed=7)
    with pytest.raises(LibraryError, match="another model"):
        Matcher(other, library, instruments=["drums"])
    m = Matcher(other, None, instruments=["drums"])
    with pytest.raises(LibraryError):
        m.set_library(library)
    wrong_dim = StemLibrary.from_arrays(np.ones((3, 32), np.float32), ["a", "b", "c"])
    with pytest.raises(LibraryError, match="32-d"):
        m.set_library(wrong_dim)


class OnsetBeats:
    """Backend wrapper whose beat head is a log-mel spectral-flux onset detector over the window
    the encoder just saw: lets a test check the pipeline's beat timing end to end."""

    def __init__(self, inner):
        self.inner = inner
        self.manifest = inner.manifest
        self.name = "onset"
        self._last = None

    def __getattr__(self, k):
        return getattr(self.inner, k)

    def encode(self, logmel):
        self._last = logmel
        return self.inner.encode(logmel)

    def beats(self, tokens):
        lm = self._last[0]  # (80, T)
        flux = np.maximum(np.diff(lm, axis=1, prepend=lm[:, :1]), 0).mean(axis=0)  # (T,)
        pair = flux.reshape(-1, 2).max(axis=1)
        return np.clip(pair / 3.0, 0, 1)[None]


def test_beat_timing_through_the_pipeline(backend):
    bpm = 112.0
    x = synth_stems(0, 30.0, bpm=bpm)["drums"]
    grid = np.arange(0, 40.0, 60.0 / bpm)  # the beat grid, continued past the audio
    ref = grid[grid < 30.0]
    m = Matcher(OnsetBeats(backend), None, instruments=[], k=1)
    res = m.run_array(x)
    beats = np.concatenate([r.beat.beats for r in res if r.beat is not None and r.beat.beats])
    f = mir_eval.beat.f_measure(mir_eval.beat.trim_beats(ref), mir_eval.beat.trim_beats(beats))
    last = res[-1].beat
    print(f"pipeline causal beat F={f:.3f}, tempo {last.tempo:.1f}")
    assert f > 0.9
    assert abs(last.tempo - bpm) < 4
    assert np.max(np.abs(last.next_beats - grid[grid > last.time][:4])) < 0.05


def test_silence_gives_no_matches_and_no_beats(backend, library):
    """Digital silence and input below the threshold: signal False, empty match lists, zero
    activation into the tracker; then music: signal True and matches. Levels are in dBFS."""
    silence = np.zeros(16000 * 10, dtype=np.float32)
    hum = (1e-4 * np.sin(2 * np.pi * 50 * np.arange(16000 * 10) / 16000)).astype(np.float32)  # -83 dBFS
    music = mixture(1, 10.0)
    m = Matcher(backend, library, instruments=["drums", "fretless bass"], k=3, drop_late=False)
    res = m.run_array(np.concatenate([silence, hum]))
    ready = [r for r in res if r.ready]
    assert ready and all(not r.signal for r in ready)
    assert all(r.matches == {"drums": [], "fretless bass": []} for r in ready)
    assert all(not r.activation.any() for r in ready)  # the tracker saw no onsets
    assert all(r.level_db < -80 for r in ready)
    assert all(not r.beat.beats for r in ready)  # no beats from silence
    res = m.run_array(music)
    late = res[-10:]  # the window is full of music by now
    assert all(r.signal and r.level_db > -40 for r in late)
    assert all(len(r.matches["drums"]) == 3 for r in late)
    # a threshold above the music's level silences it too
    loud = Matcher(backend, library, instruments=["drums"], k=3, drop_late=False, signal_threshold_db=0.0)
    assert all(not r.signal and r.matches == {"drums": []} for r in loud.run_array(music) if r.ready)
    with pytest.raises(ValueError):
        Matcher(backend, library, instruments=["drums"], signal_threshold_db=float("nan"))


@pytest.mark.slow
def test_level_follows_the_window_not_the_whole_stream(backend, library):
    """Music, then 9 s of silence: once the window holds only silence, signal is False again."""
    m = Matcher(backend, library, instruments=["drums"], k=2, drop_late=False)
    res = m.run_array(np.concatenate([mixture(2, 6.0), np.zeros(16000 * 9, np.float32)]))
    assert any(r.signal for r in res if r.ready)
    assert not res[-1].signal and res[-1].matches == {"drums": []}
    # the level is the window's: louder input raises it by the gain in dB
    a = Matcher(backend, library, instruments=["drums"], drop_late=False).run_array(mixture(2, 9.0))[-1].level_db
    b = Matcher(backend, library, instruments=["drums"], drop_late=False).run_array(0.1 * mixture(2, 9.0))[-1].level_db
    assert a - b == pytest.approx(20.0, abs=0.01)
