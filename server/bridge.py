"""Bridges from the server's own PUB stream to other protocols: OSC (server/osc.py), Ableton
Link (server/link.py) and the live page's WebSocket (server/web.py).

A :class:`Bridge` is a thread with a SUB socket on the server's publish address -- the same stream
every other client sees, so a bridge cannot slow the hop worker down -- that hands each message to
its sinks. :class:`Scheduler` fires callbacks at wall-clock times (the ``*_wall`` and
``cue.wall_time`` fields); :class:`BeatClock` turns the beat forecasts into one event per live beat,
numbered like the match cues (server/cues.py: beat numbers divisible by the tracker's meter are
downbeats);
:class:`CueWatcher` reports each instrument's new top match at its cue time.

``python -m server --osc HOST:PORT --link [--link-mode follow|lead] --web [HOST:PORT]`` (the live
page, server/web.py): :func:`add_arguments` adds
the options, :func:`start` starts what was asked for after the server has bound its sockets.
"""
from __future__ import annotations

import heapq
import itertools
import json
import logging
import re
import threading
import time
from typing import Callable

import zmq

log = logging.getLogger("server.bridge")


class Scheduler:
    """Callbacks at wall-clock times (unix s), in one thread. ``at(when, fn, key)`` replaces a
    pending event of the same ``key``."""

    def __init__(self, name: str = "bridge-scheduler"):
        self._heap: list = []
        self._keys: dict = {}
        self._cv = threading.Condition()
        self._stop = False
        self._n = itertools.count()
        self.late_ms: list[float] = []  # how late each event fired (diagnostics, last 1000)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def at(self, when: float, fn: Callable[[], None], key=None) -> None:
        with self._cv:
            n = next(self._n)
            if key is not None:
                self._keys[key] = n
            heapq.heappush(self._heap, (float(when), n, key, fn))
            self._cv.notify()

    def cancel(self, key) -> None:
        with self._cv:
            self._keys.pop(key, None)

    def pending(self, key) -> float | None:
        """Wall time of the pending event ``key`` (None when there is none)."""
        with self._cv:
            n = self._keys.get(key)
            for when, m, k, _ in self._heap:
                if m == n and k == key:
                    return when
        return None

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._stop and not self._heap:
                    self._cv.wait()
                if self._stop:
                    return
                when, n, key, fn = self._heap[0]
                wait = when - time.time()
                if wait > 0.003:
                    self._cv.wait(min(wait - 0.002, 0.5))
                    continue  # an earlier event may have arrived meanwhile
                while time.time() < when:  # the last 3 ms: spin, a wait may oversleep by more
                    pass
                heapq.heappop(self._heap)
                if key is not None:
                    if self._keys.get(key) != n:
                        continue  # replaced or cancelled
                    del self._keys[key]
            self.late_ms.append((time.time() - when) * 1000.0)
            del self.late_ms[:-1000]
            try:
                fn()
            except Exception:
                log.exception("scheduled callback failed")

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(timeout=2.0)


class BeatClock:
    """One ``on_beat(number, wall, stream_time, tempo)`` per live beat, at the forecast wall time.
    The newest forecast of a pending beat reschedules it. The numbers are the server's
    (``beat.next_beats_number``, the numbering of ``cue.beat``: a number divisible by
    ``beat.live_meter`` is a downbeat), so a cue's downbeat and its tick are one beat even when the
    tracker's tempo changes octave. A message without numbers (an older server) is numbered from
    the latest cue seen (``cue.stream_time``/``cue.beat``) at the message's period."""

    def __init__(self, scheduler: Scheduler, on_beat: Callable[[int, float, float, float], None]):
        self.sched = scheduler
        self.on_beat = on_beat
        self.last_fired = -float("inf")  # wall s of the latest beat fired
        self.last_number: int | None = None  # its number
        self.last_period = float("inf")  # s, the period it was forecast at
        self.anchor: tuple[float, int] | None = None  # (stream s, beat number) of a cue
        self.count = 0
        self.tempo = None

    def on_match(self, msg: dict) -> None:
        for items in (msg.get("matches") or {}).values():
            for it in items[:1]:
                cue = it.get("cue")
                if cue:
                    self.anchor = (float(cue["stream_time"]), int(cue["beat"]))
                    return

    def number(self, t: float, period: float) -> int:
        if self.anchor is None:
            return self.count
        return self.anchor[1] + int(round((t - self.anchor[0]) / period))

    def on_beat_msg(self, msg: dict) -> None:
        tempo = msg.get("tempo")
        if not msg.get("signal") or not tempo:
            self.sched.cancel("beat")
            return
        self.tempo = tempo
        period = 60.0 / tempo
        # two beats are never closer than half a period of the faster of the two tempi: after an
        # octave change the slower period would swallow the first beat of the new tempo
        gap = 0.5 * min(period, self.last_period)
        nums = msg.get("next_beats_number") or []
        now = time.time()
        pending = self.sched.pending("beat")
        if pending is not None and pending <= now + 0.003:
            return  # a beat fires now: the next message schedules the one after it
        for i, (t, w) in enumerate(zip(msg.get("next_beats") or [], msg.get("next_beats_wall") or [])):
            n = int(nums[i]) if i < len(nums) else None
            if w <= now + 0.003 or w <= self.last_fired + gap:
                continue
            if n is not None and self.last_number is not None and n <= self.last_number:
                continue  # that number has ticked already
            if n is None:
                if pending is not None and abs(w - pending) >= 0.5 * period:
                    return  # another, earlier beat is pending: it fires first
                n = self.number(t, period)
            self.sched.at(w, lambda n=n, w=w, t=t, tempo=tempo, p=period: self._fire(n, w, t, tempo, p), key="beat")
            return

    def _fire(self, n, w, t, tempo, period) -> None:
        self.last_fired, self.last_number, self.last_period = w, n, period
        self.count += 1
        self.on_beat(n, w, t, tempo)


