"""Playable matches: where a match's audio is, its own beat grid, and when to start it.

The server adds these fields to every ``match`` item (docs/protocol.md, *Playable matches*):

* ``path`` -- the audio file relative to ``status.library.audio_root``; ``file`` -- the same,
  absolute; ``length`` -- seconds of the matched segment (``window_s``, less at a stem's end);
* ``stem_tempo`` and ``grid`` -- the stem's own tempo and constant-tempo beat grid, estimated
  when the library was built (:mod:`engine.stemgrid`), null for a stem with no steady beat;
* ``stretch`` -- the playback rate that brings the stem to the live tempo, ``live / stem``
  folded by powers of two into [0.707, 1.414) (a 60-BPM stem under 120 BPM plays at rate 1, one
  of its beats to two live beats); null while either tempo is unknown;
* ``cue`` -- ``{stem_pos, stream_time, wall_time, beat}``: start the stem at ``stem_pos`` (s, the
  first downbeat of its grid at or after the segment's offset; the offset itself without a grid)
  when the stream reaches ``stream_time`` -- the next live downbeat at least :data:`LEAD_S` ahead
  -- i.e. at unix time ``wall_time``, playing at rate ``stretch``; then the stem's beats fall on
  the live beats. ``beat`` is that downbeat's live beat number. Null while the tracker has no
  tempo (silence, no beat, the first seconds).

Live downbeats: the planner numbers the beats it is told about -- beat 0 is the first beat after
the tempo locked, each later detected beat gets the number ``round((t - last) / period)`` more than
the last one; a forecast beat whose time has passed by the next hop counts as a beat too (the
clients ticked it), so that a tempo change of an octave never gives two beats one number -- and
the bars are the tracker's own: each hop, the number of the tracker's next downbeat
(``BeatState.next_downbeat``, one of its forecast beats) is made a multiple of its ``meter`` by
moving the numbering forward (never back) when it is not, so a downbeat is a beat whose number is
divisible by the meter -- every 4th beat in 4/4, every 3rd in 3/4 -- and every client
(OSC ticks, Link, the live page) sees the tracker's bars. Until the tracker has a bar (its first
reported beat, a ``bar_confidence`` of :data:`BAR_CONFIDENCE`; a state without ``next_downbeat``)
and whenever it is less sure, the beats are counted on in bars of the last meter followed,
:data:`BEATS_PER_BAR` at first -- so with the beat head, which hears no downbeats, in bars of 4
from the first beat. While the tracker hears no beat (``no_beat``) there
is no tempo for the cues: ``cue`` and ``stretch`` are null, as ``beat.tempo`` is. A Link session
that leads (``--link-mode lead``) takes the bars over (:meth:`LiveBars.session_bars`).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from engine.stemgrid import Grid, fold_ratio

if TYPE_CHECKING:
    from engine.library import Match
    from engine.pipeline import HopResult

BEATS_PER_BAR = 4
LEAD_S = 0.15  # a cue is never sooner than this after the hop's stream time (s)
#: the tracker's bar is followed from this ``bar_confidence`` on (it starts near 0.3 on the demo,
#: where the meter still flips, and stays near 1 / (2 meter) without a downbeat activation)
BAR_CONFIDENCE = 0.5


def finite(x) -> float | None:
    """``x`` as a finite float, or None (None, not a number, NaN or infinite)."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def tracker_bar(b) -> tuple[int, float] | None:
    """``(meter, next downbeat in stream s)`` of a tracker state, or None while it has no bar: no
    state, the no-beat state, no beat reported yet, no finite ``next_downbeat``, a
    ``bar_confidence`` under :data:`BAR_CONFIDENCE`."""
    if b is None or getattr(b, "no_beat", False) or getattr(b, "last_beat", None) is None:
        return None
    if (finite(getattr(b, "bar_confidence", None)) or 0.0) < BAR_CONFIDENCE:
        return None
    down, meter = finite(getattr(b, "next_downbeat", None)), getattr(b, "meter", None)
    try:
        meter = int(meter)
    except (TypeError, ValueError):
        return None
    return None if down is None or meter < 2 else (meter, down)


