"""Beat decoding from a 50 Hz beat activation: offline Viterbi and a causal forward tracker.

Both decoders share one hidden state space (a "beat pointer", after the bar-pointer models of
Whiteley et al. and Krebs et al.): a state is a pair *(beat interval tau in frames, phase phi)*
with ``phi in [0, tau)``. Every frame the phase advances by one; when it wraps
(``phi = tau - 1 -> 0``) the interval may change to ``tau'`` with probability proportional to
``exp(-lambda_tempo * |tau'/tau - 1|)``. The first ``max(1, tau // lambda_obs)`` phases of every
interval form the *beat region*; observations are scored as

* beat region:      ``P(a | beat) = a``
* elsewhere:        ``P(a | no beat) = (1 - a) / (lambda_obs - 1)``

where ``a`` in ``[0, 1]`` is the activation. Intervals are whole frames from
``round(60 fps / max_bpm)`` to ``round(60 fps / min_bpm)`` (55-215 BPM at 50 fps: 14..55
frames, 1 410 states). Defaults ``lambda_tempo = 30``, ``lambda_obs = 8`` were chosen on
synthetic activations at 50 fps, where whole-frame intervals are coarse (4 % apart at 120 BPM):
a stiffer tempo prior (100, as used at 100 fps) made jittered 128-BPM input decode at half tempo.

* :func:`offline_beats` -- Viterbi over the whole activation, then one beat per pass through the
  beat region, placed on the strongest activation frame inside the region.
* :class:`CausalBeatTracker` -- the normalised forward algorithm (filtering), frame by frame,
  so feeding an activation whole, in chunks or frame by frame gives bit-identical results.
  A beat is detected when the most probable state's phase wraps (with a refractory period of
  half a beat) and reported once the beat region has passed (``tau // lambda_obs`` frames, ~80 ms
  at 94 BPM), placed on the strongest activation frame of that region -- as the offline decoder
  does. Without that wait the filtered phase wraps on the rising edge of the activation and beats
  came out ~50 ms early. Tempo, phase, next beats and a confidence come from the filtered posterior.

Times are in seconds: activation frame ``i`` is at ``time_offset + i / fps``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

_TINY = 1e-12
_HIST = 64  # activation frames the causal tracker keeps (1.28 s at 50 fps)


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


def _check_activation(act) -> np.ndarray:
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
    act = _check_activation(activation)
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


@dataclass
class BeatState:
    """The tracker's view after the last frame it processed.

    ``time``: time of that frame (s). ``tempo``: BPM. ``phase``: position in the current beat,
    [0, 1) (0 = on the beat). ``last_beat``: time of the latest beat (s) or None. ``next_beats``:
    predicted times of the next beats (s), ``(n_predict,)``. ``confidence``: posterior mass near
    the best tempo and phase, [0, 1]. ``beats``: beats detected in the chunk just processed (s).
    ``frames``: activation frames processed since reset.
    """

    time: float
    tempo: float
    phase: float
    last_beat: float | None
    next_beats: np.ndarray
    confidence: float
    beats: list = field(default_factory=list)
    frames: int = 0

    def to_dict(self) -> dict:
        return {"time": self.time, "tempo": self.tempo, "phase": self.phase, "last_beat": self.last_beat,
                "next_beats": [float(b) for b in self.next_beats], "confidence": self.confidence,
                "beats": [float(b) for b in self.beats], "frames": self.frames}


class CausalBeatTracker:
    """Causal beat tracker: forward algorithm over :class:`BeatStateSpace`, one frame at a time.

    ``process(chunk (t,)) -> BeatState``; chunking never changes the result. ``time_offset`` is
    the time (s) of the first activation frame after a reset.
    """

    def __init__(self, fps: float = 50.0, *, min_bpm: float = 55.0, max_bpm: float = 215.0,
                 lambda_tempo: float = 30.0, lambda_obs: float = 8.0, n_predict: int = 4,
                 time_offset: float = 0.0, refractory: float = 0.5):
        self.ss = BeatStateSpace(fps, min_bpm, max_bpm, lambda_tempo, lambda_obs)
        self.fps = float(fps)
        self.n_predict = int(n_predict)
        self.refractory = float(refractory)
        self._k = np.arange(len(self.ss.intervals))
        self.reset(time_offset)

    def reset(self, time_offset: float | None = None) -> None:
        if time_offset is not None:
            self.time_offset = float(time_offset)
        self.alpha = np.full(self.ss.n_states, 1.0 / self.ss.n_states)
        self._new = np.empty_like(self.alpha)
        self.frame = 0  # frames processed
        self._prev_frac = None
        self._last_beat_frame: float | None = None
        self._map = 0
        self._hist = np.zeros(_HIST, dtype=np.float64)  # recent activations, indexed frame % _HIST
        self._pending: tuple[float, int] | None = None  # (detected beat frame, frame to report at)

    def _step(self, a: float) -> float | None:
        """Advance one frame; returns the detected beat's frame index or None."""
        ss = self.ss
        al, new = self.alpha, self._new
        if self.frame > 0:
            new[1:] = al[:-1]
            new[ss.first] = al[ss.last] @ ss.trans
        else:
            new[:] = al
        a = min(max(a, 1e-6), 1.0 - 1e-6)
        self._hist[self.frame % _HIST] = a
        pn = (1.0 - a) / (ss.lambda_obs - 1.0)
        new *= pn
        new[ss.beat_mask] *= a / pn
        z = new.sum()
        if not z > 0 or not np.isfinite(z):
            new[:] = 1.0 / ss.n_states
        else:
            new /= z
        self.alpha, self._new = new, al
        s = int(np.argmax(new))
        self._map = s
        frac = float(ss.state_frac[s])
        t = self.frame
        beat = None
        prev = self._prev_frac
        if prev is not None and frac < prev and (frac - prev) % 1.0 < 0.5:  # wrapped forward
            tau = float(ss.state_interval[s])
            cand = t - float(ss.state_phase[s])
            if self._pending is None and (self._last_beat_frame is None
                                          or cand - self._last_beat_frame >= self.refractory * tau):
                region = max(1, int(tau) // int(ss.lambda_obs))
                self._pending = (cand, int(np.ceil(cand)) + region)
        if self._pending is not None and t >= self._pending[1]:
            # place the beat on the strongest activation of its region (as offline), now that it is past
            cand, end = self._pending
            lo = max(int(np.floor(cand)) - 1, t - _HIST + 1, 0)
            frames = np.arange(lo, end + 1)
            beat = float(frames[int(np.argmax(self._hist[frames % _HIST]))])
            self._last_beat_frame = beat
            self._pending = None
        self._prev_frac = frac
        self.frame += 1
        return beat

    def _tempo_interval(self) -> tuple[float, int]:
        """Refined beat interval (frames) around the best interval, and its index."""
        ss = self.ss
        k = int(ss.state_tempo[self._map])
        pk = np.bincount(ss.state_tempo, weights=self.alpha, minlength=len(ss.intervals))
        lo, hi = max(0, k - 2), min(len(pk), k + 3)
        w = pk[lo:hi]
        iv = float((w * ss.intervals[lo:hi]).sum() / w.sum()) if w.sum() > 0 else float(ss.intervals[k])
        return iv, k

    def state(self, beats: list | None = None) -> BeatState:
        ss = self.ss
        s = self._map
        iv, k = self._tempo_interval()
        phase_frames = float(ss.state_phase[s])
        tau = float(ss.state_interval[s])
        frac = phase_frames / tau
        now = self.frame - 1  # frame index of the last processed frame
        first_next = now + (tau - phase_frames)
        nxt = self.time_offset + (first_next + iv * np.arange(self.n_predict)) / self.fps
        # confidence: posterior mass within +-2 interval steps and +-0.1 beat of the best state
        d = np.abs(ss.state_frac - frac)
        d = np.minimum(d, 1.0 - d)
        near = (np.abs(ss.state_tempo - k) <= 2) & (d <= 0.1)
        conf = float(self.alpha[near].sum())
        last = None if self._last_beat_frame is None else self.time_offset + self._last_beat_frame / self.fps
        return BeatState(time=self.time_offset + max(now, 0) / self.fps, tempo=60.0 * self.fps / iv, phase=frac,
                         last_beat=last, next_beats=nxt, confidence=min(1.0, conf), beats=list(beats or []),
                         frames=self.frame)

    def process(self, act_chunk: np.ndarray) -> BeatState:
        """Feed ``(t,)`` activations (values outside [0, 1] clipped, non-finite -> 0); returns the
        state after the last one, with ``beats`` = beat times (s) detected in this chunk."""
        act = _check_activation(act_chunk)
        beats = []
        for a in act.tolist():
            b = self._step(a)
            if b is not None:
                beats.append(self.time_offset + b / self.fps)
        return self.state(beats)

    def run(self, activation: np.ndarray) -> np.ndarray:
        """Reset, process a whole activation, return every detected beat time (s)."""
        self.reset()
        return np.asarray(self.process(activation).beats, dtype=np.float64)