#: a pending play this close (s) is not moved to another downbeat a match message announces: the
#: cues stay ``server.cues.LEAD_S`` (0.15 s) ahead, so a downbeat sooner than that is announced no
#: more; further off, another beat number means the numbering moved (the tracker's tempo or bar)
CUE_HOLD_S = 0.25


class CueWatcher:
    """``on_play(instrument, item)`` at the cue's wall time whenever an instrument's top match
    changes (another stem, or another segment of it). Until it fires, every new match message
    reschedules it to that message's cue, and every beat message to its forecast of that
    downbeat (the newest estimate wins)."""

    def __init__(self, scheduler: Scheduler, on_play: Callable[[str, dict], None]):
        self.sched = scheduler
        self.on_play = on_play
        self.current: dict[str, tuple] = {}  # instrument -> (stem_id, offset) cued
        self.beat: dict[str, int] = {}  # instrument -> live beat number of its cue
        self.item: dict[str, dict] = {}  # instrument -> the match item of the pending play

    def on_match(self, msg: dict) -> None:
        if not msg.get("signal"):
            for inst in list(self.current):
                self.sched.cancel(("play", inst))
            self.current.clear()
            return
        for inst, items in (msg.get("matches") or {}).items():
            top = items[0] if items else None
            if not top or not top.get("cue") or not top.get("file"):
                continue
            key = (top["stem_id"], top["offset"])
            if self.current.get(inst) == key:
                when = self.sched.pending(("play", inst))
                if when is None:
                    continue  # started already: it plays on
                if self.beat.get(inst) != top["cue"]["beat"] and when < time.time() + CUE_HOLD_S:
                    continue  # the pending downbeat is too close to be announced again: it stays
            # a new top match, or the newest estimate of the pending downbeat (the tracker refines
            # its forecast every hop until the downbeat comes)
            self.current[inst] = key
            self.beat[inst] = top["cue"]["beat"]
            self.item[inst] = top
            self.sched.at(top["cue"]["wall_time"], lambda inst=inst, top=top: self.on_play(inst, top), key=("play", inst))

    def on_beat_msg(self, msg: dict) -> None:
        """The last ~150 ms before a cue no match message announces it again (cues stay
        ``LEAD_S`` ahead): the beat forecasts of that downbeat keep refining it until it comes."""
        if not msg.get("signal") or not msg.get("tempo"):
            return
        half = 30.0 / msg["tempo"]
        now = time.time()
        walls = msg.get("next_beats_wall") or []
        nums = msg.get("next_beats_number") or []
        for inst, top in list(self.item.items()):
            when = self.sched.pending(("play", inst))
            if when is None:
                continue
            # the forecast of the cue's own beat number where the message numbers its beats (the
            # tick of that number comes from the same forecast); else the forecast nearest in time
            numbered = [w for w, n in zip(walls, nums) if n == self.beat.get(inst)]
            for w in numbered or [w for w in walls if abs(w - when) < half]:
                if w > now + 0.003:
                    self.sched.at(w, lambda inst=inst, top=top: self.on_play(inst, top), key=("play", inst))
                    break