class LiveBars:
    """Numbers the tracker's beats and finds the next live downbeat (see the module text).
    ``meter``: beats per bar of the numbering now; ``realigned``: how often the tracker's bar moved
    the numbering."""

    def __init__(self, beats_per_bar: int = BEATS_PER_BAR):
        self.beats_per_bar = int(beats_per_bar)  # the bars before the tracker has one
        self.session_meter: int | None = None  # set by session_bars(): the tracker's bars are not followed
        self.reset()

    def reset(self) -> None:
        self.last_beat: float | None = None  # stream s of the latest numbered beat
        self.last_number = -1
        self.last_st = -math.inf
        self.meter = self.session_meter or self.beats_per_bar
        self.realigned = 0
        self.forecast: list[tuple[float, int]] = []  # (stream s, number) of the previous hop's forecast beats

    def session_bars(self, meter: int) -> None:
        """Bars of ``meter`` beats that someone else numbers (a leading Link session moves
        :attr:`last_number` onto its own beats): the tracker's bar is no longer followed."""
        self.session_meter = self.meter = max(1, int(meter))

    def renumber(self, delta: int) -> None:
        """Move the numbering by ``delta`` beats (a leading Link session's beat numbers)."""
        if self.last_beat is not None:
            self.last_number += int(delta)
            self.forecast = [(t, n + int(delta)) for t, n in self.forecast]

    def number_of(self, t: float, period: float) -> int:
        """The number of the beat at stream time ``t`` (a forecast beat, after the latest one)."""
        return self.last_number + max(0, int(round((t - self.last_beat) / period)))

    def numbers(self, next_beats, period: float) -> list[int]:
        """The numbers of the forecast beats (stream s, ascending): the first one's
        :meth:`number_of`, but at least one more than the latest beat's when it is later, and one
        more for each next one -- one number per beat, never one twice."""
        if self.last_beat is None or not len(next_beats):
            return []
        t0 = float(next_beats[0])
        n0 = self.number_of(t0, period)
        if t0 > self.last_beat:
            n0 = max(n0, self.last_number + 1)
        return [n0 + j for j in range(len(next_beats))]

    def update(self, st: float, tempo: float | None, detected, next_beats, bar=None) -> None:
        """One hop: ``detected`` beats (stream s) of this hop, the tracker's forecast and its bar,
        ``(meter, next downbeat)`` (:func:`tracker_bar`; None: it has none)."""
        if st < self.last_st:  # the stream restarted (reset): new bars
            self.reset()
        self.last_st = st
        passed = [(t, n) for t, n in self.forecast if t <= st and n > self.last_number]
        if passed:  # announced beats whose time came: the clients ticked them with these numbers
            self.last_beat, self.last_number = passed[-1]
        self.forecast = []
        if not tempo:
            return
        period = 60.0 / tempo
        nb = [float(t) for t in next_beats if finite(t) is not None]
        for t in sorted(float(x) for x in detected):
            if self.last_beat is None:
                self.last_beat, self.last_number = t, 0
            elif t > self.last_beat + 0.5 * period:
                self.last_number += max(1, int(round((t - self.last_beat) / period)))
                self.last_beat = t
        if self.last_beat is None and len(next_beats):  # locked, nothing detected yet: number the forecast
            self.last_beat, self.last_number = float(next_beats[0]) - period, -1
        if bar is not None and self.session_meter is None and self.last_beat is not None:
            meter, down = bar
            near = min(range(len(nb)), key=lambda j: abs(nb[j] - down)) if nb else None
            n = self.numbers(nb, period)[near] if near is not None and abs(nb[near] - down) < 0.5 * period \
                else self.number_of(down, period)
            shift = -n % meter
            if shift:  # the tracker's downbeat is not a multiple of its meter: renumber, forward
                self.last_number += shift
                self.realigned += 1
            self.meter = meter
        self.forecast = [(t, n) for t, n in zip(nb, self.numbers(nb, period)) if t > self.last_beat]

    def next_downbeat(self, st: float, tempo: float | None, next_beats) -> tuple[float, int] | None:
        """(stream s, beat number) of the first downbeat at or after ``st + LEAD_S``."""
        if not tempo or self.last_beat is None:
            return None
        period = 60.0 / tempo
        nb = [float(x) for x in next_beats if finite(x) is not None]
        anchor = nb[0] if nb else self.last_beat
        n0 = self.numbers(nb, period)[0] if nb else self.last_number
        j = 0
        while True:
            n = n0 + j
            t = nb[j] if j < len(nb) else anchor + j * period
            if n % self.meter == 0 and t >= st + LEAD_S:
                return t, n
            j += 1
            if j > 4 * self.meter + len(nb):
                return None


