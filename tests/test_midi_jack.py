"""MIDI clock and beat notes on real ports: a JACK dummy server (no sound card needed),
``server.midi.MidiClock`` and ``python -m server --midi`` read back through a JACK MIDI input."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

rtmidi = pytest.importorskip("rtmidi")
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


class Recorder:
    def __init__(self, port_substring, timeout=5.0):
        self.events = []
        self.mi = rtmidi.MidiIn(rtapi=rtmidi.API_UNIX_JACK, name="recorder")
        self.mi.ignore_types(sysex=True, timing=False, active_sense=True)
        t_end = time.monotonic() + timeout
        while True:
            ports = self.mi.get_ports()
            idx = [i for i, p in enumerate(ports) if port_substring in p]
            if idx:
                break
            if time.monotonic() > t_end:
                raise AssertionError(f"port {port_substring!r} not found in {ports}")
            time.sleep(0.1)
        self.mi.set_callback(lambda m, d: self.events.append((time.time(), m[0])))
        self.mi.open_port(idx[0])

    def close(self):
        self.mi.close_port()
        del self.mi

    def clocks(self):
        return np.array([t for t, m in self.events if m[0] == 0xF8])

    def note_ons(self):
        return [(t, m) for t, m in self.events if m[0] & 0xF0 == 0x90 and m[2] > 0]


def test_clock_and_notes_follow_the_grid(jack):
    from server.midi import MidiClock

    clock = MidiClock(port_name="unit clock", channel=10, note=42)
    rec = Recorder("unit clock")
    anchor = time.time() + 0.05
    clock.update(0.5, anchor)  # 120 BPM
    clock.start()
    time.sleep(1.6)
    clock.update(0.4, anchor + 1.65)  # tempo change to 150 BPM, new grid
    time.sleep(1.6)
    clock.stop()
    time.sleep(0.1)
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
    # 24 clocks per note, never skipped or doubled
    assert abs(len(c) - 24 * len(notes)) <= 24
    assert clock.clocks == len(c)


def test_server_midi_end_to_end(jack, tmp_path):
    from server.testing import write_click_track

    wav = tmp_path / "click.wav"
    write_click_track(wav, seconds=4.0)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, "-m", "server", "--fake", "--midi", "--midi-port", "e2e clock",
                          "--midi-note", "60", "--input", str(wav), "--pub", "tcp://127.0.0.1:25655",
                          "--ctl", "tcp://127.0.0.1:25656"], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        rec = Recorder("e2e clock", timeout=15)
        out, _ = p.communicate(timeout=20)
        rec.close()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, out
    c = rec.clocks()
    assert len(c) > 24, (len(c), out)
    assert abs(np.median(np.diff(c)) - 0.5 / 24) < 0.003  # fake tracker: 120 BPM
    notes = rec.note_ons()
    assert len(notes) >= 2 and all(m[1] == 60 for _, m in notes)
