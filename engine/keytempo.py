"""The tempo + key descriptor: the heuristic baseline a learned model has to beat, and the second
half of the engine's ranking (:func:`fuse`).

No learning: a stem fits a mix when they share a key (pitch-class profile) and a pulse (tempo and
metre). Both sides of the retrieval -- the mix without the stem, and every candidate stem -- are
described by the same two features, and ranked by cosine similarity:

* **chroma** ``(12,)``: STFT magnitude (n_fft 4096 at 16 kHz, 3.9 Hz bins) from 55 Hz to 4 kHz,
  log-compressed, folded onto pitch classes (A = 440 Hz tuning), averaged over time, centred
  and L2-normalised. It compares key and harmony, not timbre.
* **tempogram** ``(176,)``: the autocorrelation of an onset-strength envelope (half-wave rectified
  log-mel flux, 100 Hz) at lags 0.25-2.0 s, normalised by lag 0 and averaged over 8-s windows,
  centred and L2-normalised. It compares tempo and metre, not what plays.

The retrieval vector is ``[w * chroma, (1 - w) * tempogram]`` re-normalised (``w = 0.5``). The
evaluation protocol (which chunks, which candidates) is the training package's retrieval evaluation.

**Fused ranking.** A learned embedding knows *what* plays (which stem the mix lacks, its
instrument); this descriptor knows *whether it is in the same key and pulse*. :func:`fuse` joins
them into one unit vector whose cosine is ``(1 - a) * cos_model + a * cos_keytempo``, so a library
ranks by both with one dot product (``docs/keytempo.md``).
"""
from __future__ import annotations

import numpy as np

SR = 16000
N_FFT = 4096
HOP = 1024
FMIN, FMAX = 55.0, 4000.0
ONSET_RATE = 100.0  # Hz
LAG_MIN_S, LAG_MAX_S = 0.25, 2.0
CHROMA_WEIGHT = 0.5


