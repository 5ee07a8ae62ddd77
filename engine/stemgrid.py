"""A stem's own tempo and beat grid, estimated offline when the library is built.

Library stems are mostly rendered or recorded to a steady tempo, so the grid is a **constant
tempo grid** fitted to the whole stem (or, for the dataset layout, to the mix of all stems of its
track: stems of one song share one grid, and a pad or a held chord has too few onsets of its own):

1. onset strength: spectral flux of a log-magnitude STFT (16 kHz, 512-point Hann window, 5 ms
   hop, 200 frames/s), half-wave rectified, summed over 30 Hz-8 kHz, minus its 0.5-s moving mean;
   frame ``i`` is placed at the centre of its window; a low-band copy (< 250 Hz) is kept for
   downbeats;
2. tempo: autocorrelation of the onset strength over lags of ``min_bpm``-``max_bpm``, each lag
   scored with its first three multiples (a comb), times a log-normal prior centred on 110 BPM
   (one octave wide);
3. grid: period (+-2 % around that lag, in 0.05 % steps) and phase (every 5 ms) maximising the
   onset strength sampled on the grid; then refined:    period and anchor by a least-squares line through the strong onsets nearest to the grid's beats
   (beat index -> onset time, sub-frame peak positions; three passes, 40/25/15-ms windows);
4. downbeats: 4 beats to the bar; the bar phase whose beats carry the most low-band onset
   strength (kick drums and bass notes fall on beat 1 more than elsewhere).

:func:`estimate_grid` returns a :class:`Grid` or None (fewer than 8 onsets, under 4 s, or a
confidence below ``min_confidence``: the stem then has no tempo, and a client plays it unstretched
from its segment offset). ``confidence`` is the grid's onset strength per beat over the mean onset
strength per frame-slot, mapped to [0, 1].

Times are seconds in the stem (0 = first sample). The grid module needs numpy only.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

METHOD = "onset-comb-grid-v1"
FPS = 200.0  # onset frames per second (hop 80 samples at 16 kHz)
N_FFT = 512  # 32-ms window: on the demo stems (soft attacks) beats land within 0-2 ms of the MIDI
#: note-ons; on very sharp clicks the flux peaks ~9 ms early (the click enters the window early)
BEATS_PER_BAR = 4


@dataclass
class Grid:
    """A constant-tempo grid: beat ``k`` at ``first_beat + k * 60 / tempo`` for ``k`` in
    ``[0, n_beats)``; bars of ``beats_per_bar`` beats start at ``first_downbeat`` (one of the beats).
    Stored in the index as these few numbers (:meth:`to_dict`), never as a list of beats."""

    tempo: float  # BPM
    first_beat: float  # stem s of the first beat inside the audio
    n_beats: int  # beats inside the audio
    first_downbeat: float  # stem s of the first beat that starts a bar
    confidence: float  # [0, 1]
    beats_per_bar: int = BEATS_PER_BAR
    scope: str = "stem"  # "stem": fitted to the stem itself; "track": to the mix of its track's stems
    method: str = METHOD

    @property
    def period(self) -> float:
        return 60.0 / self.tempo

    def beats(self) -> np.ndarray:
        return self.first_beat + self.period * np.arange(self.n_beats)

    def downbeats(self) -> np.ndarray:
        k0 = int(round((self.first_downbeat - self.first_beat) / self.period)) % self.beats_per_bar
        return self.beats()[k0::self.beats_per_bar]

    def beats_between(self, a: float, b: float) -> np.ndarray:
        """Beats in ``[a, b)`` (stem s)."""
        x = self.beats()
        return x[(x >= a - 1e-6) & (x < b - 1e-6)]

    def next_downbeat(self, t: float) -> float | None:
        """The first downbeat at or after stem time ``t`` (None past the last beat)."""
        d = self.downbeats()
        d = d[d >= t - 1e-6]
        return float(d[0]) if len(d) else None

    def to_dict(self) -> dict:
        return {"tempo": round(float(self.tempo), 4), "first_beat": round(float(self.first_beat), 5),
                "n_beats": int(self.n_beats), "first_downbeat": round(float(self.first_downbeat), 5),
                "beats_per_bar": int(self.beats_per_bar), "confidence": round(float(self.confidence), 4),
                "scope": self.scope, "method": self.method}

    @classmethod
    def from_dict(cls, d: dict | None) -> "Grid | None":
        if not isinstance(d, dict) or not d.get("tempo"):
            return None
        return cls(float(d["tempo"]), float(d["first_beat"]), int(d["n_beats"]), float(d["first_downbeat"]),
                   float(d.get("confidence", 0.0)), int(d.get("beats_per_bar", BEATS_PER_BAR)),
                   str(d.get("scope", "stem")), str(d.get("method", METHOD)))

    def with_scope(self, scope: str) -> "Grid":
        return Grid(self.tempo, self.first_beat, self.n_beats, self.first_downbeat, self.confidence,
                    self.beats_per_bar, scope, self.method)


def onset_strength(x: np.ndarray, sr: int = 16000) -> tuple[np.ndarray, np.ndarray]:
    """``(T,)`` mono float -> (broadband, low band) onset strength, both ``(F,)`` at :data:`FPS`;
    frame ``i`` is centred at ``i / FPS`` s."""
    x = np.asarray(x, dtype=np.float32).reshape(-1)
    hop = int(round(sr / FPS))
    n_fft = N_FFT
    pad = n_fft // 2
    xp = np.concatenate([np.zeros(pad, np.float32), x, np.zeros(pad, np.float32)])
    n = 1 + max(0, (len(xp) - n_fft) // hop)
    if n < 3:
        return np.zeros(0), np.zeros(0)
    idx = np.arange(n_fft)[None, :] + hop * np.arange(n)[:, None]
    win = np.hanning(n_fft).astype(np.float32)
    spec = np.abs(np.fft.rfft(xp[idx] * win, axis=1))  # (n, 257)
    logm = np.log1p(1000.0 * spec)
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sr)
    band = (freqs >= 30) & (freqs <= 8000)
    low = (freqs >= 30) & (freqs < 250)
    flux = np.maximum(0.0, np.diff(logm, axis=0, prepend=logm[:1]))
    out = []
    for m in (band, low):
        o = flux[:, m].sum(axis=1)
        k = int(FPS * 0.5)
        mean = np.convolve(o, np.ones(k) / k, mode="same")
        out.append(np.maximum(0.0, o - mean))
    return out[0], out[1]


def _sample(env: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Onset strength at fractional frames ``t`` (linear interpolation; 0 outside)."""
    i = np.floor(t).astype(np.int64)
    f = t - i
    ok = (i >= 0) & (i + 1 < len(env))
    v = np.zeros(len(t))
    v[ok] = env[i[ok]] * (1 - f[ok]) + env[i[ok] + 1] * f[ok]
    return v


