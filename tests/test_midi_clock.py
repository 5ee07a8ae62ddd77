"""server.midi.MidiClock without a MIDI system (a recording port): 24 evenly spaced ticks between
forecast beats, beat ticks on the forecast, a corrected forecast absorbed within the beat, and
the no-beat modes (hold: ticks on, no notes; stop: Stop, nothing, then Start on the downbeat).
Through a real JACK port: tests/test_midi_jack.py; the figures: scripts/measure_midi_clock.py."""
import time

import numpy as np
import pytest

from conftest import wait_until
from server.midi import CLOCK, START, STOP, MidiClock

P = 0.5  # s per beat (120 BPM)


class Port:
    def __init__(self):
        self.events = []

    def send_message(self, msg):
        self.events.append((time.time(), list(msg)))

    def close_port(self):
        pass


def clock(mode="hold", **kw):
    return MidiClock(Port(), no_beat=mode, keep_log=10000, **kw)


def beats_then_none(mode):
    """A running clock (30 ticks on a 120-BPM grid) that has just been told: no beat."""
    c = clock(mode)
    c.update(P, time.time() + 0.05)
    c.start()
    wait_until(lambda: c.clocks >= 30, 10, what="clocks")
    c.update(None, None, no_beat=True)
    return c


def scheduled(c, status=CLOCK):
    return np.array([s for _, s, b in c.sent if b == status])


def test_ticks_evenly_spaced_and_beat_ticks_on_the_forecast():
    c = clock()
    anchor = time.time() + 0.1
    c.update(P, anchor)
    c.start()
    wait_until(lambda: c.clocks >= 24 * 3 + 1, 10, what="three beats of clocks")
    c.stop()
    t = scheduled(c)
    assert c.sent[0][2] == START
    assert np.allclose(np.diff(t), P / 24, atol=1e-6)  # exactly even on a steady grid
    assert np.allclose(t[::24], anchor + P * np.arange(len(t[::24])), atol=1e-6)  # beat ticks on the beats
    notes = np.array([s for _, s, b in c.sent if b & 0xF0 == 0x90])
    assert np.allclose(notes, t[::24][:len(notes)], atol=1e-6)
    sent = np.array([w for w, _, b in c.sent if b == CLOCK])
    late = sent - t
    assert np.median(late) < 0.003 and late.min() > -1e-4  # sent on time, never early


@pytest.mark.parametrize("shift", [0.01, 0.1])
def test_a_corrected_forecast(shift):
    """The tracker moves its grid ``shift`` s later a quarter into beat 1. A small correction (10 ms,
    0.02 beat) waits for the next beat tick: beat 2 keeps its target, beat 3 is on the new grid, and
    every beat stays evenly spaced. A larger one (100 ms, 0.2 beat) re-spaces the ticks left in beat
    1, so beat 2 is already on the new grid."""
    c = clock()
    anchor = time.time() + 0.1
    c.update(P, anchor)
    c.start()
    wait_until(lambda: c.clocks >= 24 + 6, 10, what="a beat and a quarter of clocks")
    c.update(P, anchor + shift)
    wait_until(lambda: c.clocks >= 24 * 4 + 1, 10, what="four beats of clocks")
    c.stop()
    t = scheduled(c)
    beats = t[::24]
    moved = 2 if shift > c.retarget * P else 3
    assert np.allclose(beats[:moved], anchor + P * np.arange(moved), atol=1e-6)
    assert np.allclose(beats[moved:], anchor + shift + P * np.arange(moved, len(beats)), atol=1e-6)
    dt = np.diff(t)
    assert dt.min() > 0.5 * P / 24 and dt.max() < 1.5 * P / 24
    for b in range(len(beats) - 1):  # even within every beat, but the one re-spaced
        seg = np.diff(t[24 * b:24 * b + 25])
        assert (b == 1 and moved == 2) or np.ptp(seg) < 1e-6, (b, seg)
    assert c.retargets == (1 if moved == 2 else 0)


def test_hold_keeps_the_last_tempo_without_beat_notes():
    c = beats_then_none("hold")
    n0, notes0 = c.clocks, c.notes
    wait_until(lambda: c.clocks >= n0 + 48, 10, what="held clocks")
    c.stop()
    assert c.notes <= notes0 + 1 and c.stops == 1 and c.starts == 1  # the Stop is the shutdown's
    t = scheduled(c)
    assert np.allclose(np.diff(t[-40:]), P / 24, atol=1e-6)


def test_stop_mode_stops_and_restarts_on_the_downbeat():
    c = beats_then_none("stop")
    wait_until(lambda: not c.running, 5, what="the clock to stop")
    n0 = c.clocks
    time.sleep(0.3)
    assert c.clocks == n0 and c.stops == 1
    now = time.time()
    anchor, down = now + 0.1, now + 0.1 + 2 * P  # the next downbeat is two beats after the next beat
    c.update(P, anchor, downbeat_wall=down)
    wait_until(lambda: c.clocks >= n0 + 3, 5, what="the clock to run again")
    c.stop()
    kinds = [b for _, _, b in c.sent]
    assert kinds.count(START) == 2 and kinds.count(STOP) == 2
    i = [k for k, b in enumerate(kinds) if b == START][1]
    first = [s for _, s, b in list(c.sent)[i:] if b == CLOCK][0]
    assert abs(first - down) < 1e-6  # Start, then the first tick on the downbeat


def test_never_starts_without_beats():
    c = clock("stop")
    c.start()
    for _ in range(20):
        c.update(None, None, no_beat=True)
        time.sleep(0.01)
    c.stop()
    assert c.clocks == 0 and c.starts == 0 and not c.sent


def test_update_from_beat_messages():
    c = clock()
    c.update_from_beat({"period_s": 0.4, "next_beats_wall": [10.0, 10.4], "no_beat": False, "signal": True,
                        "next_downbeat_wall": 10.8}, speed=2.0)
    assert c._grid()[:4] == (0.2, 10.0, 10.8, False)
    c.update_from_beat({"period_s": None, "next_beats_wall": [], "no_beat": True, "signal": True})
    assert c._grid()[3] is True
    c.update_from_beat({"period_s": 0.5, "next_beats_wall": [11.0], "no_beat": False, "signal": False})
    assert c._grid()[3] is True  # no signal is no beat
    c.configure(no_beat="stop")
    assert c.info()["no_beat"] == "stop"
    with pytest.raises(ValueError):
        c.configure(no_beat="pause")
    with pytest.raises(ValueError):
        MidiClock(Port(), no_beat="later")


def test_target_is_the_grid_beat_after_the_last_beat_tick():
    assert MidiClock.target(0.0, 0.5, 0.02) == pytest.approx(0.52)
    assert MidiClock.target(0.0, 0.5, 0.3) == pytest.approx(0.3)  # the grid moved 0.2 beat earlier
    assert MidiClock.target(0.0, 0.5, 0.24) == pytest.approx(0.74)  # ...or 0.24 beat later
    assert MidiClock.target(10.0, 0.5, 0.01) == pytest.approx(10.51)


def test_start_lowers_the_thread_switch_interval_and_never_raises_it():
    import sys

    from server import config

    before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)
        c = clock()
        c.start()
        assert sys.getswitchinterval() == pytest.approx(config.MIDI_GIL_SWITCH_S)
        c.stop()
        sys.setswitchinterval(config.MIDI_GIL_SWITCH_S / 5)  # already lower: left as it is
        c = clock()
        c.start()
        assert sys.getswitchinterval() == pytest.approx(config.MIDI_GIL_SWITCH_S / 5)
        c.stop()
    finally:
        sys.setswitchinterval(before)
