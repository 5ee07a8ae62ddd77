"""``--osc HOST:PORT``: the server's stream as OSC messages over UDP (python-osc), for DAWs,
samplers and controllers. The address space is documented in docs/protocol.md (*OSC*) and
listed in :data:`ADDRESSES`; unknown values are sent as -1 (times, positions, numbers) or 0
(tempos, ratios), never as OSC nil, so any OSC 1.0 receiver reads every message. Arguments added
later come last, so a receiver that reads only the first ones keeps working.

Per ``beat`` message: ``/stemjepa/beat`` (with the no-beat flag, the meter, the beat in the bar
and the time to the next downbeat) and, with a tempo, ``/stemjepa/tempo``; per ``match``
message: ``/stemjepa/level`` and one ``/stemjepa/match`` per item; per ``status``:
``/stemjepa/status``. Scheduled on the wall clock (:mod:`server.bridge`): ``/stemjepa/tick`` at
each live beat (with its place in the tracker's bar) and ``/stemjepa/play`` at an instrument's new
top match's cue -- a receiver that starts the file there, at rate ``stretch``, is on the beat.
"""
from __future__ import annotations

import time

from .bridge import BeatClock, CueWatcher, Scheduler
from .cues import BAR_CONFIDENCE

PREFIX = "/stemjepa"
#: address -> argument types (OSC type tags) and names, in order
ADDRESSES = {
    "/stemjepa/beat": ("fffffiiiiif", "tempo phase confidence next_in_s stream_time signal seq no_beat meter "
                       "beat_in_bar next_downbeat_in_s"),
    "/stemjepa/tempo": ("f", "bpm"),
    "/stemjepa/tick": ("iiffi", "beat beat_in_bar tempo stream_time meter"),
    "/stemjepa/match": ("sisfsffffffifi",
                        "instrument rank stem_id score file offset length stem_tempo stretch cue_stem_pos "
                        "cue_in_s cue_beat stream_time seq"),
    "/stemjepa/play": ("ssffsi", "instrument file stem_pos stretch stem_id beat"),
    "/stemjepa/level": ("fi", "level_db signal"),
    "/stemjepa/status": ("siiffsiiii", "state hops drops latency_p50_ms level_db audio_root seq protocol signal "
                         "no_beat"),
}


def _f(x, none=-1.0) -> float:
    return none if x is None else float(x)


class OscSink:
    def __init__(self, host: str, port: int, scheduler: Scheduler, *, beats_per_bar: int = 4):
        try:
            from pythonosc.udp_client import SimpleUDPClient
        except ImportError as e:
            raise ImportError("--osc needs python-osc: pip install -e '.[osc]'") from e
        self.client = SimpleUDPClient(host, int(port))
        self.beats_per_bar = int(beats_per_bar)  # the meter of the ticks until a beat message gives one
        self.sent = 0
        self.clock = BeatClock(scheduler, self._tick)
        self.cues = CueWatcher(scheduler, self._play)

    def send(self, address: str, *args) -> None:
        types = ADDRESSES[address][0]
        assert len(args) == len(types), (address, args)
        self.client.send_message(address, [int(a) if t == "i" else float(a) if t == "f" else str(a)
                                           for t, a in zip(types, args)])
        self.sent += 1

    def handle(self, topic: str, m: dict) -> None:
        now = time.time()
        if topic == "beat":
            nxt, down = m.get("next_beats_wall") or [], m.get("next_downbeat_wall")
            bib = m.get("beat_in_bar")
            if m.get("live_meter"):  # the bar the cues and beat numbers follow (server/cues.py): the ticks count in it
                self.beats_per_bar = int(m["live_meter"])
            elif m.get("meter") and bib is not None and (m.get("bar_confidence") or 0.0) >= BAR_CONFIDENCE:
                self.beats_per_bar = int(m["meter"])  # an older server: the same rule, here
            self.send(f"{PREFIX}/beat", _f(m.get("tempo"), 0.0), _f(m.get("phase")), _f(m.get("confidence"), 0.0),
                      nxt[0] - now if nxt else -1.0, m["stream_time"], int(bool(m.get("signal"))), m["seq"],
                      int(bool(m.get("no_beat"))), int(m.get("meter") or self.beats_per_bar),
                      -1 if bib is None else int(bib), -1.0 if down is None else down - now)
            if m.get("tempo"):
                self.send(f"{PREFIX}/tempo", m["tempo"])
            self.clock.on_beat_msg(m)
            self.cues.on_beat_msg(m)
        elif topic == "match":
            self.clock.on_match(m)
            self.send(f"{PREFIX}/level", m["level_db"], int(bool(m.get("signal"))))
            for inst, items in (m.get("matches") or {}).items():
                for it in items:
                    cue = it.get("cue") or {}
                    self.send(f"{PREFIX}/match", inst, it["rank"], it["stem_id"], it["score"], it.get("file") or "",
                              it["offset"], _f(it.get("length")), _f(it.get("stem_tempo"), 0.0),
                              _f(it.get("stretch"), 0.0), _f(cue.get("stem_pos")),
                              cue["wall_time"] - now if cue else -1.0, cue.get("beat", -1), m["stream_time"], m["seq"])
            self.cues.on_match(m)
        elif topic == "status":
            lib = m.get("library") or {}
            self.send(f"{PREFIX}/status", m["state"], m["counters"]["hops"], m["counters"]["drops"],
                      _f((m.get("latency") or {}).get("p50")), _f(m.get("level_db"), -200.0),
                      lib.get("audio_root") or "", m["seq"], m["v"], int(bool(m.get("signal"))),
                      int(bool(m.get("no_beat"))))

    def _tick(self, n: int, wall: float, stream_time: float, tempo: float) -> None:
        self.send(f"{PREFIX}/tick", n, n % self.beats_per_bar, tempo, stream_time, self.beats_per_bar)

    def _play(self, inst: str, it: dict) -> None:
        self.send(f"{PREFIX}/play", inst, it["file"], it["cue"]["stem_pos"], _f(it.get("stretch"), 1.0),
                  it["stem_id"], it["cue"]["beat"])

    def close(self) -> None:
        try:
            self.client._sock.close()
        except Exception:
            pass