def _tempo_lag(env: np.ndarray, min_bpm: float, max_bpm: float) -> float | None:
    lo, hi = int(np.floor(60 * FPS / max_bpm)), int(np.ceil(60 * FPS / min_bpm))
    n = len(env)
    if n < 4 * hi:
        hi = n // 4
    if hi <= lo + 2:
        return None
    e = env - env.mean()
    f = np.fft.rfft(e, 2 * n)
    ac = np.fft.irfft(f * np.conj(f))[:n]
    if ac[0] <= 0:
        return None
    ac = ac / ac[0]
    lags = np.arange(lo, hi + 1)
    score = np.zeros(len(lags))
    for m, w in ((1, 1.0), (2, 0.5), (3, 0.33)):
        lm = lags * m
        ok = lm < n
        score[ok] += w * ac[lm[ok]]
    bpm = 60 * FPS / lags
    prior = np.exp(-0.5 * (np.log2(bpm / 110.0) / 1.0) ** 2)
    score = score * prior
    j = int(np.argmax(score))
    if score[j] <= 0:
        return None
    if 0 < j < len(score) - 1:  # parabolic refinement
        a, b, c = score[j - 1], score[j], score[j + 1]
        d = a - 2 * b + c
        if d < 0:
            return float(lags[j] + 0.5 * (a - c) / d)
    return float(lags[j])


