"""The live status line of ``python -m server``.

A thread subscribes to the server's own PUB stream -- like any other client, so the server
itself knows nothing about it -- and keeps one line up to date on stderr:

    ● running  in -18.4 dB ▮▮▮▮▮▯▯▯  121.3 BPM 3/4 beat 2 ◆ conf 0.83  drums pop909-694/drums .71 ·
    fretless bass pop909-583/bass .64  hop p50 14.2 p99 19.8 ms  drops 0

input level (with a meter; "silence" below the signal threshold), tempo, the tracker's meter and
the current beat's place in the bar (1 = the downbeat), a beat flash (◆ on a hop that holds a beat,
yellow on a downbeat) and the tracker's confidence -- or "no beat" in place of all that while the
tracker hears none -- then the best match per instrument (stem id and score), hop latency p50/p99
and dropped hops. On a terminal it is a rich live line (log records print above it); when stderr
is not a terminal it becomes a plain log line every ``every_s`` seconds.
"""
from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time

import zmq

log = logging.getLogger("server")

METER_DB = (-60.0, 0.0)  # the level meter's range
METER_CELLS = 8


ADDRESS_RE = re.compile(r"^(tcp://[^:/\s]+:(\d+|\*)|tcp://\[[0-9a-fA-F:.]+\]:(\d+|\*)|ipc://\S+|inproc://\S+)$")


def check_address(flag: str, addr: str) -> str | None:
    """None when ``addr`` is a ZeroMQ endpoint the server can bind, else what is wrong with it."""
    if ADDRESS_RE.match(addr):
        m = re.search(r":(\d+)$", addr)
        if m and not 0 < int(m.group(1)) < 65536:
            return f"{flag} {addr}: port must be 1..65535"
        return None
    if addr.isdigit():
        return f"{flag} {addr} is a port, not an address: use tcp://127.0.0.1:{addr}"
    return f"{flag} {addr!r} is not a ZeroMQ address (tcp://HOST:PORT, e.g. tcp://127.0.0.1:5555)"


def connect_address(pub: str) -> str:
    """Where a local client reaches a server bound to ``pub`` (a wildcard host means this machine)."""
    return re.sub(r"^tcp://(\*|0\.0\.0\.0)(?=:)", "tcp://127.0.0.1", re.sub(r"^tcp://\[::\](?=:)", "tcp://[::1]", pub))


