"""Log-mel front end, the one place where audio becomes model input.

Parameters (docs/architecture.md, "The front end"): 16 kHz mono, n_fft 400 (25 ms), hop 160 (10 ms), 80 mel bins
spanning 50-8000 Hz, ``log(power + eps)``. Frames are *not* centred: frame ``i`` covers samples
``[i*hop, i*hop + n_fft)``, so a streaming front end can emit it as soon as its last sample has
arrived, and whole-signal and streaming computation give the same frames bit for bit.

Two modes share one numerical path (:func:`_frames_to_logmel`):

* :meth:`LogMel.__call__` / :meth:`LogMel.offline` -- a whole signal ``(S,)`` -> ``(F, T)``.
* :class:`StreamingLogMel` -- push chunks of any length, receive each new frame ``(F, t)``.

The torch twin used for batched training lives in ``training/features.py`` and is held equal to
this one by a test.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class FrontEndConfig:
    """Front-end parameters; stored in every checkpoint and model manifest."""

    sample_rate: int = 16000  # Hz
    n_fft: int = 400  # samples (25 ms)
    hop: int = 160  # samples (10 ms)
    n_mels: int = 80
    f_min: float = 50.0  # Hz
    f_max: float = 8000.0  # Hz
    eps: float = 1e-6  # added to mel power before the log

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FrontEndConfig":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)

    def n_frames(self, n_samples: int) -> int:
        """Number of complete frames in ``n_samples`` samples (no centring)."""
        if n_samples < self.n_fft:
            return 0
        return 1 + (n_samples - self.n_fft) // self.hop

    def frames_centre_s(self, n_frames: int = 2) -> float:
        """Time (s) of the centre of the first ``n_frames`` frames together: where a value
        computed from frames ``0..n_frames-1`` sits (a 50-Hz beat activation frame spans 2
        log-mel frames: 0.0175 s at the default parameters)."""
        return self.n_samples(n_frames) / 2.0 / self.sample_rate

    def n_samples(self, n_frames: int) -> int:
        """Samples needed to produce ``n_frames`` frames."""
        return 0 if n_frames <= 0 else self.n_fft + (n_frames - 1) * self.hop


def hz_to_mel(f):
    """HTK mel scale."""
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(cfg: FrontEndConfig) -> np.ndarray:
    """Triangular HTK-mel filterbank, shape ``(n_fft//2 + 1, n_mels)``, float64, unnormalised."""
    n_bins = cfg.n_fft // 2 + 1
    freqs = np.linspace(0.0, cfg.sample_rate / 2.0, n_bins)  # Hz per FFT bin
    mel_pts = np.linspace(hz_to_mel(cfg.f_min), hz_to_mel(cfg.f_max), cfg.n_mels + 2)
    hz_pts = mel_to_hz(mel_pts)
    lower, centre, upper = hz_pts[:-2], hz_pts[1:-1], hz_pts[2:]
    f = freqs[:, None]
    up = (f - lower[None, :]) / (centre - lower)[None, :]
    down = (upper[None, :] - f) / (upper - centre)[None, :]
    return np.maximum(0.0, np.minimum(up, down))


def hann_window(n: int) -> np.ndarray:
    """Periodic Hann window (as ``torch.hann_window(n, periodic=True)``), float64."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


class LogMel:
    """Whole-signal log-mel: ``(S,)`` float samples at 16 kHz -> ``(n_mels, T)`` float32."""

    def __init__(self, cfg: FrontEndConfig | None = None):
        self.cfg = cfg or FrontEndConfig()
        self.window = hann_window(self.cfg.n_fft)
        self.fb = mel_filterbank(self.cfg)

    def frames(self, x: np.ndarray) -> np.ndarray:
        """Strided view ``(T, n_fft)`` of the complete frames of ``x``."""
        c = self.cfg
        t = c.n_frames(len(x))
        if t == 0:
            return np.zeros((0, c.n_fft), dtype=np.float64)
        return np.lib.stride_tricks.sliding_window_view(x, c.n_fft)[:: c.hop][:t]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.offline(x)

    def offline(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 1:
            raise ValueError(f"LogMel expects mono samples (S,), got shape {x.shape}")
        return _frames_to_logmel(self.frames(x), self.window, self.fb, self.cfg.eps)

    def streaming(self) -> "StreamingLogMel":
        return StreamingLogMel(self.cfg)


# Frames are transformed in fixed blocks of this many rows; each block is padded to full size so
# that the BLAS kernel, and with it the summation order, never depends on how audio was chunked.
_BLOCK = 32


def _frames_to_logmel(frames: np.ndarray, window: np.ndarray, fb: np.ndarray, eps: float) -> np.ndarray:
    """``(T, n_fft)`` frames -> ``(n_mels, T)`` float32 log-mel."""
    t = frames.shape[0]
    out = np.empty((fb.shape[1], t), dtype=np.float32)
    for s in range(0, t, _BLOCK):
        blk = np.zeros((_BLOCK, frames.shape[1]), dtype=np.float64)
        n = min(_BLOCK, t - s)
        blk[:n] = frames[s : s + n]
        spec = np.fft.rfft(blk * window, axis=-1)
        power = spec.real**2 + spec.imag**2  # (BLOCK, n_fft//2+1)
        mel = power @ fb  # (BLOCK, n_mels)
        out[:, s : s + n] = np.log(mel[:n] + eps).T.astype(np.float32)
    return out


class StreamingLogMel:
    """Streaming log-mel: push chunks of any size, get every frame as soon as it is complete.

    ``push(chunk)`` returns ``(n_mels, t_new)``; concatenating all returns equals
    ``LogMel.offline`` of the concatenated input exactly. ``reset()`` forgets all state.
    """

    def __init__(self, cfg: FrontEndConfig | None = None):
        self.cfg = cfg or FrontEndConfig()
        self._lm = LogMel(self.cfg)
        self.reset()

    def reset(self) -> None:
        self._pending = np.zeros(0, dtype=np.float64)  # samples not yet consumed by a hop
        self.frames_emitted = 0

    def push(self, chunk: np.ndarray) -> np.ndarray:
        chunk = np.asarray(chunk, dtype=np.float64).reshape(-1)
        buf = np.concatenate([self._pending, chunk]) if self._pending.size else chunk
        c = self.cfg
        t = c.n_frames(len(buf))
        out = _frames_to_logmel(self._lm.frames(buf), self._lm.window, self._lm.fb, c.eps)
        self._pending = buf[t * c.hop :].copy()
        self.frames_emitted += t
        return out