class CuePlanner:
    """Per hop: :meth:`plan` reads the hop's beat state, then :meth:`fields` gives each match
    item's playable fields."""

    def __init__(self, beats_per_bar: int = BEATS_PER_BAR):
        self.bars = LiveBars(beats_per_bar)
        self.library = None
        self.tempo = None
        self.downbeat = None
        self.st = 0.0
        self.wall0 = 0.0
        self.speed = 1.0

    def plan(self, res: HopResult, st: float, arrival: float | None, speed: float | None, library) -> "CuePlanner":
        b = res.beat  # None before the window is ready
        beating = bool(res.signal) and not (b is not None and getattr(b, "no_beat", False))
        tempo = None if b is None else finite(b.tempo)
        tempo = tempo if (tempo and tempo > 0 and beating) else None
        detected = [] if b is None else [float(x) for x in np.asarray(b.beats, dtype=np.float64).reshape(-1)]
        nb = [] if b is None or not beating else \
            [float(x) for x in np.asarray(b.next_beats, dtype=np.float64).reshape(-1)]
        self.bars.update(st, tempo, detected, nb, tracker_bar(b) if tempo else None)
        self.tempo = tempo
        self.downbeat = self.bars.next_downbeat(st, tempo, nb)
        self.st = st
        self.wall0 = arrival if arrival is not None else 0.0
        self.speed = speed or 1.0
        self.library = library
        return self

    def fields(self, item: Match) -> dict:
        """The playable fields of one match item (all present; null where unknown)."""
        out = {"path": None, "file": None, "length": None, "stem_tempo": None, "grid": None, "stretch": None,
               "cue": None}
        lib = self.library
        stem = lib.stem_by_id(str(item.stem_id)) if hasattr(lib, "stem_by_id") else None
        offset = max(0.0, finite(item.offset) or 0.0)
        grid = None
        if stem is not None:
            f = lib.stem_file(stem)
            root = lib.audio_root
            out["file"] = None if f is None else f.as_posix()
            out["path"] = None if f is None else (f.relative_to(root).as_posix() if root is not None and
                                                  f.is_relative_to(root) else f.as_posix())
            out["length"] = round(lib.segment_length(stem, offset), 4)
            grid = Grid.from_dict(stem.get("grid"))
        if grid is not None:
            out["stem_tempo"] = round(grid.tempo, 4)
            out["grid"] = {"tempo": round(grid.tempo, 4), "period_s": round(grid.period, 6),
                           "first_beat": round(grid.first_beat, 5), "n_beats": grid.n_beats,
                           "first_downbeat": round(grid.first_downbeat, 5), "beats_per_bar": grid.beats_per_bar,
                           "confidence": round(grid.confidence, 4), "scope": grid.scope}
            if self.tempo:
                out["stretch"] = round(fold_ratio(self.tempo / grid.tempo), 6)
        if self.downbeat is not None and stem is not None:
            t, n = self.downbeat
            pos = offset
            if grid is not None:
                end = offset + (out["length"] or 0.0)
                d = grid.next_downbeat(offset)
                if d is None or d >= end:  # no downbeat inside the segment: its first beat
                    bs = grid.beats_between(offset, end)
                    d = float(bs[0]) if len(bs) else None
                pos = offset if d is None else d
            out["cue"] = {"stem_pos": round(pos, 5), "stream_time": round(t, 5),
                          "wall_time": self.wall0 + (t - self.st) / self.speed, "beat": int(n)}
        return out


def library_root(library) -> str | None:
    """``status.library.audio_root``: the absolute folder match ``path`` entries are relative to."""
    root = getattr(library, "audio_root", None)
    return None if root is None else root.as_posix()
