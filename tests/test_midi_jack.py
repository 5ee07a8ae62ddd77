"""MIDI clock and beat notes on real ports: a JACK dummy server (no sound card needed),
``server.midi.MidiClock`` and ``python -m server --midi`` read back through a JACK MIDI input."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

rtmidi = pytest.importorskip("rtmidi")
pytestmark = pytest.mark.slow  # real-time MIDI through a JACK server: the slow tier (test_midi_nojack stays fast)
from conftest import wait_until  # noqa: E402
ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("JACK_NO_START_SERVER", "1")


def _jack_up() -> bool:
    try:
        out = rtmidi.MidiOut(rtapi=rtmidi.API_UNIX_JACK, name="probe")
        out.open_virtual_port("probe")
        out.close_port()
        del out
        return True
    except Exception:
        return False


@pytest.fixture(scope="module")
def jack():
    if shutil.which("jackd") is None or rtmidi.API_UNIX_JACK not in rtmidi.get_compiled_api():
        pytest.skip("jackd or rtmidi's JACK API not available")
    if _jack_up():
        yield None  # a JACK server is already running
        return
    p = subprocess.Popen(["jackd", "--no-realtime", "-d", "dummy", "-r", "48000", "-p", "256"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        t_end = time.monotonic() + 10
        while not _jack_up():
            if p.poll() is not None or time.monotonic() > t_end:
                pytest.skip("jackd did not start")
            time.sleep(0.2)
        yield p
    finally:
        p.send_signal(signal.SIGINT)
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def Recorder(port_substring, timeout=5.0):
    """The port read back through JACK, stamped in JACK's own thread (``server.testing.MidiRecorder``:
    no Python runs in the JACK cycle, so this process's GIL can neither delay a stamp nor hold up a
    cycle and lose an event)."""
    from server.testing import MidiRecorder

    return MidiRecorder(port_substring, timeout=timeout, api="jack")


def check_note_every_24_clocks(rec: Recorder, sent_clocks: int, sent_notes: int) -> None:
    """The sender puts a beat note after every 24th clock, never skipping or doubling one (one
    thread writes both, in order). What a dummy JACK server delivers on a loaded 2-core machine can
    lose an event of a cycle now and then or deliver one out of place (a CI run received one gap of
    23 and, later, one of 25 from a sender that wrote 24 every time). So, on the received stream: between consecutive
    notes there are exactly 24 clocks, but for at most two gaps; each of those is one clock off a
    whole number of beats (23, 25: a clock lost or moved; 47, 48: a note lost too), the offsets
    together come to 2 clocks at most; and against the sender's own counts at most 2 % of the
    clocks (2 at least) and 1 note are missing, none extra. (A later CI run received 160 of 163
    clocks, its gaps between notes within the bounds above; the sender's log had every one.)"""
    gaps = rec.clocks_between_notes()
    assert len(gaps) >= 2, gaps
    odd = {i: g for i, g in enumerate(gaps) if g != 24}
    off = {i: g - 24 * round(g / 24) for i, g in odd.items()}
    assert len(odd) <= 2 and all(abs(o) <= 1 for o in off.values()) and all(g >= 23 for g in odd.values()) \
        and sum(abs(o) for o in off.values()) <= 2, f"{len(gaps)} gaps, irregular (index: clocks) {odd}"
    got_clocks, got_notes = len(rec.clocks()), len(rec.note_ons())
    assert 0 <= sent_clocks - got_clocks <= max(2, round(0.02 * sent_clocks)), (sent_clocks, got_clocks)
    assert 0 <= sent_notes - got_notes <= 1, (sent_notes, got_notes)


def check_sender_log(clock) -> None:
    """What the sender itself wrote (its ``keep_log``): exactly 24 clocks between consecutive beat
    notes, every time."""
    gaps, n = [], None
    for _, _, status in clock.sent:
        if status == 0xF8 and n is not None:
            n += 1
        elif status & 0xF0 == 0x90:
            if n is not None:
                gaps.append(n)
            n = 0
    assert len(gaps) >= 2 and set(gaps) == {24}, gaps


def test_clock_and_notes_follow_the_grid(jack):
    from server.midi import MidiClock

    clock = MidiClock(port_name="unit clock", channel=10, note=42, keep_log=4096)
    rec = Recorder("unit clock")
    anchor = time.time() + 0.05
    clock.update(0.5, anchor)  # 120 BPM
    clock.start()
    time.sleep(1.6)
    clock.update(0.4, anchor + 1.65)  # tempo change to 150 BPM, new grid
    time.sleep(1.6)
    clock.stop()
    wait_until(lambda: rec.events and rec.events[-1][1] == [0xFC], 5, what="the Stop message to arrive")
    rec.close()
    assert rec.events and rec.events[0][1] == [0xFA], "Start first"
    assert rec.events[-1][1] == [0xFC], "Stop last"
    c = rec.clocks()
    first = c[c < anchor + 1.5]
    iv = np.diff(first)
    assert abs(np.median(iv) - 0.5 / 24) < 0.002, np.median(iv)
    notes = rec.note_ons()
    assert all(m[0] == 0x99 and m[1] == 42 for _, m in notes)
    # beat notes land on the grid (JACK delivery adds up to a period, 5.3 ms)
    for t, _ in notes:
        if t < anchor + 1.5:
            err = ((t - anchor + 0.25) % 0.5) - 0.25
            assert -0.005 < err < 0.02, err
    late = c[c > anchor + 2.6]
    assert abs(np.median(np.diff(late)) - 0.4 / 24) < 0.002, "clock follows the new tempo"
    check_sender_log(clock)
    check_note_every_24_clocks(rec, clock.clocks, clock.notes)


def test_clock_follows_the_causal_tracker(jack):
    """The real ``CausalBeatTracker`` on a 120 BPM beat activation (peaks at 0.1 + 0.5 k s, noise
    between them), fed 8 frames (one 160-ms hop) at a time in real time, drives the clock as the
    server does (period and next predicted beat as wall time): the clock settles at 120 BPM and its
    beat notes land on the activation's beats."""
    from engine.beats import CausalBeatTracker
    from server.midi import MidiClock

    fps, period, first = 50.0, 0.5, 0.1
    rng = np.random.default_rng(0)
    t = np.arange(int(4.5 * fps)) / fps
    dist = ((t - first + period / 2) % period) - period / 2
    act = np.clip(0.03 + 0.9 * np.exp(-0.5 * (dist / 0.02) ** 2) + 0.05 * rng.random(t.size), 0, 1)
    tracker = CausalBeatTracker(fps)
    tracker.reset(0.0)
    clock = MidiClock(port_name="tracker clock", channel=10, note=42, keep_log=4096)
    rec = Recorder("tracker clock")
    t0 = time.time() + 0.05  # wall time of stream time 0
    clock.start()
    tempos = []
    for h in range(len(t) // 8):
        time.sleep(max(0.0, t0 + (h + 1) * 0.16 - time.time()))  # the hop's audio has arrived
        st = tracker.process(act[8 * h:8 * h + 8])
        tempos.append(st.tempo)
        if len(st.next_beats):
            clock.update(60.0 / st.tempo, t0 + float(st.next_beats[0]))
    clock.stop()
    wait_until(lambda: rec.events and rec.events[-1][1] == [0xFC], 5, what="the Stop message to arrive")
    rec.close()
    assert abs(tempos[-1] - 120.0) < 0.5, tempos
    assert rec.events and rec.events[0][1] == [0xFA] and rec.events[-1][1] == [0xFC]
    c = rec.clocks()
    settled = c[c > t0 + 2.5]
    assert len(settled) > 24 and abs(np.median(np.diff(settled)) - period / 24) < 0.002, np.diff(settled)
    notes = [tn for tn, _ in rec.note_ons() if tn > t0 + 2.5]
    assert len(notes) >= 2
    for tn in notes:  # on the activation's beats (tracker: 20-ms frames; JACK: up to a 5.3-ms period)
        err = ((tn - t0 - first + period / 2) % period) - period / 2
        assert -0.02 < err < 0.03, err
    check_sender_log(clock)
    check_note_every_24_clocks(rec, clock.clocks, clock.notes)


def run_server(args, port_name, pub_port, topics, timeout):
    """``python -m server ARGS --midi --midi-port PORT_NAME`` on an input file, run to its end:
    (exit status, its output, a Subscriber holding the ``topics`` it published, a JACK Recorder
    of the port)."""
    import zmq

    from server.testing import Subscriber

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    pub = f"tcp://127.0.0.1:{pub_port}"
    p = subprocess.Popen([sys.executable, "-m", "server", *args, "--midi", "--midi-port", port_name, "--pub", pub,
                          "--ctl", f"tcp://127.0.0.1:{pub_port + 1}"], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ctx = zmq.Context()
    sub = Subscriber(ctx, pub, topics=topics)
    try:
        rec = Recorder(port_name, timeout=30)
        t_end = time.monotonic() + timeout
        while p.poll() is None and time.monotonic() < t_end:
            sub.poll(0.1)
        out, _ = p.communicate(timeout=30)
        time.sleep(0.2)
        rec.close()
    finally:
        sub.close()
        ctx.destroy(linger=0)
        if p.poll() is None:
            p.kill()
            p.wait()
    return p.returncode, out, sub, rec


def test_server_midi_end_to_end(jack, tmp_path, server_assets):
    """``python -m server --midi`` with the real engine: the clock runs at the tempo the server
    publishes on the beat topic and its beat notes land on the beats it predicts, one note per 24
    clocks. The shipped model where it is present: an untrained model's beat head has no pulse to
    find, and its tracker, in and out of its no-beat state and between tempo octaves, gives no grid
    to follow (there ``--min-bpm 100 --max-bpm 150`` keeps it on one octave at least)."""
    from server import config
    from server.testing import write_click_track

    wav = tmp_path / "click.wav"
    write_click_track(wav, seconds=8.0)  # the tracker locks after one to two seconds
    shipped = config.model_present(config.DEFAULT_MODEL_DIR)
    if shipped:
        from export.cache import ensure_built

        ensure_built(config.DEFAULT_MODEL_DIR)
    rc, out, sub, rec = run_server([*([] if shipped else server_assets.cli_args()), "--instruments", "drums", "--min-bpm", "100",
                                    "--max-bpm", "150", "--midi-note", "60", "--input", str(wav)],
                                   "e2e clock", 25655, ("beat",), 20)
    assert rc == 0, out
    assert not sub.errors, sub.errors[:3]
    beats = [(t_recv, m) for tp, m, t_recv in sub.msgs if not m["no_beat"]]  # the tracker's grid, once locked
    assert beats and all(m["period_s"] for _, m in beats)
    c = rec.clocks()
    assert len(c) > 24, (len(c), out)
    # each clock interval against the beat period the server had published when it was scheduled,
    # where the tracker's grid has been steady (tempo within 2 % over the last 4 beat messages)
    recv = np.array([t for t, _ in beats])
    periods = np.array([m["period_s"] for _, m in beats])
    steady = np.array([i >= 3 and np.ptp(periods[i - 3:i + 1]) < 0.02 * periods[i] for i in range(len(periods))])
    idx = np.searchsorted(recv, c[:-1]) - 1
    ok = (idx >= 0) & steady[np.maximum(idx, 0)]
    # JACK delivers MIDI at period boundaries (5.3 ms), so compare the mean interval over the steady
    # ticks (quantisation cancels) with the mean published beat period / 24
    got = np.diff(c)[ok].mean()
    want = (periods[idx[ok]] / 24).mean()
    print(f"\nMIDI e2e: {len(c)} clocks, {ok.sum()} on a steady grid; published tempi "
          f"{np.round(60 / periods, 1).tolist()}; mean interval {got * 1e3:.2f} ms, expected {want * 1e3:.2f} ms")
    assert ok.sum() > 48 and abs(got / want - 1) < 0.04, (got, want)
    notes = rec.note_ons()
    errs = []
    for tn, _ in notes:
        i = np.searchsorted(recv, tn) - 1
        if i >= 0 and steady[i]:
            grid = np.array(beats[i][1]["next_beats_wall"])
            grid = np.concatenate([grid - periods[i], grid])
            errs.append(float(np.min(np.abs(grid - tn))))
    # beat notes (every 24th tick) land on the beats the server predicted (next_beats_wall): the
    # typical note within 6 ms (a 5.3-ms JACK period quantises delivery), none off by 30 ms (a CI run
    # on 2 loaded cores had 11 notes within 2.2 ms and one 21 ms late)
    print(f"beat-note errors (ms): {np.round(np.array(errs) * 1e3, 2).tolist()}")
    assert len(errs) >= 3 and np.median(errs) < 0.006 and max(errs) < 0.03, errs
    assert len(notes) >= 2 and all(m == [0x99, 60, 100] for _, m in notes)
    assert rec.events[0][1] == [0xFA] and rec.events[-1][1] == [0xFC]
    sent = re.search(r"MIDI: sent (\d+) clocks, (\d+) beat notes", out)
    assert sent, out[-2000:]
    check_note_every_24_clocks(rec, int(sent.group(1)), int(sent.group(2)))


@pytest.mark.parametrize("name", ["silence", "white noise", "steady tone"])
def test_server_no_clock_without_a_beat(jack, tmp_path, name):
    """``python -m server --midi --no-beat stop`` with the shipped model on 8 s of silence, of white
    noise or of a steady tone: the tracker hears no beat, so the clock never starts -- not one
    message comes through JACK -- and the server publishes its no-beat state."""
    import soundfile as sf

    from server import config

    if not config.model_present(config.DEFAULT_MODEL_DIR):
        pytest.skip("the shipped model directory is absent")
    from export.cache import ensure_built

    ensure_built(config.DEFAULT_MODEL_DIR)
    sr = 16000
    t = np.arange(8 * sr) / sr
    x = {"silence": np.zeros_like(t), "white noise": 0.2 * np.random.default_rng(0).standard_normal(t.size),
         "steady tone": 0.3 * np.sin(2 * np.pi * 440 * t)}[name]
    wav = tmp_path / "nobeat.wav"
    sf.write(str(wav), x.astype(np.float32), sr)
    rc, out, sub, rec = run_server(["--instruments", "drums", "--no-beat", "stop", "--input", str(wav)],
                                   "nobeat clock", 25659, ("beat", "status"), 60)
    assert rc == 0, out
    beats = [m for tp, m, _ in sub.msgs if tp == "beat"]
    assert len(beats) > 30 and all(m["no_beat"] and not m["beats_in_hop"] for m in beats)
    assert rec.events == [], rec.events[:5]
    assert "MIDI: sent 0 clocks, 0 beat notes" in out
    status = [m for tp, m, _ in sub.msgs if tp == "status"]
    assert status and status[-1]["midi"]["no_beat"] == "stop" and status[-1]["midi"]["starts"] == 0
    assert status[-1]["no_beat"] is True and status[-1]["signal"] is (name != "silence")
