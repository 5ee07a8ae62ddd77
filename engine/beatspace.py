"""The beat-pointer state space and the offline Viterbi decoder of a 50 Hz beat activation.

The offline decoder and the live tracker share one hidden state space (a "beat pointer", after the bar-pointer models of
Whiteley et al. and Krebs et al.): a state is a pair *(beat interval tau in frames, phase phi)*
with ``phi in [0, tau)``. Every frame the phase advances by one; when it wraps
(``phi = tau - 1 -> 0``) the interval may change to ``tau'`` with probability proportional to
``exp(-lambda_tempo * |tau'/tau - 1|)``. The first ``max(1, tau // lambda_obs)`` phases of every
interval form the *beat region*; observations are scored as

* beat region:      ``P(a | beat) = a``
* elsewhere:        ``P(a | no beat) = (1 - a) / (lambda_obs - 1)``

where ``a`` in ``[0, 1]`` is the activation. Intervals are whole frames from
``round(60 fps / max_bpm)`` to ``round(60 fps / min_bpm)`` (55-215 BPM at 50 fps: 14..55
frames, 1 449 states). Defaults ``lambda_tempo = 30``, ``lambda_obs = 8`` were chosen on
synthetic activations at 50 fps, where whole-frame intervals are coarse (4 % apart at 120 BPM):
a stiffer tempo prior (100, as used at 100 fps) made jittered 128-BPM input decode at half tempo.

* :func:`offline_beats` -- Viterbi over the whole activation, then one beat per pass through the
  beat region, placed on the strongest activation frame inside the region.
* :class:`engine.tracker.CausalBeatTracker` -- the live tracker: the forward algorithm over
  *bar*-pointer states built from this state space (meter, beat in the bar), with a no-beat state.

Both are imported from :mod:`engine.beats`.

Times are in seconds: activation frame ``i`` is at ``time_offset + i / fps``.
"""
from __future__ import annotations

import numpy as np


class BeatStateSpace:
    """States ``(interval, phase)`` laid out interval by interval (phase 0 first)."""

    def __init__(self, fps: float = 50.0, min_bpm: float = 55.0, max_bpm: float = 215.0,
                 lambda_tempo: float = 30.0, lambda_obs: float = 8.0):
        if not (0 < min_bpm < max_bpm):
            raise ValueError(f"need 0 < min_bpm < max_bpm, got {min_bpm}, {max_bpm}")
        if lambda_obs <= 1:
            raise ValueError("lambda_obs must be > 1")
        self.fps = float(fps)
        lo = max(2, int(np.floor(60.0 * fps / max_bpm + 0.5)))
        hi = max(lo, int(np.floor(60.0 * fps / min_bpm + 0.5)))
        self.intervals = np.arange(lo, hi + 1)  # (K,) frames per beat
        k = len(self.intervals)
        self.first = np.concatenate([[0], np.cumsum(self.intervals)[:-1]])  # (K,) index of phase 0
        self.last = self.first + self.intervals - 1  # (K,) index of phase tau-1
        self.n_states = int(self.intervals.sum())
        self.state_tempo = np.repeat(np.arange(k), self.intervals)  # (S,) interval index
        self.state_phase = np.arange(self.n_states) - self.first[self.state_tempo]  # (S,) frames
        self.state_interval = self.intervals[self.state_tempo]  # (S,)
        self.state_frac = self.state_phase / self.state_interval  # (S,) phase in [0, 1)
        width = np.maximum(1, self.intervals // int(lambda_obs))  # beat region per interval
        self.beat_mask = self.state_phase < width[self.state_tempo]  # (S,) bool
        self.lambda_obs = float(lambda_obs)
        # interval transition at a wrap: rows = from, cols = to, each row sums to 1
        ratio = self.intervals[None, :] / self.intervals[:, None]
        a = np.exp(-lambda_tempo * np.abs(ratio - 1.0))
        a[a < 1e-12] = 0.0
        self.trans = a / a.sum(axis=1, keepdims=True)  # (K, K)
        with np.errstate(divide="ignore"):
            self.log_trans = np.log(self.trans)

    def observation(self, act: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(T,)`` activations -> (P(a|beat), P(a|no beat)), each ``(T,)`` float64."""
        a = np.clip(np.asarray(act, dtype=np.float64), 1e-6, 1.0 - 1e-6)
        return a, (1.0 - a) / (self.lambda_obs - 1.0)


def check_activation(act) -> np.ndarray:
    a = np.asarray(act, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(a)):
        a = np.where(np.isfinite(a), a, 0.0)
    return np.clip(a, 0.0, 1.0)


def offline_beats(activation: np.ndarray, fps: float = 50.0, *, min_bpm: float = 55.0,
                  max_bpm: float = 215.0, lambda_tempo: float = 30.0, lambda_obs: float = 8.0,
                  time_offset: float = 0.0, space: BeatStateSpace | None = None) -> np.ndarray:
    """Viterbi-decode beat times from an activation.

    ``activation``: ``(T,)`` beat probabilities in [0, 1] at ``fps`` Hz (non-finite values count
    as 0). Returns beat times in seconds, ``(n_beats,)`` float64, increasing.
    """
    act = check_activation(activation)
    n = len(act)
    if n < 2:
        return np.zeros(0)
    ss = space or BeatStateSpace(fps, min_bpm, max_bpm, lambda_tempo, lambda_obs)
    pb, pn = ss.observation(act)
    lb, ln = np.log(pb), np.log(pn)
    beat = ss.beat_mask
    k = len(ss.intervals)
    back = np.empty((n, k), dtype=np.int16)  # best previous interval index at each wrap
    delta = np.full(ss.n_states, -np.log(ss.n_states)) + np.where(beat, lb[0], ln[0])
    new = np.empty_like(delta)
    for t in range(1, n):
        cand = delta[ss.last][:, None] + ss.log_trans  # (K from, K to)
        best = np.argmax(cand, axis=0)
        back[t] = best
        new[1:] = delta[:-1]
        new[ss.first] = cand[best, np.arange(k)]
        new += ln[t]
        new[beat] += lb[t] - ln[t]
        delta, new = new, delta
    # backtrack
    path = np.empty(n, dtype=np.int64)
    s = int(np.argmax(delta))
    path[-1] = s
    for t in range(n - 1, 0, -1):
        if ss.state_phase[s] > 0:
            s -= 1
        else:
            s = int(ss.last[back[t, ss.state_tempo[s]]])
        path[t - 1] = s
    in_beat = beat[path]
    frames = []
    t = 0
    while t < n:
        if in_beat[t]:
            u = t
            while u + 1 < n and in_beat[u + 1] and ss.state_phase[path[u + 1]] > 0:
                u += 1
            frames.append(t + int(np.argmax(act[t:u + 1])))
            t = u + 1
        else:
            t += 1
    return time_offset + np.asarray(frames, dtype=np.float64) / ss.fps