class Bridge:
    """A thread with a SUB socket on the server's publish address; each message goes to every
    sink's ``handle(topic, msg)``; ``close()`` is called on each at the end."""

    def __init__(self, pub_addr: str, sinks: list, *, curve_keys=None, context: zmq.Context | None = None):
        self.addr = re.sub(r"^tcp://(\*|0\.0\.0\.0)(?=:)", "tcp://127.0.0.1", pub_addr)
        self.sinks = list(sinks)
        self.curve_keys = curve_keys
        self.ctx = context or zmq.Context.instance()
        self.errors = 0
        self.received = 0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bridge", daemon=True)

    def start(self, timeout: float = 5.0) -> "Bridge":
        self._thread.start()
        self._ready.wait(timeout)
        return self

    def _run(self) -> None:
        sub = self.ctx.socket(zmq.SUB)
        sub.linger = 0
        sub.rcvhwm = 1000
        try:
            if self.curve_keys:
                from .keys import load_client

                for k, v in load_client(self.curve_keys).items():
                    setattr(sub, k, v)
            sub.connect(self.addr)
            for t in (b"match", b"beat", b"status"):
                sub.subscribe(t)
        finally:
            self._ready.set()
        try:
            while not self._stop.is_set():
                if not sub.poll(50):
                    continue
                while True:
                    try:
                        frames = sub.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    if len(frames) != 2:
                        continue
                    try:
                        topic, msg = frames[0].decode(), json.loads(frames[1])
                    except (UnicodeDecodeError, ValueError):
                        continue
                    self.received += 1
                    for s in self.sinks:
                        try:
                            s.handle(topic, msg)
                        except Exception:
                            self.errors += 1
                            log.exception("bridge %s failed on a %s message", type(s).__name__, topic)
        finally:
            sub.close(0)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=3.0)
        for s in self.sinks:
            try:
                s.close()
            except Exception:
                log.exception("closing %s", type(s).__name__)


# ---------------------------------------------------------------------------- CLI
def add_arguments(ap) -> None:
    g = ap.add_argument_group("bridges (each subscribes to this server's own publish stream)")
    g.add_argument("--osc", default=None, metavar="HOST:PORT",
                   help="send matches, beats, tempo and status as OSC over UDP to HOST:PORT "
                        "(address space: docs/protocol.md, OSC; needs the osc extra: python-osc) (default: off)")
    g.add_argument("--link", action="store_true",
                   help="join an Ableton Link session on the local network (needs the link extra: aalink)")
    g.add_argument("--link-mode", choices=("follow", "lead"), default="follow",
                   help="follow: the Link session's tempo and beat phase follow the beat tracker; lead: the "
                        "tracker follows the session's tempo (default %(default)s)")
    g.add_argument("--link-quantum", type=int, default=4, metavar="BEATS",
                   help="beats per bar in the Link session; bar starts fall on the cues' downbeats when it is the "
                        "piece's meter (3 for 3/4) (default %(default)s)")
    g.add_argument("--web", nargs="?", const="127.0.0.1:8765", default=None, metavar="HOST:PORT",
                   help="serve the live page (matches playable in the browser, beat, tempo, level, latency) on "
                        "http://HOST:PORT/, loopback only (default when given without a value: 127.0.0.1:8765; "
                        "needs the web extra: websockets)")


def parse_hostport(value: str, flag: str = "--osc", allow_zero: bool = False) -> tuple[str, int]:
    m = re.fullmatch(r"\[?([^\[\]]+?)\]?:(\d+)", value or "")
    if not m or not (0 if allow_zero else 1) <= int(m.group(2)) < 65536:
        raise ValueError(f"{flag} {value!r}: expected HOST:PORT with a port 1..65535, e.g. 127.0.0.1:9000")
    return m.group(1), int(m.group(2))


class Bridges:
    """What :func:`start` started; ``stop()`` ends it all."""

    def __init__(self):
        self.bridge: Bridge | None = None
        self.scheduler: Scheduler | None = None
        self.sinks: list = []

    def stop(self) -> None:
        if self.bridge is not None:
            self.bridge.stop()
        if self.scheduler is not None:
            self.scheduler.stop()


def start(a, srv) -> Bridges:
    """Start the bridges the options ask for, on a started server. Raises ``ConfigError`` (a
    clear message, exit status 2) for a bad option or a missing package."""
    from .app import ConfigError

    out = Bridges()
    if not (getattr(a, "osc", None) or getattr(a, "link", False) or getattr(a, "web", None)):
        return out
    out.scheduler = Scheduler()
    try:
        if a.osc:
            from .osc import OscSink

            host, port = parse_hostport(a.osc)
            out.sinks.append(OscSink(host, port, out.scheduler))
            log.info("OSC: sending to %s:%d (docs/protocol.md, OSC)", host, port)
        if a.link:
            from .link import LinkSink

            if a.link_quantum < 1:
                raise ValueError("--link-quantum must be >= 1")
            out.sinks.append(LinkSink(out.scheduler, mode=a.link_mode, quantum=a.link_quantum, server=srv))
            log.info("Link: joined the session (%s mode, quantum %d)", a.link_mode, a.link_quantum)
        if a.web:
            from .web import WebSink

            host, port = parse_hostport(a.web, "--web", allow_zero=True)  # port 0: any free port (tests)
            web = WebSink(host, port, srv)
            out.sinks.append(web)
            log.info("live page: %s", web.url)
    except (ValueError, ImportError, OSError) as e:
        out.stop()
        for s in out.sinks:
            s.close()
        raise ConfigError(str(e)) from e
    out.bridge = Bridge(srv.pub_addr, out.sinks, curve_keys=getattr(a, "curve_keys", None), context=srv.ctx).start()
    return out
