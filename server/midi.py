"""MIDI output: 24-ppqn clock locked to the beat tracker, and one note per beat.

A virtual output port (python-rtmidi) is opened on the first MIDI API that works (ALSA, then
JACK; on this kind of machine only JACK exists, with ``jackd -d dummy`` running). The clock runs in
its own thread as a software PLL: ticks are spaced ``period/24`` apart, and every tick the
remaining phase error against the tracker's beat grid (anchor = the next predicted beat, as
wall-clock time) is corrected by a quarter, at most half a tick interval per tick, so tempo
changes glide instead of jumping, no tick is ever skipped or doubled, and beat ticks (every 24th)
land on the tracker's beats. Start (0xFA) is sent with the first tick, Stop (0xFC) on shutdown.
"""
from __future__ import annotations

import logging
import os
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


class MidiClock:
    def __init__(self, out=None, *, port_name: str = config.MIDI_PORT_NAME, channel: int = config.MIDI_CHANNEL,
                 note: int = config.MIDI_NOTE, velocity: int = config.MIDI_VELOCITY,
                 note_length_s: float = config.MIDI_NOTE_LENGTH_S, send_notes: bool = True):
        if out is None:
            out, self.api = open_virtual_output(port_name)
        else:
            self.api = "custom"
        self.out = out
        self.port_name = port_name
        self.channel, self.note, self.velocity = channel, note, velocity
        self.note_length_s = note_length_s
        self.send_notes = send_notes
        self.clocks = 0
        self.notes = 0
        self._period = None  # wall seconds per beat
        self._anchor = None  # wall time of a beat on the tracker's grid
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        self.error = None

    # -- inputs --------------------------------------------------------------------------------
    def update(self, period_s: float | None, anchor_wall: float | None) -> None:
        """New beat grid from the tracker: beat period (wall s) and one beat time (unix s)."""
        if period_s is None or anchor_wall is None or not (0.2 <= period_s <= 2.0):
            return
        with self._lock:
            self._period, self._anchor = float(period_s), float(anchor_wall)

    def update_from_beat(self, beat: dict, speed: float = 1.0) -> None:
        p = beat.get("period_s")
        nb = beat.get("next_beats_wall") or []
        if p and nb:
            self.update(p / (speed or 1.0), nb[0])

    def configure(self, channel=None, note=None, velocity=None) -> None:
        with self._lock:
            if channel is not None:
                self.channel = int(channel)
            if note is not None:
                self.note = int(note)
            if velocity is not None:
                self.velocity = int(velocity)

    def info(self) -> dict:
        return {"enabled": True, "port": f"{self.port_name} ({self.api})", "channel": self.channel, "note": self.note,
                "clocks": self.clocks, "notes": self.notes, "error": self.error}

    # -- thread --------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run_safe, name="midi", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        try:
            if self.clocks:
                self.out.send_message([STOP])
                # the JACK backend hands messages over in its process callback: closing the port at
                # once could drop the Stop (seen on a loaded machine); give it a few periods
                time.sleep(0.05)
            self.out.close_port()
            del self.out
        except Exception:
            pass
        log.info("MIDI: sent %d clocks, %d beat notes", self.clocks, self.notes)

    def _send(self, msg) -> None:
        self.out.send_message(msg)

    def _run_safe(self) -> None:
        try:
            self._run()
        except Exception as e:  # a MIDI failure must not take the server down
            self.error = f"{type(e).__name__}: {e}"
            log.error("MIDI clock stopped: %s", self.error)

    def _grid(self):
        with self._lock:
            return self._period, self._anchor

    def _run(self) -> None:
        # wait for a tempo
        while not self._stop.is_set():
            p, a = self._grid()
            if p is not None:
                break
            self._stop.wait(0.01)
        if self._stop.is_set():
            return
        now = time.time()
        dt = p / PPQN
        m = int(((now - a) / dt) // 1) + 1  # next grid tick index (relative to the anchor beat)
        t_next = a + m * dt
        j = m % PPQN  # tick position within the beat (0 = on the beat)
        started = False
        note_off_at = None
        note_playing = None
        while not self._stop.is_set():
            wake = t_next if note_off_at is None else min(t_next, note_off_at)
            delay = wake - time.time()
            if delay > 0.002:
                if self._stop.wait(delay - 0.001):
                    break
                continue
            while time.time() < wake:  # last ms: spin for precision
                pass
            now = time.time()
            if note_off_at is not None and now >= note_off_at:
                self._send([0x80 | (note_playing[0] - 1), note_playing[1], 0])
                note_off_at = note_playing = None
            if now < t_next:
                continue
            if not started:
                self._send([START])
                started = True
            self._send([CLOCK])
            self.clocks += 1
            if j == 0 and self.send_notes:
                if note_off_at is not None:
                    self._send([0x80 | (note_playing[0] - 1), note_playing[1], 0])
                with self._lock:
                    ch, nt, vel = self.channel, self.note, self.velocity
                self._send([0x90 | (ch - 1), nt, vel])
                self.notes += 1
                note_playing = (ch, nt)
                note_off_at = now + self.note_length_s
            # schedule the next tick against the (possibly updated) grid
            p, a = self._grid()
            dt = p / PPQN
            j = (j + 1) % PPQN
            nominal = t_next + dt
            frac = ((nominal - a) / p) % 1.0  # where the grid is, in beats, at the nominal time
            err = ((frac - j / PPQN + 0.5) % 1.0) - 0.5  # >0: the grid is ahead, tick earlier
            corr = max(-0.5 * dt, min(0.5 * dt, 0.25 * err * p))
            t_next = nominal - corr
            if t_next < now - 0.5:  # hopelessly late (machine stalled): re-anchor, keep the count
                t_next = now
        if note_off_at is not None:
            try:
                self._send([0x80 | (note_playing[0] - 1), note_playing[1], 0])
            except Exception:
                pass