def estimate_grid(x: np.ndarray, sr: int = 16000, *, min_bpm: float = 55.0, max_bpm: float = 215.0,
                  min_confidence: float = 0.15, scope: str = "stem") -> Grid | None:
    """The constant-tempo grid of one stem's audio ``x`` (mono, ``sr`` Hz); None when it has none."""
    if sr <= 0:
        raise ValueError("sr must be positive")
    x = np.asarray(x, dtype=np.float32).reshape(-1)
    dur = len(x) / sr
    if dur < 4.0 or not np.all(np.isfinite(x)):
        return None
    env, low = onset_strength(x, sr)
    if len(env) == 0 or env.max() <= 0:
        return None
    peaks = (env[1:-1] > env[:-2]) & (env[1:-1] >= env[2:]) & (env[1:-1] > 0.3 * env.max())
    if int(peaks.sum()) < 8:
        return None
    lag = _tempo_lag(env, min_bpm, max_bpm)
    if lag is None:
        return None
    n = len(env)
    best = (-1.0, lag, 0.0)
    for p in lag * (1.0 + np.arange(-0.02, 0.02 + 1e-9, 0.0005)):
        nb = int((n - 1) / p) + 1
        k = np.arange(nb)
        for ph in np.arange(0.0, p, 1.0):
            s = _sample(env, ph + p * k).sum() / max(1, len(k))
            if s > best[0]:
                best = (s, p, ph)
    score, p, ph = best
    # refine period and anchor: least-squares line through the strong onsets next to grid beats
    # (beat index -> onset frame), three passes with a shrinking window (40, 25, 15 ms)
    pk = np.flatnonzero(peaks) + 1
    if len(pk) >= 2:
        a_, b_, c_ = env[pk - 1], env[pk], env[np.minimum(pk + 1, n - 1)]
        d_ = a_ - 2 * b_ + c_
        onsets = pk + np.where(d_ < 0, 0.5 * (a_ - c_) / np.where(d_ < 0, d_, -1.0), 0.0)  # sub-frame
        for win_s in (0.04, 0.025, 0.015):
            kk = np.arange(int((n - 1 - ph) / p) + 1)
            grid_f = ph + p * kk
            j = np.clip(np.searchsorted(onsets, grid_f), 1, len(onsets) - 1)
            near = np.where(np.abs(onsets[j] - grid_f) < np.abs(onsets[j - 1] - grid_f), onsets[j], onsets[j - 1])
            close = np.abs(near - grid_f) <= win_s * FPS
            if close.sum() < 4:
                break
            slope, icpt = np.polyfit(kk[close].astype(np.float64), near[close], 1)
            if abs(slope / p - 1.0) > 0.03:
                break
            p, ph = float(slope), float(icpt)
    # confidence: grid strength against the mean strength of any frame
    conf = float(np.clip((score / max(env.mean(), 1e-12) - 1.0) / 4.0, 0.0, 1.0))
    if conf < min_confidence:
        return None
    ph = ph % p
    beats_f = ph + p * np.arange(int((n - 1 - ph) / p) + 1)
    beats = beats_f / FPS
    beats = beats[(beats >= 0) & (beats < dur)]
    if len(beats) < 2:
        return None
    # downbeats: the bar phase with the most low-band (else broadband) onset strength
    src = low if low.max() > 0 else env
    strength = _sample(src, beats * FPS) + 0.25 * _sample(env, beats * FPS)
    bar = [strength[j::BEATS_PER_BAR].mean() if len(strength[j::BEATS_PER_BAR]) else 0.0
           for j in range(BEATS_PER_BAR)]
    j0 = int(np.argmax(bar))
    return Grid(tempo=60.0 * FPS / p, first_beat=float(beats[0]), n_beats=len(beats),
                first_downbeat=float(beats[j0]), confidence=conf, scope=scope)