class State:
    """What the line shows, folded from the stream's messages."""

    def __init__(self):
        self.level_db = None
        self.signal = None
        self.tempo = None
        self.no_beat = None  # None before the first beat message
        self.bar_meter = self.beat_in_bar = self.confidence = None  # the tracker's meter, place in the bar
        self.beat_at = 0.0  # monotonic time of the last hop that held a beat
        self.down_at = 0.0  # ... and a downbeat
        self.best: dict[str, tuple[str, float]] = {}
        self.instruments: list[str] = []
        self.p50 = self.p99 = None
        self.drops = 0
        self.hops = 0
        self.state = "starting"
        self.messages = 0

    def update(self, topic: str, d: dict, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.messages += 1
        if topic == "beat":
            self.level_db = d.get("level_db", self.level_db)
            self.signal = d.get("signal", self.signal)
            self.tempo = d.get("tempo")
            self.no_beat = bool(d.get("no_beat")) or not self.tempo
            self.bar_meter, self.beat_in_bar = d.get("meter"), d.get("beat_in_bar")
            self.confidence = d.get("confidence")
            if d.get("beats_in_hop"):
                self.beat_at = now
            if d.get("downbeats_in_hop"):
                self.down_at = now
        elif topic == "match":
            self.signal = d.get("signal", self.signal)
            if d.get("level_db") is not None:
                self.level_db = d["level_db"]
            self.instruments = list(d.get("instruments") or [])
            best = {}
            for inst in self.instruments:
                items = (d.get("matches") or {}).get(inst) or []
                if items:
                    best[inst] = (str(items[0].get("stem_id", "?")), float(items[0].get("score") or 0.0))
            self.best = best
        elif topic == "status":
            lat, c = d.get("latency") or {}, d.get("counters") or {}
            self.p50, self.p99 = lat.get("p50"), lat.get("p99")
            self.drops = int(c.get("drops") or 0)
            self.hops = int(c.get("hops") or 0)
            self.state = d.get("state") or self.state
            if d.get("level_db") is not None:
                self.level_db = d["level_db"]
            if d.get("signal") is not None:
                self.signal = d["signal"]

    # ------------------------------------------------------------------ text
    def meter(self) -> str:
        if self.level_db is None:
            return "▯" * METER_CELLS
        lo, hi = METER_DB
        n = int(round((min(max(self.level_db, lo), hi) - lo) / (hi - lo) * METER_CELLS))
        return "▮" * n + "▯" * (METER_CELLS - n)

    def parts(self, now: float | None = None) -> list[tuple[str, str]]:
        """``[(text, rich style)]`` pieces of the line."""
        now = time.monotonic() if now is None else now
        flash = now - self.beat_at < 0.12
        lvl = "  -  " if self.level_db is None else f"{self.level_db:5.1f}"
        out = [(f"● {self.state}", "bold green" if self.state == "running" else "yellow"),
               (f"  in {lvl} dB ", ""), (self.meter(), "cyan" if self.signal else "dim")]
        if self.signal is False:
            out.append(("  silence", "dim"))
        out += self.beat_parts(flash, now - self.down_at < 0.12)
        cells = []
        for inst in self.instruments:
            stem, score = self.best.get(inst, ("-", None))
            cells.append(f"{inst} {stem}" + ("" if score is None else f" {score:.2f}"))
        out.append(("  " + (" · ".join(cells) if cells else "no matches yet"), ""))
        p50 = "-" if self.p50 is None else f"{self.p50:.1f}"
        p99 = "-" if self.p99 is None else f"{self.p99:.1f}"
        out.append((f"  hop p50 {p50} p99 {p99} ms", ""))
        out.append((f"  drops {self.drops}", "bold red" if self.drops else ""))
        return out

    def beat_parts(self, flash: bool, down: bool) -> list[tuple[str, str]]:
        """The tempo, bar, beat flash and confidence pieces (``no beat`` while there is none)."""
        if self.no_beat is None:  # no beat message yet
            return [("    ? BPM ", ""), ("◇", "dim")]
        conf = "" if self.confidence is None else f" conf {self.confidence:.2f}"
        if self.no_beat:
            return [("  no beat", "yellow" if self.signal else "dim"), (conf, "dim")]
        m, b = self.bar_meter, self.beat_in_bar
        bar = "" if not m or b is None else f" {m}/4 beat {b + 1}"
        style = ("bold yellow" if down else "bold magenta") if flash else "dim"
        return [(f"  {self.tempo:5.1f} BPM{bar} ", ""), ("◆" if flash else "◇", style), (conf, "")]

    def text(self, now: float | None = None) -> str:
        return "".join(t for t, _ in self.parts(now))


class StatusLine:
    """``start(pub)`` subscribes and draws until ``stop()``. ``live``: a rich live line (a
    terminal) or plain log lines every ``every_s`` seconds (0: none)."""

    def __init__(self, *, live: bool, stream=None, every_s: float = 5.0, refresh_hz: float = 10.0):
        self.live = live
        self.stream = stream if stream is not None else sys.stderr
        self.every_s = every_s
        self.refresh_hz = refresh_hz
        self.state = State()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._console = None
        self._live = None
        if live:
            from rich.console import Console

            self._console = Console(file=self.stream, force_terminal=True, highlight=False)

    @classmethod
    def for_stderr(cls, every_s: float = 5.0) -> "StatusLine":
        tty = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
        return cls(live=tty, every_s=every_s)

    def log_handler(self) -> logging.Handler:
        """A logging handler that prints above the live line (plain stream handler otherwise)."""
        if self._console is None:
            return logging.StreamHandler(self.stream)
        console = self._console

        class _Handler(logging.Handler):
            def emit(self, record):
                try:
                    console.print(self.format(record), markup=False, highlight=False, soft_wrap=True)
                except Exception:  # never let a log line break the server
                    self.handleError(record)

        return _Handler()

    def start(self, pub: str, curve_keys: str | None = None) -> None:
        self._thread = threading.Thread(target=self._run, args=(connect_address(pub), curve_keys),
                                        name="status-line", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)

    def _renderable(self):
        from rich.text import Text

        t = Text(no_wrap=True, overflow="ellipsis")
        for piece, style in self.state.parts():
            t.append(piece, style=style or None)
        return t

    def _run(self, addr: str, curve_keys: str | None) -> None:
        ctx = zmq.Context.instance()
        sub = ctx.socket(zmq.SUB)
        sub.linger = 0
        try:
            if curve_keys:
                from .keys import load_client

                for k, v in load_client(curve_keys).items():
                    setattr(sub, k, v)
            sub.connect(addr)
            for t in ("match", "beat", "status"):
                sub.subscribe(t.encode())
        except Exception as e:  # the line is a convenience: say why it is off, keep serving
            log.warning("status line off: cannot subscribe to %s: %s", addr, e)
            sub.close(0)
            return
        if self.live:
            from rich.live import Live

            self._live = Live(self._renderable(), console=self._console, refresh_per_second=self.refresh_hz,
                              transient=False, redirect_stdout=False, redirect_stderr=False)
            self._live.start()
        next_plain = time.monotonic() + self.every_s
        try:
            while not self._stop.is_set():
                if sub.poll(int(1000 / self.refresh_hz)):
                    while True:
                        try:
                            topic, body = sub.recv_multipart(zmq.NOBLOCK)[:2]
                        except (zmq.Again, ValueError):
                            break
                        try:
                            self.state.update(topic.decode("utf-8", "replace"), json.loads(body))
                        except (ValueError, AttributeError, TypeError):
                            continue
                now = time.monotonic()
                if self._live is not None:
                    self._live.update(self._renderable())
                elif self.every_s and now >= next_plain and self.state.messages:
                    log.info("%s", self.state.text(now))
                    next_plain = now + self.every_s
        finally:
            if self._live is not None:
                self._live.update(self._renderable())
                self._live.stop()
            sub.close(0)
