"""Tick jitter and phase error of the MIDI clock, measured through a JACK dummy server.

    python scripts/measure_midi_clock.py [--audio FILE --beats FILE.json] [--seconds 30]
        [--period 64] [--no-beat stop] [--json OUT]

The live path as the server runs it, in one process: the audio (default: the shipped demo track
and the beats of its sidecar) is written into the real :class:`engine.pipeline.Matcher` (the
shipped model directory) in real time, 160 ms at a time; every hop's ``beat`` message is built
by the server's own code (``server.messages``) with the wall-clock time the hop's last sample
arrived, and fed to a :class:`server.midi.MidiClock` on a JACK virtual port, as the server does.
A JACK MIDI input records when each message comes out of the JACK graph, stamped in JACK's own
thread (``server.testing.MidiRecorder``: this process's GIL cannot delay the stamps). A JACK
dummy server (``jackd --no-realtime -d dummy -r 48000 -p PERIOD``) is started when none runs.

Reported (ms):

* **schedule unevenness** -- for each beat the clock played, its scheduled ticks against 24
  evenly spaced ones from its beat tick to the next (0 but where a beat was re-spaced);
* **tick jitter** -- when each tick was handed to JACK against its scheduled time (send
  lateness), and when it came out of the JACK graph against its scheduled time, less the median
  of that (the JACK input: adds the period quantisation; received clocks are paired with the last
  one sent before them, so a lost event loses a pair and shifts nothing);
* **phase error** -- every beat tick (every 24th clock, as scheduled) against (a) the beat it
  aimed at: the nearest beat of the latest forecast published before it; (b) the nearest beat the
  tracker reported (``beats_in_hop``, as wall time); (c) the nearest true beat of the audio; and
  the beat ticks as received from JACK against (b). Median, median |error|, RMS, 95th and 99th
  percentile and maximum |error|, on the beats after the first 8 s (the lock).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("JACK_NO_START_SERVER", "1")


def jack_up(rtmidi) -> bool:
    try:
        out = rtmidi.MidiOut(rtapi=rtmidi.API_UNIX_JACK, name="probe")
        out.open_virtual_port("probe")
        out.close_port()
        return True
    except Exception:
        return False


def start_jack(rtmidi, period: int):
    if jack_up(rtmidi):
        return None
    if shutil.which("jackd") is None:
        raise SystemExit("jackd is not installed (scripts/setup_system.sh installs jackd2)")
    p = subprocess.Popen(["jackd", "--no-realtime", "-d", "dummy", "-r", "48000", "-p", str(period)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t_end = time.monotonic() + 10
    while not jack_up(rtmidi):
        if p.poll() is not None or time.monotonic() > t_end:
            raise SystemExit("jackd did not start")
        time.sleep(0.2)
    return p


def stats(x) -> dict:
    x = np.asarray(x, dtype=np.float64) * 1e3
    if not len(x):
        return {"n": 0}
    a = np.abs(x)
    return {"n": int(len(x)), "median": round(float(np.median(x)), 3), "median_abs": round(float(np.median(a)), 3),
            "rms": round(float(np.sqrt(np.mean(x ** 2))), 3), "p95_abs": round(float(np.percentile(a, 95)), 3),
            "p99_abs": round(float(np.percentile(a, 99)), 3), "max_abs": round(float(a.max()), 3)}


def jitter(times: np.ndarray) -> np.ndarray:
    """Deviations of each beat's ticks from 24 evenly spaced ones (``times``: every clock, in order,
    starting on a beat tick)."""
    out = []
    for b in range(0, len(times) - 24, 24):
        seg = times[b:b + 25]
        ideal = seg[0] + (seg[-1] - seg[0]) * np.arange(25) / 24
        out.append((seg - ideal)[1:-1])
    return np.concatenate(out) if out else np.zeros(0)


def nearest(ts, grid) -> np.ndarray:
    grid = np.sort(np.asarray(grid, dtype=np.float64))
    if not len(grid):
        return np.zeros(0)
    i = np.clip(np.searchsorted(grid, ts), 1, len(grid) - 1)
    lo, hi = grid[i - 1], grid[i]
    return np.where(np.abs(ts - lo) < np.abs(ts - hi), ts - lo, ts - hi)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--audio", default=str(ROOT / "engine/assets/demo/demo_track.flac"))
    ap.add_argument("--beats", default=None, help="JSON with a 'beats' list (s); default: the audio's sidecar")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--period", type=int, default=64, help="JACK period in frames at 48 kHz (default 64: 1.3 ms)")
    ap.add_argument("--no-beat", default="stop", choices=("hold", "stop"))
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)

    import rtmidi

    from engine.audio import load_audio
    from engine.backends import load_backend
    from engine.manifest import DEFAULT_MODEL_DIR
    from engine.pipeline import Matcher
    from export.cache import ensure_built
    from server.messages import Messages
    from server.midi import CLOCK, MidiClock
    from server.testing import MidiRecorder

    audio = load_audio(a.audio)[: int(16000 * a.seconds)]
    side = Path(a.beats) if a.beats else Path(a.audio).with_suffix(".json")
    truth = np.asarray(json.loads(side.read_text())["beats"], dtype=np.float64) if side.is_file() else np.zeros(0)
    jack = start_jack(rtmidi, a.period)
    try:
        matcher = Matcher(load_backend(ensure_built(DEFAULT_MODEL_DIR, log=lambda *_: None), threads=1), None,
                          instruments=[], drop_late=True)
        clock = MidiClock(port_name="measure clock", no_beat=a.no_beat, keep_log=100000, send_notes=False)
        rec = MidiRecorder("measure clock", api="jack", name="measure")  # stamped in JACK's thread
        fake = SimpleNamespace(source=SimpleNamespace(speed=1.0), _header=Messages._header)
        msgs = []
        clock.start()
        hop = 2560
        t0 = time.time() + 0.2  # wall time of stream time 0
        for i in range(0, len(audio) - hop + 1, hop):
            time.sleep(max(0.0, t0 + (i + hop) / 16000 - time.time()))  # the hop's audio has arrived
            matcher.ring.write(audio[i:i + hop])
            while True:
                res = matcher.process_hop()
                if res is None:
                    break
                arrival = t0 + res.end_sample / 16000  # the origin is 0: one stream, never reset
                m = Messages._beat_msg(fake, res, float(res.stream_time), int(res.hop_index), arrival)
                if m is not None:
                    m["_sent"] = time.time()
                    clock.update_from_beat(m)
                    msgs.append(m)
        time.sleep(0.3)
        clock.stop()
        time.sleep(0.2)
        rec.close()
        events = [(t, m[0]) for t, m in rec.events]
    finally:
        if jack is not None:
            jack.send_signal(signal.SIGINT)
            try:
                jack.wait(5)
            except subprocess.TimeoutExpired:
                jack.kill()

    sent = np.array([(w, s) for w, s, b in clock.sent if b == CLOCK])  # (handed to JACK, scheduled)
    got = np.array([t for t, b in events if b == CLOCK])
    # pair every received clock with the last one handed to JACK before it (a lost event loses a pair)
    k = np.searchsorted(sent[:, 0], got) - 1
    keep = k >= 0
    got, k = got[keep], k[keep]
    latency = got - sent[k, 0]
    lat0 = float(np.median(latency))
    is_beat = k % 24 == 0  # the first clock after Start is a beat tick, and one clock in 24 after it
    sched_beats = sent[::24, 1]
    after = sched_beats > t0 + 8.0  # the lock: the figures count from 8 s on
    # (a) each beat tick against the nearest beat of the latest forecast published before it
    pub = np.array([m["_sent"] for m in msgs])
    fa = []
    for tk in sched_beats[after]:
        j = np.searchsorted(pub, tk) - 1
        grid = msgs[j]["next_beats_wall"] if j >= 0 else []
        if grid:
            p = msgs[j]["period_s"]
            fa.append(nearest(np.array([tk]), np.concatenate([grid[0] - p * np.arange(4, 0, -1), grid,
                                                              grid[-1] + p * np.arange(1, 5)]))[0])
    reported = np.array([t0 + b for m in msgs for b in m["beats_in_hop"]])
    got_beats = got[is_beat]
    got_after = got_beats > t0 + 8.0
    out = {
        "audio": str(a.audio), "seconds": a.seconds, "jack_period_frames": a.period,
        "jack_period_ms": round(a.period / 48.0, 3), "no_beat": a.no_beat,
        "clocks_sent": int(clock.clocks), "clocks_received": int(len(got)), "starts": clock.starts,
        "stops": clock.stops, "retargets": clock.retargets,
        "beat_messages": len(msgs), "no_beat_messages": int(sum(m["no_beat"] for m in msgs)),
        "schedule_unevenness": stats(jitter(sent[:, 1])),
        "send_lateness": stats(sent[:, 0] - sent[:, 1]),
        "jack_latency": stats(latency),
        "tick_jitter_at_jack_input": stats(got - sent[k, 1] - float(np.median(got - sent[k, 1]))),
        "phase_vs_forecast": stats(fa),
        "phase_vs_reported_beats": stats(nearest(sched_beats[after], reported)),
        "phase_vs_true_beats": stats(nearest(sched_beats[after], t0 + truth)) if len(truth) else None,
        "phase_at_jack_input_vs_reported_beats": stats(nearest(got_beats[got_after], reported)),
        "median_jack_latency_ms": round(lat0 * 1e3, 3),
    }
    print(json.dumps(out, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