def fold_ratio(ratio: float) -> float:
    """A tempo ratio folded by powers of two into [1/sqrt(2), sqrt(2)): a stem at 60 BPM under a
    live 120 BPM plays at its own speed, one stem beat to two live beats."""
    r = float(ratio)
    if not np.isfinite(r) or r <= 0:
        raise ValueError(f"ratio must be positive, got {ratio!r}")
    while r >= np.sqrt(2.0):
        r /= 2.0
    while r < 1.0 / np.sqrt(2.0):
        r *= 2.0
    return r


def track_consensus(grids: dict, durations: dict, *, tol: float = 0.015) -> dict:
    """Stems of one track share one grid. ``grids``: {stem: Grid or None} (each stem's own),
    ``durations``: {stem: s}. The largest group of stems whose tempos agree within ``tol`` sets
    the track's tempo (their median) and phase (circular median of their beat phases); each of
    its members votes for the bar phase. A stem whose own grid agrees with that (tempo within
    ``tol``, beats within an eighth of a beat) keeps its own beats with the track's bar phase;
    any other stem -- none of its own, another tempo, or off by half a beat (syncopated lines
    fool the onset fit) -- gets the track's grid, ``scope: "track"``. Returns {stem: Grid or None}."""
    own = {k: g for k, g in grids.items() if g is not None}
    if not own:
        return dict(grids)
    keys = sorted(own, key=lambda k: own[k].tempo)
    best: list = []
    for k in keys:
        grp = [j for j in keys if abs(own[j].tempo / own[k].tempo - 1.0) <= tol]
        if len(grp) > len(best):
            best = grp
    tempo = float(np.median([own[k].tempo for k in best]))
    period = 60.0 / tempo
    ang = np.array([2 * np.pi * ((own[k].first_beat / period) % 1.0) for k in best])
    # circular median: the member phase with the least summed circular distance to the others
    d = np.abs(np.angle(np.exp(1j * (ang[:, None] - ang[None, :])))).sum(axis=1)
    phase = float(ang[int(np.argmin(d))] / (2 * np.pi) * period)
    votes = np.zeros(BEATS_PER_BAR)
    for k in best:
        g = own[k]
        if abs(((g.first_beat - phase) / period + 0.5) % 1.0 - 0.5) <= 0.125:
            votes[int(round((g.first_downbeat - phase) / period)) % BEATS_PER_BAR] += g.confidence
    bar = int(np.argmax(votes))
    conf = float(np.median([own[k].confidence for k in best]))
    out = {}
    for k, g in grids.items():
        dur = float(durations.get(k, 0.0))
        agrees = (g is not None and abs(g.tempo / tempo - 1.0) <= tol
                  and abs(((g.first_beat - phase) / period + 0.5) % 1.0 - 0.5) <= 0.125)
        if agrees:
            b = g.beats()
            idx = np.round((b - phase) / period).astype(int) % BEATS_PER_BAR
            first_down = b[idx == bar]
            out[k] = Grid(g.tempo, g.first_beat, g.n_beats, float(first_down[0]) if len(first_down) else g.first_beat,
                          g.confidence, BEATS_PER_BAR, g.scope, g.method)
            continue
        b = phase + period * np.arange(int(max(0.0, dur - phase) / period) + 1)
        b = b[b < dur]
        if len(b) < 2:
            out[k] = None
            continue
        idx = np.round((b - phase) / period).astype(int) % BEATS_PER_BAR
        first_down = b[idx == bar]
        out[k] = Grid(tempo, float(b[0]), len(b), float(first_down[0]) if len(first_down) else float(b[0]),
                      conf, BEATS_PER_BAR, "track", METHOD)
    return out
