"""The worker's messages: ``match`` and ``beat`` from one :class:`engine.pipeline.HopResult`,
``status`` from the server's counters (docs/protocol.md has every field).

:class:`Messages` is mixed into :class:`server.app.Server`, whose ``__init__`` sets the state
read here (the XPUB socket ``pub``, ``seq``, the counters, ``lat``, ``timings``, ``cues``); its
methods run on the worker thread, except :meth:`Messages.status_dict` and
:meth:`Messages.library_info`, which the control thread calls too (they only read).
"""
from __future__ import annotations

import collections
import ctypes
import time
from typing import TYPE_CHECKING

import numpy as np
import zmq

from . import config, protocol as P
from .cues import BEATS_PER_BAR, finite as _num, library_root

if TYPE_CHECKING:
    from engine.pipeline import HopResult


def _level(v) -> float:
    """A level in dBFS for a message: finite, within the schema's [-200, 20]."""
    v = _num(v)
    return -200.0 if v is None else float(min(20.0, max(-200.0, round(v, 2))))


class Percentiles:
    """p50 / p99 / max / mean of the latest ``n`` values (the hop latency of ``status``)."""

    def __init__(self, n):
        self.values = collections.deque(maxlen=n)

    def add(self, v):
        if v is not None:
            self.values.append(float(v))

    def stats(self) -> dict:
        if not self.values:
            return {"p50": None, "p99": None, "max": None, "mean": None, "n": 0}
        a = np.fromiter(self.values, dtype=np.float64)
        p50, p99 = np.percentile(a, [50, 99])
        return {"p50": round(float(p50), 3), "p99": round(float(p99), 3), "max": round(float(a.max()), 3),
                "mean": round(float(a.mean()), 3), "n": int(a.size)}


