"""What one hop of the live matcher (:class:`engine.pipeline.Matcher`) yields and measures: the
:class:`HopResult`, the input level of the window and of the hop (:class:`LevelMeter`) and the
milliseconds per stage (:class:`Stages`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .beats import BeatState


@dataclass
class HopResult:
    """Everything one hop produced.

    ``stream_time``: s, ring clock at the hop's end (just after its last sample);
    ``end_sample``: the same in samples; ``hop_index``: hop number since reset (dropped hops
    included); ``ready``: False while the window is shorter than ``min_window_s`` (then no
    matches/beat); ``window_frames``: encoder input length T; ``matches``: {instrument: [Match]}
    best first; ``beat``: tracker state after this hop's activations (None before ready);
    ``activation``: the new 50 Hz activation values fed to the tracker (float32);
    ``activation_time``: time (s) of ``activation[0]``; ``timings``: ms per stage (read,
    frontend, keytempo, beatnet, encode, predict, search, beat_head, tracker, total); ``counters``: cumulative
    ``hops`` (computed), ``drops``, ``overruns`` (ring), ``nonfinite`` (samples zeroed),
    ``restarts`` (front-end restarts after stalls); ``level_db``: RMS level (dBFS) of the
    audio in the window; ``hop_level_db``: the same over this hop's newest samples; ``signal``:
    the window is louder than the matcher's ``signal_threshold_db`` -- without signal there are
    no matches (empty lists) and the beat tracker is fed zero activation (it reports silence).
    """

    stream_time: float
    end_sample: int
    hop_index: int
    ready: bool
    window_frames: int
    matches: dict
    beat: BeatState | None
    activation: np.ndarray
    activation_time: float | None
    timings: dict
    counters: dict = field(default_factory=dict)
    level_db: float = -120.0
    hop_level_db: float = -120.0
    signal: bool = False
    downbeat_activation: np.ndarray | None = None  # the beat network's, aligned with ``activation``; None: the head
    # (t, K) the beat network's tempo-class probabilities, aligned with ``activation`` (None: it has no
    # tempo output); not in ``to_dict``
    tempo_activation: np.ndarray | None = None

    def to_dict(self) -> dict:
        return {"stream_time": self.stream_time, "end_sample": self.end_sample, "hop_index": self.hop_index,
                "ready": self.ready, "window_frames": self.window_frames, "level_db": self.level_db,
                "hop_level_db": self.hop_level_db, "signal": self.signal,
                "matches": {k: [m.to_dict() for m in v] for k, v in self.matches.items()},
                "beat": None if self.beat is None else self.beat.to_dict(),
                "activation": [float(a) for a in self.activation], "activation_time": self.activation_time,
                "downbeat_activation": (None if self.downbeat_activation is None
                                        else [float(a) for a in self.downbeat_activation]),
                "timings": dict(self.timings), "counters": dict(self.counters)}


class LevelMeter:
    """(window level, hop level) in dBFS: one mean square per front-end hop (``hop`` samples,
    10 ms) for the window's ``frames``. Each 10-ms block's own mean is removed first, so a DC
    offset (a faulty interface, a stuck converter) is not taken for signal: it is silence to the
    model's front end too."""

    def __init__(self, frames: int, hop: int):
        self.W, self.hop = int(frames), int(hop)
        self.reset()

    def reset(self) -> None:
        self._ms = np.zeros(self.W, dtype=np.float64)
        self._ms_n = 0

    def __call__(self, x: np.ndarray, n_new: int) -> tuple[float, float]:
        """The levels after the ``n_new`` newest samples of ``x``."""
        h = self.hop
        new = x[len(x) - n_new:] if n_new <= len(x) else x
        k = len(new) // h
        if k:
            blocks = new[-k * h:].reshape(k, h).astype(np.float64)
            blocks = blocks - blocks.mean(axis=1, keepdims=True)
            ms = np.einsum("ij,ij->i", blocks, blocks) / h
            if k >= self.W:
                self._ms[:] = ms[-self.W:]
            else:
                self._ms[:-k] = self._ms[k:]
                self._ms[-k:] = ms
            self._ms_n = min(self.W, self._ms_n + k)
        hop_ms = float(np.var(new.astype(np.float64))) if len(new) else 0.0
        win = float(self._ms[self.W - self._ms_n:].mean()) if self._ms_n else 0.0
        return float(10.0 * np.log10(win + 1e-12)), float(10.0 * np.log10(hop_ms + 1e-12))


class Stages:
    """Milliseconds per stage of one hop, in :attr:`ms` (the hop's ``timings``): ``with
    stages("encode"): ...`` adds the block's wall time to ``ms["encode"]`` (a stage timed twice
    in a hop, e.g. the streaming path's share and the rest, is the sum). Stages do not nest."""

    __slots__ = ("ms", "_name", "_t0")

    def __init__(self):
        self.ms: dict[str, float] = {}

    def __call__(self, name: str) -> "Stages":
        self._name = name
        return self

    def __enter__(self) -> "Stages":
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> bool:
        self.ms[self._name] = self.ms.get(self._name, 0.0) + (time.perf_counter() - self._t0) * 1e3
        return False
