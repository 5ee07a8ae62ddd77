"""What the live tracker (:class:`engine.tracker.CausalBeatTracker`) reports after each chunk of
activation frames: tempo, phase, the beats just reported and the forecast of the next ones, the
bar (meter, beat in the bar, next downbeat), the no-beat state and the calibrated confidence.
Times are in seconds on the tracker's clock (``time_offset + frame / fps``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class BeatState:
    """The tracker's view after the last frame it processed.

    ``time``: time of that frame (s). ``tempo``: BPM. ``phase``: position in the current beat,
    [0, 1) (0 = on the beat). ``last_beat``: time of the latest beat (s) or None. ``next_beats``:
    predicted times of the next beats (s), ``(n_predict,)``. ``confidence``: calibrated, [0, 1]:
    about the fraction of beats reported at this confidence that are correct. ``beats``: beats
    reported in the chunk just processed (s); ``downbeats``: those of them on a bar's first beat.
    ``frames``: activation frames processed since reset. ``no_beat``: the no-beat state holds (no
    beats are reported, the forecast is not to be played); ``beat_presence``: the mass outside it.
    ``meter``: beats per bar of the likelier meter, ``meter_confidence`` its share.
    ``beat_in_bar``: the current beat's place in the bar (0 = downbeat); ``bar_phase``: position
    in the bar, [0, 1); ``next_downbeat``: predicted time of the next downbeat (s);
    ``bar_confidence``: share of the mass on this (meter, beat in bar).
    """

    time: float
    tempo: float
    phase: float
    last_beat: float | None
    next_beats: np.ndarray
    confidence: float
    beats: list = field(default_factory=list)
    frames: int = 0
    no_beat: bool = False
    beat_presence: float = 1.0
    meter: int = 4
    meter_confidence: float = 0.0
    beat_in_bar: int = 0
    bar_phase: float = 0.0
    next_downbeat: float | None = None
    bar_confidence: float = 0.0
    downbeats: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"time": self.time, "tempo": self.tempo, "phase": self.phase, "last_beat": self.last_beat,
                "next_beats": [float(b) for b in self.next_beats], "confidence": self.confidence,
                "beats": [float(b) for b in self.beats], "frames": self.frames, "no_beat": self.no_beat,
                "beat_presence": self.beat_presence, "meter": self.meter, "meter_confidence": self.meter_confidence,
                "beat_in_bar": self.beat_in_bar, "bar_phase": self.bar_phase, "next_downbeat": self.next_downbeat,
                "bar_confidence": self.bar_confidence, "downbeats": [float(b) for b in self.downbeats]}