class Messages:
    """The XPUB side of the server, run by the worker: subscriptions in, messages out (mixed into
    :class:`server.app.Server`)."""

    # -- subscriptions in ---------------------------------------------------------------------------
    def _read_subscriptions(self) -> None:
        """Drain XPUB's (un)subscription messages: byte 1/0 + topic prefix. A subscription that
        covers ``status`` gets the latest status at once; a departure returns freed memory."""
        left = False
        while True:
            try:
                msg = self.pub.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            except zmq.ZMQError:
                return
            if not msg:
                continue
            if msg[0] == 1:
                self.subscriptions += 1
                if b"status".startswith(msg[1:]):
                    self._status_now.set()
            elif msg[0] == 0:
                self.subscriptions = max(0, self.subscriptions - 1)
                left = True
        if left:
            self._trim_memory()

    def _trim_memory(self) -> None:
        """Give the C heap's free pages back to the system (glibc keeps them otherwise: a stalled
        subscriber's queue stayed in RSS after it left). At most every 5 s."""
        now = time.monotonic()
        if now - self._last_trim < 5.0:
            return
        self._last_trim = now
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass  # not glibc

    # -- messages out -----------------------------------------------------------------------------
    def _publish(self, topic: str, msg: dict) -> None:
        msg["seq"] = self.seq[topic]
        msg["wall_time"] = time.time()
        if msg.get("_arrival") is not None:
            msg["latency_ms"] = max(0.0, (msg["wall_time"] - msg.pop("_arrival")) * 1000.0)
        else:
            msg.pop("_arrival", None)
        try:
            self.pub.send_multipart([topic.encode(), P.dumps(msg)], flags=zmq.NOBLOCK)
        except zmq.Again:  # PUB does not block; be safe anyway
            return
        except zmq.ZMQError:
            if self.stopping.is_set():
                return
            raise
        self.seq[topic] += 1
        if topic == "match":  # one per hop: the latency statistics cover every hop
            self.last_latency = msg.get("latency_ms")
            self.lat.add(self.last_latency)

    def _publish_hop(self, res: HopResult, k: int | None = None) -> None:
        """``beat`` (when the hop has a tracker state) then ``match`` for one hop; ``k``: the k
        the hop was computed with (a ``set_k`` may land before it is published)."""
        st = float(res.stream_time)
        arrival = self.feeder.arrival_of_ring_pos(int(res.end_sample))
        c = res.counters
        self.last_counters = c
        self.last_stream_time = st
        self.last_signal = bool(res.signal)
        self.last_level_db = _level(res.level_db)
        if res.beat is not None:
            self.last_no_beat = bool(getattr(res.beat, "no_beat", False)) or not res.signal
        # hop index counting dropped hops: consecutive messages differ by 1 + drops in between
        hop = int(res.hop_index)
        timings = {str(k_): float(v) for k_, v in res.timings.items() if _num(v) is not None}
        for k_, v in timings.items():
            self.timings.setdefault(k_, collections.deque(maxlen=config.LATENCY_WINDOW)).append(v)
        # the hop's live bars first: the beat message numbers its forecast beats as the cues do
        self.cues.plan(res, st, arrival, getattr(self.source, "speed", None) or 1.0, self.matcher.library)
        beat = self._beat_msg(res, st, hop, arrival)
        if beat is not None:
            self._publish("beat", beat)
        self._publish("match", self._match_msg(res, st, hop, arrival, timings, self.k if k is None else k))
        if self.midi is not None and beat is not None:
            self.midi.update_from_beat(beat, getattr(self.source, "speed", None) or 1.0)
        if self.on_hop is not None:
            self.on_hop(res)

    @staticmethod
    def _header(topic, st, arrival) -> dict:
        return {"v": P.VERSION, "topic": topic, "seq": 0, "stream_time": st, "wall_time": 0.0,
                "latency_ms": 0.0, "_arrival": arrival if arrival is not None else time.time()}

    def _match_msg(self, res: HopResult, st, hop, arrival, timings, k: int) -> dict:
        m = self._header("match", st, arrival)
        matches = res.matches
        cues = self.cues  # planned for this hop (see the hop handler)
        out = {}
        for inst, items in matches.items():
            out[str(inst)] = [{"rank": r + 1, "stem_id": str(it.stem_id), "track_id": str(it.track_id),
                               "label": str(it.label), "category": str(it.category),
                               "offset": max(0.0, _num(it.offset) or 0.0), "score": _num(it.score) or 0.0,
                               **cues.fields(it)} for r, it in enumerate(items)]
        m.update({"hop": hop, "ready": bool(res.ready), "signal": bool(res.signal), "level_db": _level(res.level_db),
                  "k": int(k),
                  "instruments": list(matches.keys()) or list(self.instruments),
                  "matches": out, "timings_ms": timings})
        return m

    def _beat_msg(self, res: HopResult, st, hop, arrival) -> dict | None:
        b = res.beat
        if b is None:
            return None
        tempo = _num(b.tempo)
        if tempo is not None and tempo <= 0:
            tempo = None
        phase = _num(b.phase)
        if phase is not None:
            phase = phase % 1.0
        nb = [float(x) for x in np.asarray(b.next_beats, dtype=np.float64).reshape(-1) if np.isfinite(x)]
        act = np.clip(np.nan_to_num(np.asarray(res.activation, dtype=np.float64).reshape(-1)), 0, 1)
        conf = _num(b.confidence)
        signal = bool(res.signal)
        no_beat = bool(getattr(b, "no_beat", False)) or not signal
        down = _num(getattr(b, "next_downbeat", None))
        beat_in_bar, bar_phase = getattr(b, "beat_in_bar", None), _num(getattr(b, "bar_phase", None))
        if no_beat:  # silence, or the tracker's no-beat state: no tempo, no phase, no forecast, no bar
            tempo = phase = down = beat_in_bar = bar_phase = None
            nb = []
        if not signal:
            conf = 0.0
        planner = getattr(self, "cues", None)  # the hop's live bars (server/cues.py), planned already
        bars = None if planner is None or not tempo or planner.tempo is None else planner.bars
        numbers = [] if bars is None else bars.numbers(nb, 60.0 / tempo)
        speed = getattr(self.source, "speed", None) or 1.0
        base = arrival if arrival is not None else time.time()
        wall = lambda x: base + (x - st) / speed  # noqa: E731
        m = self._header("beat", st, arrival)
        m.update({
            "hop": hop, "signal": signal, "level_db": _level(res.hop_level_db),
            "window_level_db": _level(res.level_db), "no_beat": no_beat,
            "beat_presence": 0.0 if not signal else min(1.0, max(0.0, _num(getattr(b, "beat_presence", 1.0)) or 0.0)),
            "tempo": tempo, "phase": phase, "period_s": (60.0 / tempo) if tempo else None,
            "last_beat": _num(b.last_beat) if signal else None, "next_beats": nb,
            "next_beats_wall": [wall(x) for x in nb],
            "next_beats_number": numbers,
            "live_meter": int(planner.bars.meter) if planner is not None else BEATS_PER_BAR,
            "beats_in_hop": [] if no_beat else [float(x) for x in np.asarray(b.beats, dtype=np.float64).reshape(-1)],
            "confidence": None if conf is None else min(1.0, max(0.0, conf)),
            "meter": int(getattr(b, "meter", 4)),
            "meter_confidence": min(1.0, max(0.0, _num(getattr(b, "meter_confidence", 0.0)) or 0.0)),
            "beat_in_bar": None if beat_in_bar is None else int(beat_in_bar),
            "bar_phase": None if bar_phase is None else bar_phase % 1.0,
            "bar_confidence": min(1.0, max(0.0, _num(getattr(b, "bar_confidence", 0.0)) or 0.0)),
            "next_downbeat": down, "next_downbeat_wall": None if down is None else wall(down),
            "downbeats_in_hop": [] if no_beat else
            [float(x) for x in np.asarray(getattr(b, "downbeats", []), dtype=np.float64).reshape(-1)],
            "activation": [round(float(a), 5) for a in act], "activation_rate": 50.0,
            "activation_time": _num(res.activation_time),
        })
        return m

    # -- status -----------------------------------------------------------------------------------
    def library_info(self) -> dict:
        """The library in use: ``stems`` (distinct stems) and ``segments`` (8-s windows indexed)
        counted separately, ``tracks``, and the roots ``set_library`` may open."""
        lib = self.matcher.library
        stems = segments = 0
        tracks = None
        if lib is not None:
            segments = len(lib)
            stems = len(lib.stems)
            tracks = len({str(s.get("track_id", "")) for s in lib.stems})
        return {"path": self.library_path, "stems": int(stems), "segments": int(segments), "tracks": tracks,
                "roots": [str(r) for r in self.library_roots]}

    def status_dict(self) -> dict:
        c = self.last_counters
        st = self.source.info()
        midi = self.midi.info() if self.midi is not None else {
            "enabled": False, "port": None, "channel": config.MIDI_CHANNEL, "note": config.MIDI_NOTE,
            "clocks": 0, "notes": 0, "error": self.midi_error, "no_beat": config.MIDI_NO_BEAT, "running": False,
            "starts": 0, "stops": 0}
        inp = getattr(self.source, "health", None)
        inp = inp() if inp is not None else {}
        msg = {"v": P.VERSION, "topic": "status", "seq": 0, "stream_time": float(self.last_stream_time),
               "wall_time": 0.0, "latency_ms": self.last_latency, "state": self.state,
               "uptime_s": round(time.time() - self.t_start, 3), "backend": self.backend_name,
               "device": self.device, "input": st, "instruments": self.instruments, "k": self.k,
               "hop_ms": self.hop_ms, "restrict_category": self.restrict_category, "ranking": self.ranking,
               "streaming": bool(self.matcher.streaming),
               "library": {**self.library_info(), "audio_root": library_root(self.matcher.library)},
               "counters": {"hops": int(c.get("hops", 0)), "drops": int(c.get("drops", 0)),
                            "overruns": int(c.get("overruns", self.matcher.ring.overruns)),
                            "capture_overruns": int(self.source.capture.overruns),
                            "published": dict(self.seq), "ctl_requests": self.n_ctl,
                            "ctl_errors": self.n_ctl_err, "hop_errors": self.hop_errors,
                            "nonfinite": int(c.get("nonfinite", 0)), "restarts": int(c.get("restarts", 0)),
                            "stalls": self.stalls, "curve_denied": self.curve_denied, "busy": self.busy,
                            "input_stalls": int(inp.get("stalls", 0)), "input_reopens": int(inp.get("reopens", 0)),
                            "input_glitches": int(inp.get("glitches", 0))},
               "subscriptions": self.subscriptions,
               "signal": self.last_signal, "level_db": self.last_level_db, "no_beat": self.last_no_beat,
               "latency": self.lat.stats(),
               "timings_ms": {k: round(float(np.median(v)), 3) for k, v in list(self.timings.items()) if v},
               "midi": midi, "pub": self.pub_addr, "ctl": self.ctl_addr, "protocol": P.VERSION}
        return msg