def _stft_mag(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """``(S,)`` -> ``(n_fft/2+1, frames)`` magnitude, Hann window, no centring."""
    if len(x) < n_fft:
        x = np.pad(x, (0, n_fft - len(x)))
    n = 1 + (len(x) - n_fft) // hop
    idx = np.arange(n_fft)[None, :] + hop * np.arange(n)[:, None]
    frames = x[idx] * np.hanning(n_fft)[None, :]
    return np.abs(np.fft.rfft(frames, axis=1)).T


def _chroma_matrix() -> np.ndarray:
    """``(12, n_fft/2+1)`` 0/1 folding of STFT bins in [FMIN, FMAX] onto pitch classes (C = 0)."""
    f = np.fft.rfftfreq(N_FFT, 1.0 / SR)
    m = np.zeros((12, len(f)))
    ok = (f >= FMIN) & (f <= FMAX)
    midi = 69 + 12 * np.log2(np.maximum(f[ok], 1e-6) / 440.0)
    pc = np.round(midi).astype(int) % 12
    m[pc, np.flatnonzero(ok)] = 1.0
    return m


_CHROMA = _chroma_matrix()


def chroma(x: np.ndarray) -> np.ndarray:
    """``(S,)`` 16-kHz audio -> ``(12,)`` time-averaged, log-compressed pitch-class profile."""
    mag = _stft_mag(x.astype(np.float64), N_FFT, HOP)
    c = _CHROMA @ np.log1p(100.0 * mag)  # (12, frames)
    return c.mean(axis=1)


def _mel_bank(n_fft: int, n_mels: int = 40) -> np.ndarray:
    f = np.fft.rfftfreq(n_fft, 1.0 / SR)
    mel = lambda hz: 2595 * np.log10(1 + hz / 700.0)  # noqa: E731
    edges = 700 * (10 ** (np.linspace(mel(30.0), mel(7600.0), n_mels + 2) / 2595) - 1)
    bank = np.zeros((n_mels, len(f)))
    for i in range(n_mels):
        lo, c, hi = edges[i], edges[i + 1], edges[i + 2]
        bank[i] = np.clip(np.minimum((f - lo) / (c - lo), (hi - f) / (hi - c)), 0, None)
    return bank


_ONSET_FFT = 1024
_ONSET_HOP = int(SR / ONSET_RATE)
_MELS = _mel_bank(_ONSET_FFT)


def onset_envelope(x: np.ndarray) -> np.ndarray:
    """``(S,)`` -> ``(frames,)`` at 100 Hz: summed positive log-mel flux, mean removed."""
    mag = _stft_mag(x.astype(np.float64), _ONSET_FFT, _ONSET_HOP)
    lm = np.log1p(1000.0 * (_MELS @ mag))
    flux = np.maximum(0.0, np.diff(lm, axis=1)).sum(axis=0)
    return flux - flux.mean() if len(flux) else flux


def tempogram(x: np.ndarray, window_s: float = 8.0) -> np.ndarray:
    """``(S,)`` -> ``(n_lags,)`` onset autocorrelation at lags 0.25-2 s, averaged over windows."""
    env = onset_envelope(x)
    lo, hi = int(LAG_MIN_S * ONSET_RATE), int(LAG_MAX_S * ONSET_RATE)
    w = int(window_s * ONSET_RATE)
    acs = []
    for s in range(0, max(1, len(env) - w + 1), w):
        e = env[s:s + w]
        if len(e) <= hi:
            e = np.pad(e, (0, hi + 1 - len(e)))
        e = e - e.mean()
        ac = np.correlate(e, e, mode="full")[len(e) - 1:]
        acs.append(ac[lo:hi + 1] / (ac[0] + 1e-9))
    return np.mean(acs, axis=0)


def _unit(v: np.ndarray) -> np.ndarray:
    v = v - v.mean()
    return v / (np.linalg.norm(v) + 1e-9)


def _combine(chroma_mean: np.ndarray, tempo_ac: np.ndarray) -> np.ndarray:
    """A ``(12,)`` chroma profile and a ``(176,)`` onset autocorrelation -> the unit descriptor."""
    v = np.concatenate([CHROMA_WEIGHT * _unit(chroma_mean), (1 - CHROMA_WEIGHT) * _unit(tempo_ac)])
    return v / (np.linalg.norm(v) + 1e-9)


def describe(x: np.ndarray) -> np.ndarray:
    """``(S,)`` audio -> the heuristic's unit retrieval vector ``(12 + 176,)``."""
    return _combine(chroma(x), tempogram(x))


def _window_ac(env: np.ndarray) -> np.ndarray:
    """``(n,)`` onset envelope of one window -> ``(176,)`` autocorrelation at the tempo lags."""
    lo, hi = int(LAG_MIN_S * ONSET_RATE), int(LAG_MAX_S * ONSET_RATE)
    e = env - env.mean() if len(env) else env
    if len(e) <= hi:
        e = np.pad(e, (0, hi + 1 - len(e)))
    ac = np.correlate(e, e, mode="full")[len(e) - 1:]
    return ac[lo:hi + 1] / (ac[0] + 1e-9)


class KeyTempoStream:
    """The descriptor of the newest ``window_s`` seconds of a stream, at the cost of what is new.

    ``push(samples)`` frames the stream on its own grid (chroma frames of 4096 samples every 1024,
    onset frames of 1024 every 160, counted from the stream's first sample) and keeps the per-frame
    chroma vectors and onset values of the last window; :meth:`describe` returns the unit
    ``(DIM,)`` descriptor of the frames that lie wholly inside the newest ``window_s`` s. It is the
    offline :func:`describe` up to the frame grid's phase against the window's start (a frame or
    two at the edges), which is what a library segment is compared with. The stream's values do
    not depend on how the audio arrived: whole, in chunks or sample by sample give the same frames
    (``tests/test_keytempo.py``). ``reset()`` starts a new stream; ``reset(at)`` goes on at stream
    position ``at`` on the same grid (after a gap: the frames that start at or after ``at`` come out
    exactly as the continuous stream's). A push costs about 1 ms a hop.
    """

    def __init__(self, window_s: float = 8.0):
        self.window = int(round(window_s * SR))
        self._c_len = 1 + max(0, (self.window - N_FFT) // HOP) + 2
        self._o_len = self.window // _ONSET_HOP + 2
        self.reset()

    def reset(self, at: int = 0) -> None:
        at = int(at)
        self._n = at  # stream position of the next sample pushed
        self._c_buf = np.zeros(0, np.float64)  # samples from stream position _c_next on
        self._o_buf = np.zeros(0, np.float64)  # samples from stream position _o_next on
        self._c_next = -(-at // HOP) * HOP  # stream position of the next chroma frame's first sample
        self._o_next = -(-at // _ONSET_HOP) * _ONSET_HOP
        self._c_skip = self._c_next - at  # samples to discard before the grid resumes
        self._o_skip = self._o_next - at
        self._chroma: list[tuple[int, np.ndarray]] = []  # (frame end, (12,)) newest last
        self._flux: list[tuple[int, float]] = []  # (frame end, flux) newest last
        self._prev_lm: np.ndarray | None = None

    @property
    def position(self) -> int:
        """Stream position of the next sample pushed."""
        return self._n

    def push(self, samples: np.ndarray) -> None:
        """Append ``(n,)`` mono 16-kHz samples (non-finite values count as 0)."""
        x = np.nan_to_num(np.asarray(samples, dtype=np.float64).reshape(-1), nan=0.0, posinf=0.0, neginf=0.0)
        self._n += len(x)
        c, self._c_skip = x[self._c_skip:], max(0, self._c_skip - len(x))
        o, self._o_skip = x[self._o_skip:], max(0, self._o_skip - len(x))
        self._c_buf = np.concatenate([self._c_buf, c])
        self._o_buf = np.concatenate([self._o_buf, o])
        n = 0 if len(self._c_buf) < N_FFT else 1 + (len(self._c_buf) - N_FFT) // HOP
        if n:
            mag = _stft_mag(self._c_buf[: N_FFT + (n - 1) * HOP], N_FFT, HOP)  # (bins, n)
            c = _CHROMA @ np.log1p(100.0 * mag)  # (12, n)
            for j in range(n):
                self._chroma.append((self._c_next + j * HOP + N_FFT, c[:, j]))
            self._c_buf = self._c_buf[n * HOP:]
            self._c_next += n * HOP
            del self._chroma[: max(0, len(self._chroma) - self._c_len)]
        n = 0 if len(self._o_buf) < _ONSET_FFT else 1 + (len(self._o_buf) - _ONSET_FFT) // _ONSET_HOP
        if n:
            mag = _stft_mag(self._o_buf[: _ONSET_FFT + (n - 1) * _ONSET_HOP], _ONSET_FFT, _ONSET_HOP)
            lm = np.log1p(1000.0 * (_MELS @ mag))  # (40, n)
            prev = lm[:, :1] if self._prev_lm is None else self._prev_lm[:, None]
            flux = np.maximum(0.0, np.diff(np.concatenate([prev, lm], axis=1), axis=1)).sum(axis=0)
            first = 1 if self._prev_lm is None else 0  # the stream's first frame has no predecessor
            for j in range(first, n):
                self._flux.append((self._o_next + j * _ONSET_HOP + _ONSET_FFT, float(flux[j])))
            self._prev_lm = lm[:, -1].copy()
            self._o_buf = self._o_buf[n * _ONSET_HOP:]
            self._o_next += n * _ONSET_HOP
            del self._flux[: max(0, len(self._flux) - self._o_len)]

    def describe(self, window_s: float | None = None) -> np.ndarray:
        """``(DIM,)`` unit descriptor of the newest ``window_s`` s (default: the constructor's);
        zeros before one chroma frame exists."""
        win = self.window if window_s is None else min(self.window, int(round(window_s * SR)))
        start = self._n - win
        c = [v for end, v in self._chroma if end - N_FFT >= start]
        if not c:
            return np.zeros(DIM, np.float32)
        f = np.array([v for end, v in self._flux if end - _ONSET_FFT >= start])
        return _combine(np.mean(c, axis=0), _window_ac(f)).astype(np.float32)


DEFAULT_WEIGHT = 0.5  # the ranking's key/tempo weight when a model directory names none (docs/keytempo.md)
DIM = 12 + int(LAG_MAX_S * ONSET_RATE) - int(LAG_MIN_S * ONSET_RATE) + 1  # 188: the descriptor's width


def fuse(model: np.ndarray, keytempo: np.ndarray, weight: float) -> np.ndarray:
    """``(..., D)`` unit model vectors and ``(..., DIM)`` unit descriptors -> ``(..., D + DIM)`` unit
    vectors ``[sqrt(1 - a) * model, sqrt(a) * keytempo]``, ``a = weight`` in [0, 1]: their cosine is
    ``(1 - a) * cos_model + a * cos_keytempo``. A zero descriptor (silence) adds nothing."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"key/tempo weight must be in [0, 1], got {weight}")
    out = np.concatenate([np.sqrt(1.0 - weight) * model, np.sqrt(weight) * keytempo], axis=-1)
    return (out / np.maximum(np.linalg.norm(out, axis=-1, keepdims=True), 1e-9)).astype(np.float32)
