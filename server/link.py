"""``--link``: the server as a peer of an Ableton Link session (PyPI ``aalink``).

Two modes (``--link-mode``):

* ``follow`` (default) -- the session follows the beat tracker. At every live beat (scheduled on
  the beat forecasts, :class:`server.bridge.BeatClock`) the session's tempo is set to the median
  tracked tempo of the last 16 hops (the per-hop figure wobbles by a few BPM: the tracker's beat
  intervals are whole 20-ms frames) when they differ by more than 0.05 BPM, and when the session's beat is more than 5 ms
  away from the live beat's number (numbered like the match cues, so bar starts -- beat numbers
  divisible by the quantum -- are the cues' downbeats when the quantum is the tracker's meter:
  ``--link-quantum 3`` for a piece in 3/4) it is moved there (``force_beat``: the
  tracker is the session's clock). Silence leaves the session running at its last tempo.
* ``lead`` -- the tracker follows the session: whenever the session's tempo changes (checked with
  every message) the tracker's tempo range is narrowed to that tempo +-3 % (a new
  :class:`engine.beats.CausalBeatTracker`, swapped in between two hops). The beat phase still
  comes from the audio; the session's tempo decides the tempo octave and keeps the tracker from
  wandering. The live beats are numbered like the session's (each beat gets the number of the
  session beat nearest to it), and the cues' bars are the session's (``quantum`` beats, not the
  tracker's bar: :meth:`server.cues.LiveBars.session_bars`), so the cues' downbeats fall on the
  session's bar starts.

``aalink`` needs a running asyncio loop: the Link object lives in its own thread's loop, and every
call into it is made in that loop.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time

import numpy as np

from .bridge import BeatClock, Scheduler

log = logging.getLogger("server.link")
TEMPO_TOLERANCE_BPM = 0.05
TEMPO_MEDIAN_OF = 16  # follow: the session tempo is the median tracked tempo of the last 16 hops (2.6 s)
PHASE_TOLERANCE_S = 0.005
LEAD_RANGE = 0.03  # lead mode: the tracker's tempo range is the session tempo +- 3 %


class LinkPeer:
    """An ``aalink.Link`` in its own thread's asyncio loop; ``call(fn)`` runs ``fn(link)`` there
    and returns its result."""

    def __init__(self, tempo: float = 120.0, quantum: int = 4):
        try:
            import aalink  # noqa: F401
        except ImportError as e:
            raise ImportError("--link needs aalink: pip install -e '.[link]'") from e
        self.quantum = int(quantum)
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.link = None
        self._thread = threading.Thread(target=self._run, args=(float(tempo),), name="link", daemon=True)
        self._thread.start()
        if not self._ready.wait(10.0):
            raise OSError("Ableton Link did not start within 10 s")
        if self._error is not None:
            raise OSError(f"Ableton Link could not start: {self._error}")

    def _run(self, tempo: float) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)

        async def make():
            from aalink import Link

            link = Link(tempo)
            link.quantum = self.quantum
            link.enabled = True
            return link

        try:
            self.link = self.loop.run_until_complete(make())
        except BaseException as e:  # noqa: BLE001 - reported to the constructor
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()
        self.link.enabled = False
        self.loop.close()

    def call(self, fn, timeout: float = 1.0):
        fut = asyncio.run_coroutine_threadsafe(self._wrap(fn), self.loop)
        return fut.result(timeout)

    async def _wrap(self, fn):
        return fn(self.link)

    def close(self) -> None:
        if self.loop is not None and self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=3.0)


class LinkSink:
    def __init__(self, scheduler: Scheduler, *, mode: str = "follow", quantum: int = 4, server=None):
        if mode not in ("follow", "lead"):
            raise ValueError(f"--link-mode must be follow or lead, got {mode!r}")
        self.mode = mode
        self.server = server
        self.peer = LinkPeer(120.0, quantum)
        self.quantum = int(quantum)
        self.forced = 0  # beat-phase corrections (follow)
        self.tempo_sets = 0  # tempo changes sent to the session (follow)
        self.retunes = 0  # tracker tempo ranges set from the session (lead)
        self.phase_errors_ms: list[float] = []  # session beat vs live beat at each live beat, before correction
        self.lead_tempo: float | None = None
        self.recent = collections.deque(maxlen=TEMPO_MEDIAN_OF)  # tracked tempos of the latest beat messages
        self.renumbered = 0  # lead: live beat numbering moved onto the session's bars
        self.clock = BeatClock(scheduler, self._on_beat if mode == "follow" else self._on_beat_lead)
        bars = getattr(getattr(server, "cues", None), "bars", None)
        if mode == "lead" and bars is not None:  # the cues' bars are the session's, not the tracker's
            bars.session_bars(self.quantum)

    def handle(self, topic: str, m: dict) -> None:
        if self.mode == "follow":
            if topic == "match":
                self.clock.on_match(m)
            elif topic == "beat":
                if m.get("tempo"):
                    self.recent.append(float(m["tempo"]))
                self.clock.on_beat_msg(m)
        else:
            self._follow_session()
            if topic == "match":
                self.clock.on_match(m)
            elif topic == "beat":
                self.clock.on_beat_msg(m)

    # -- follow: the session follows the tracker -------------------------------------------------
    def _on_beat(self, n: int, wall: float, stream_time: float, tempo: float) -> None:
        session_tempo = float(np.median(self.recent)) if self.recent else tempo

        def correct(link):
            if abs(link.tempo - session_tempo) > TEMPO_TOLERANCE_BPM:
                link.tempo = session_tempo
                self.tempo_sets += 1
            want = n + (time.time() - wall) * tempo / 60.0  # the live beat number now
            err = (link.beat - want + self.quantum / 2) % self.quantum - self.quantum / 2  # beats, wrapped to a bar
            self.phase_errors_ms.append(err * 60000.0 / tempo)
            del self.phase_errors_ms[:-1000]
            if abs(err) * 60.0 / tempo > PHASE_TOLERANCE_S:
                link.force_beat(want)
                self.forced += 1

        self.peer.call(correct)

    # -- lead: the tracker follows the session --------------------------------------------------
    def _follow_session(self) -> None:
        tempo = self.peer.call(lambda link: float(link.tempo))
        if self.lead_tempo is not None and abs(tempo / self.lead_tempo - 1.0) < 0.005:
            return
        srv = self.server
        matcher = getattr(srv, "matcher", None)
        old = getattr(matcher, "tracker", None)
        if old is None:
            return
        with srv.lock:  # between two hops
            old = matcher.tracker
            new = old.retuned(min_bpm=tempo * (1 - LEAD_RANGE), max_bpm=tempo * (1 + LEAD_RANGE),
                              time_offset=old.time_offset + old.frame / old.fps)
            matcher.tracker = new
        self.lead_tempo = tempo
        self.retunes += 1
        log.info("Link lead: tracker tempo range %.1f-%.1f BPM (session %.2f BPM)",
                 tempo * (1 - LEAD_RANGE), tempo * (1 + LEAD_RANGE), tempo)

    def _on_beat_lead(self, n: int, wall: float, stream_time: float, tempo: float) -> None:
        """Lead: number the live beats like the session's (nearest session beat), so that the cues'
        downbeats are the session's bar starts."""
        b = self.peer.call(lambda link: float(link.beat) + (wall - time.time()) * float(link.tempo) / 60.0)
        k = int(round(b))
        bars = getattr(getattr(self.server, "cues", None), "bars", None)
        if bars is None or k == n:
            return
        with self.server.lock:  # between two hops
            if bars.last_beat is not None:
                bars.renumber(k - n)
                self.renumbered += 1
        self.clock.last_number = k  # this beat, renumbered: the next forecasts are numbered on from it
        if self.clock.anchor is not None:  # until the next match message brings the new numbering
            self.clock.anchor = (self.clock.anchor[0], self.clock.anchor[1] + k - n)

    def info(self) -> dict:
        return self.peer.call(lambda link: {"peers": int(link.num_peers), "tempo": float(link.tempo),
                                            "beat": float(link.beat), "mode": self.mode})

    def close(self) -> None:
        self.peer.close()
