"""MIDI output: a 24-ppqn clock from the beat tracker's forecast, and one note per beat.

A virtual output port (python-rtmidi) is opened on the first MIDI API that works (ALSA, then
JACK; on this kind of machine only JACK exists, with ``jackd -d dummy`` running).

The clock runs in its own thread. Every 24th tick is a *beat tick*; the 24 ticks of a beat are
spaced evenly from the beat tick to the *target*, the forecast beat that follows it: at the beat
tick, the beat of the tracker's latest grid (``period``, one forecast beat as wall time) nearest
to one period later. So every beat tick lands on a forecast beat -- the clock is phase locked to
the tracker's beats -- and the ticks between are evenly spaced. Within a beat the target follows
a new forecast only when it has moved by more than ``retarget`` (0.03) of a beat (15 ms at 120 BPM:
a corrected forecast, a tempo change, a re-lock); the ticks left are then re-spaced to the new
target, and smaller wobbles wait for the next beat tick. One tick interval is kept within
0.5-1.5x the nominal ``period / 24``, so a jump of the grid glides over a few beats and no tick is
ever skipped or doubled. Tick times are the scheduled ones (never the measured send times), so
scheduling noise does not accumulate.

No beat (the tracker's no-beat state, or no signal): ``no_beat="hold"`` keeps ticking at the last
period (the grid runs on freely; no beat notes), ``"stop"`` sends Stop (0xFC) and no ticks until the
tracker reports beats again, then Start (0xFA) and the first tick on the next forecast downbeat
(or beat). The clock waits for the tracker's first beats before its first Start either way; Stop
is also sent on shutdown.
"""
from __future__ import annotations

import collections
import logging
import math
import os
import sys
import threading
import time

from . import config

log = logging.getLogger("server.midi")

CLOCK, START, STOP = 0xF8, 0xFA, 0xFC
PPQN = 24


class MidiUnavailable(RuntimeError):
    pass


def open_virtual_output(name: str = config.MIDI_PORT_NAME):
    """(MidiOut with an open virtual port, api name). Raises MidiUnavailable with the reasons."""
    os.environ.setdefault("JACK_NO_START_SERVER", "1")  # never spawn a JACK server behind the user's back
    try:
        import rtmidi
    except ImportError as e:
        raise MidiUnavailable(f"python-rtmidi is not installed ({e}); pip install '.[midi]'")
    apis = [a for a in (rtmidi.API_LINUX_ALSA, rtmidi.API_UNIX_JACK, rtmidi.API_MACOSX_CORE)
            if a in rtmidi.get_compiled_api()]
    errors = []
    for api in apis:
        try:
            out = rtmidi.MidiOut(rtapi=api, name="stemjepa")
            out.open_virtual_port(name)
            return out, rtmidi.get_api_name(api)
        except Exception as e:  # rtmidi raises SystemError / RuntimeError subclasses
            errors.append(f"{rtmidi.get_api_name(api)}: {e}")
    raise MidiUnavailable("no MIDI system could open a virtual port (" + "; ".join(errors or ["no API compiled"])
                          + "). On Linux without a sound card start a JACK server, e.g. "
                          "`jackd --no-realtime -d dummy -r 48000 -p 256`.")


NO_BEAT_MODES = ("hold", "stop")


