"""Helpers for the server's tests (and for anyone scripting against a server)."""
from __future__ import annotations

import json
import time

import numpy as np
import zmq

from . import protocol as P


def write_click_track(path, seconds=4.0, sr=16000, bpm=120.0, seed=0):
    """A mono file with a tone and a click on every beat; returns the beat times (s)."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    x = 0.1 * np.sin(2 * np.pi * 220 * t) + 0.01 * rng.standard_normal(n)
    beats = np.arange(0.0, seconds, 60.0 / bpm)
    for b in beats:
        i = int(b * sr)
        m = min(n - i, int(0.02 * sr))
        x[i:i + m] += 0.5 * np.exp(-np.arange(m) / (0.004 * sr)) * rng.standard_normal(m)
    sf.write(str(path), x.astype(np.float32), sr)
    return beats


class Subscriber:
    """SUB socket that collects and validates every message."""

    def __init__(self, ctx, addr, topics=("match", "beat", "status"), **sockopts):
        self.sock = ctx.socket(zmq.SUB)
        self.sock.linger = 0
        for k, v in sockopts.items():
            setattr(self.sock, k, v)
        self.sock.connect(addr)
        for t in topics:
            self.sock.subscribe(t.encode())
        self.msgs: list[tuple[str, dict, float]] = []
        self.errors: list[str] = []

    def poll(self, timeout_s: float, until=None) -> list:
        """Receive for up to ``timeout_s`` or until ``until(topic, msg)`` returns True."""
        t_end = time.monotonic() + timeout_s
        while time.monotonic() < t_end:
            if not self.sock.poll(50):
                continue
            while True:
                try:
                    frames = self.sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                t_recv = time.time()
                if len(frames) != 2:
                    self.errors.append(f"{len(frames)} frames")
                    continue
                topic = frames[0].decode()
                msg = json.loads(frames[1])
                errs = P.validate_message(topic, msg)
                if errs:
                    self.errors.append(f"{topic}: {errs[:3]}")
                self.msgs.append((topic, msg, t_recv))
                if until is not None and until(topic, msg):
                    return self.msgs
        return self.msgs

    def of(self, topic):
        return [m for t, m, _ in self.msgs if t == topic]

    def close(self):
        self.sock.close(0)


def request(ctx, addr, obj, timeout_s=5.0, raw: bytes | None = None, sock=None) -> dict:
    """One REQ round trip; returns the reply object (raises TimeoutError)."""
    own = sock is None
    if own:
        sock = ctx.socket(zmq.REQ)
        sock.linger = 0
        sock.connect(addr)
    try:
        sock.send(raw if raw is not None else json.dumps(obj).encode())
        if not sock.poll(int(timeout_s * 1000)):
            raise TimeoutError(f"no reply to {obj!r} within {timeout_s}s")
        return json.loads(sock.recv())
    finally:
        if own:
            sock.close(0)


def seq_gaps(msgs: list[dict]) -> int:
    """Missing sequence numbers in a list of one topic's messages (after the first received)."""
    s = [m["seq"] for m in msgs]
    return sum(max(0, b - a - 1) for a, b in zip(s, s[1:])) + sum(1 for a, b in zip(s, s[1:]) if b <= a)


class MidiRecorder:
    """Reads one MIDI output port (matched by a substring of its name) through ``python-rtmidi``
    and stamps every message with the time the MIDI backend received it, in ``time.time()`` seconds.

    Python never runs inside the backend's process cycle. A callback there would wait for the
    GIL, so on a loaded machine it would stamp events late by the wait, and a JACK cycle held up
    by it could lose events. Instead rtmidi queues the messages with their delta times (taken in
    the backend's own thread), and a Python thread polls that queue every ``poll_s`` seconds.
    The deltas, summed, give each message's time on the backend's clock. The offset to wall time is the
    smallest (poll time - backend time) seen: the poll that came soonest after its message.

    ``events`` holds ``(t, message bytes)`` in arrival order; the stamps are final after ``close()``.
    """

    def __init__(self, port_substring: str, timeout: float = 5.0, api: str = "jack", name: str = "recorder",
                 poll_s: float = 0.0005):
        import threading

        import rtmidi

        rtapi = {"jack": rtmidi.API_UNIX_JACK, "alsa": rtmidi.API_LINUX_ALSA}[api]
        self.mi = rtmidi.MidiIn(rtapi=rtapi, name=name, queue_size_limit=1 << 16)
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
        self._raw: list[tuple[float, float, list[int]]] = []  # (wall at poll, backend time, message)
        self._clock = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.mi.open_port(idx[0])
        self._poll_s = poll_s
        self._thread = threading.Thread(target=self._poll, name="midi-recorder", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while True:
            got = self.mi.get_message()
            if got is None:
                if self._stop.is_set():
                    return
                time.sleep(self._poll_s)
                continue
            msg, delta = got
            wall = time.time()
            self._clock += delta
            with self._lock:
                self._raw.append((wall, self._clock, list(msg)))

    @property
    def events(self) -> list[tuple[float, list[int]]]:
        with self._lock:
            raw = list(self._raw)
        if not raw:
            return []
        offset = min(w - c for w, c, _ in raw)
        return [(c + offset, m) for _, c, m in raw]

    def close(self) -> None:
        time.sleep(4 * self._poll_s)
        self._stop.set()
        self._thread.join(5.0)
        self.mi.close_port()
        del self.mi

    def clocks(self) -> np.ndarray:
        """Arrival times (s) of the timing clocks (0xF8)."""
        return np.array([t for t, m in self.events if m[0] == 0xF8])

    def note_ons(self) -> list[tuple[float, list[int]]]:
        return [(t, m) for t, m in self.events if m[0] & 0xF0 == 0x90 and m[2] > 0]

    def clocks_between_notes(self) -> list[int]:
        """Clocks received between consecutive note-ons, in arrival order."""
        gaps, n = [], None
        for _, m in self.events:
            if m[0] == 0xF8 and n is not None:
                n += 1
            elif m[0] & 0xF0 == 0x90 and m[2] > 0:
                if n is not None:
                    gaps.append(n)
                n = 0
        return gaps
