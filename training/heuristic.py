"""A tempo + key heuristic for stem retrieval: the baseline a learned model has to beat.

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
protocol (which chunks, which candidates) is :func:`training.evaluate.evaluate_retrieval`'s.
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


def describe(x: np.ndarray) -> np.ndarray:
    """``(S,)`` audio -> the heuristic's unit retrieval vector ``(12 + 176,)``."""
    v = np.concatenate([CHROMA_WEIGHT * _unit(chroma(x)), (1 - CHROMA_WEIGHT) * _unit(tempogram(x))])
    return v / (np.linalg.norm(v) + 1e-9)