class MidiClock:
    """``update(period_s, anchor_wall, no_beat=..., downbeat_wall=...)`` from every beat message
    (:meth:`update_from_beat`); ``start()`` / ``stop()`` the thread. ``out``: anything with
    ``send_message`` and ``close_port`` (default: a virtual port); ``no_beat``: "hold" or "stop"
    (module docstring). ``sent``: ``(time.time() at send, scheduled time, status byte)`` of the last
    ``keep_log`` messages, for measurements."""

    def __init__(self, out=None, *, port_name: str = config.MIDI_PORT_NAME, channel: int = config.MIDI_CHANNEL,
                 note: int = config.MIDI_NOTE, velocity: int = config.MIDI_VELOCITY,
                 note_length_s: float = config.MIDI_NOTE_LENGTH_S, send_notes: bool = True,
                 no_beat: str = config.MIDI_NO_BEAT, keep_log: int = 0, retarget: float = 0.03):
        if no_beat not in NO_BEAT_MODES:
            raise ValueError(f"no_beat must be one of {NO_BEAT_MODES}, not {no_beat!r}")
        if out is None:
            out, self.api = open_virtual_output(port_name)
        else:
            self.api = "custom"
        self.out = out
        self.port_name = port_name
        self.channel, self.note, self.velocity = channel, note, velocity
        self.note_length_s = note_length_s
        self.send_notes = send_notes
        self.no_beat_mode = no_beat
        self.retarget = float(retarget)
        self.retargets = 0  # beats re-spaced in their course (the forecast moved by > retarget of a beat)
        self.clocks = 0
        self.notes = 0
        self.starts = 0
        self.stops = 0
        self.running = False  # between a Start and a Stop
        self._period = None  # wall seconds per beat
        self._anchor = None  # wall time of a beat on the tracker's grid
        self._downbeat = None  # wall time of a forecast downbeat, or None
        self._no_beat = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        self.error = None
        self.sent = collections.deque(maxlen=max(0, int(keep_log)))

    # -- inputs --------------------------------------------------------------------------------
    def update(self, period_s: float | None, anchor_wall: float | None, *, no_beat: bool = False,
               downbeat_wall: float | None = None) -> None:
        """New beat grid from the tracker: beat period (wall s) and one beat time (unix s); or
        ``no_beat`` (the grid, if any, is ignored)."""
        with self._lock:
            if no_beat:
                self._no_beat = True
                return
            if period_s is None or anchor_wall is None or not (0.2 <= period_s <= 2.0):
                return
            self._no_beat = False
            self._period, self._anchor = float(period_s), float(anchor_wall)
            self._downbeat = None if downbeat_wall is None else float(downbeat_wall)

    def update_from_beat(self, beat: dict, speed: float = 1.0) -> None:
        """One ``beat`` message: its period and first forecast beat, its no-beat state (and no
        signal counts as no beat), its next downbeat."""
        speed = speed or 1.0
        if beat.get("no_beat") or beat.get("signal") is False:
            self.update(None, None, no_beat=True)
            return
        p = beat.get("period_s")
        nb = beat.get("next_beats_wall") or []
        if p and nb:
            self.update(p / speed, nb[0], downbeat_wall=beat.get("next_downbeat_wall"))

    def configure(self, channel=None, note=None, velocity=None, no_beat=None) -> None:
        if no_beat is not None and no_beat not in NO_BEAT_MODES:
            raise ValueError(f"no_beat must be one of {NO_BEAT_MODES}, not {no_beat!r}")
        with self._lock:
            if channel is not None:
                self.channel = int(channel)
            if note is not None:
                self.note = int(note)
            if velocity is not None:
                self.velocity = int(velocity)
            if no_beat is not None:
                self.no_beat_mode = no_beat

    def info(self) -> dict:
        return {"enabled": True, "port": f"{self.port_name} ({self.api})", "channel": self.channel, "note": self.note,
                "clocks": self.clocks, "notes": self.notes, "error": self.error, "no_beat": self.no_beat_mode,
                "running": self.running, "starts": self.starts, "stops": self.stops}

    # -- thread --------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the clock thread. It lowers the interpreter's thread switch interval to
        ``config.MIDI_GIL_SWITCH_S`` (never raises it), so that a tick due while another thread
        holds the GIL waits well under a millisecond for it, not CPython's default 5 ms."""
        if sys.getswitchinterval() > config.MIDI_GIL_SWITCH_S:
            sys.setswitchinterval(config.MIDI_GIL_SWITCH_S)
        self._thread = threading.Thread(target=self._run_safe, name="midi", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        try:
            if self.running:
                self._send([STOP])
                self.running = False
                self.stops += 1
                # the JACK backend hands messages over in its process callback: closing the port at
                # once could drop the Stop (seen on a loaded machine); give it a few periods
                time.sleep(0.05)
            self.out.close_port()
            del self.out
        except Exception:
            pass
        log.info("MIDI: sent %d clocks, %d beat notes", self.clocks, self.notes)

    def _send(self, msg, scheduled: float | None = None) -> None:
        self.out.send_message(msg)
        if self.sent.maxlen:
            now = time.time()
            self.sent.append((now, now if scheduled is None else scheduled, msg[0]))

    def _run_safe(self) -> None:
        try:
            self._run()
        except Exception as e:  # a MIDI failure must not take the server down
            self.error = f"{type(e).__name__}: {e}"
            log.error("MIDI clock stopped: %s", self.error)

    def _grid(self):
        with self._lock:
            return self._period, self._anchor, self._downbeat, self._no_beat, self.no_beat_mode

    def _sleep_until(self, t: float) -> bool:
        """Wait until unix time ``t`` (the last ms spinning, for precision); False when stopped."""
        while True:
            delay = t - time.time()
            if delay <= 0:
                return not self._stop.is_set()
            if delay > 0.002:
                if self._stop.wait(delay - 0.001):
                    return False
                continue
            while time.time() < t:
                pass

    @staticmethod
    def target(t_beat: float, period: float, anchor: float) -> float:
        """The grid beat (``anchor + k * period``) nearest one period after ``t_beat`` (so half a
        period after it at least): where the beat tick after the one at ``t_beat`` goes."""
        return anchor + round((t_beat + period - anchor) / period) * period

    def _run(self) -> None:
        note_off_at = note_playing = None
        t_prev = t_beat = period = goal = 0.0
        j = 0  # ticks sent since the last beat tick (0: the last tick was a beat tick)
        while not self._stop.is_set():
            p, a, down, no_beat, mode = self._grid()
            if not self.running:  # waiting for the tracker's beats (first, or after a Stop)
                if p is None or no_beat:
                    self._stop.wait(0.01)
                    continue
                now = time.time()
                first = a + math.ceil((now + 0.005 - a) / p) * p  # the next grid beat, 5 ms ahead at least
                if down is not None and first - 1e-3 <= down <= first + 4.5 * p:
                    first = down  # start on a bar's first beat when the tracker knows one soon
                if not self._sleep_until(first - 0.001):
                    break
                p2, a2, _, nb2, _ = self._grid()
                if nb2 or p2 is None:
                    continue
                self._send([START])
                self.starts += 1
                self.running = True
                if not self._sleep_until(first):
                    break
                self._send([CLOCK], first)
                self.clocks += 1
                t_prev = t_beat = first
                period = p2
                j = 0
                note_off_at, note_playing = self._beat_note(note_off_at, note_playing, first)
                continue
            if no_beat and mode == "stop":
                self._send([STOP])
                self.stops += 1
                self.running = False
                continue
            if no_beat:  # hold: the last grid runs on
                goal = t_beat + period
            elif j == 0:  # a new beat: its end is the forecast beat after it
                period = p
                goal = self.target(t_beat, p, a)
            else:  # within the beat: follow the forecast only when it has moved a good way
                cand = self.target(t_beat, p, a)
                if abs(cand - goal) > self.retarget * p:
                    period, goal = p, cand
                    self.retargets += 1
            nominal = period / PPQN
            dt = min(max((goal - t_prev) / (PPQN - j), 0.5 * nominal), 1.5 * nominal)
            t_next = t_prev + dt
            if note_off_at is not None and note_off_at < t_next:
                if not self._sleep_until(note_off_at):
                    break
                self._send([0x80 | (note_playing[0] - 1), note_playing[1], 0])
                note_off_at = note_playing = None
            if t_next < time.time() - 0.5:  # hopelessly late (machine stalled): re-anchor, keep the count
                t_next = time.time()
            if not self._sleep_until(t_next):
                break
            self._send([CLOCK], t_next)
            self.clocks += 1
            t_prev = t_next
            j = (j + 1) % PPQN
            if j == 0:
                t_beat = t_next
                if not no_beat:
                    note_off_at, note_playing = self._beat_note(note_off_at, note_playing, t_next)
        if note_off_at is not None:
            try:
                self._send([0x80 | (note_playing[0] - 1), note_playing[1], 0])
            except Exception:
                pass

    def _beat_note(self, note_off_at, note_playing, t):
        if not self.send_notes:
            return note_off_at, note_playing
        if note_off_at is not None:
            self._send([0x80 | (note_playing[0] - 1), note_playing[1], 0])
        with self._lock:
            ch, nt, vel = self.channel, self.note, self.velocity
        self._send([0x90 | (ch - 1), nt, vel], t)
        self.notes += 1
        return t + self.note_length_s, (ch, nt)

