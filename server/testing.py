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
