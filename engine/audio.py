"""Reading audio files and resampling to the model rate, with clear errors for bad input."""
from __future__ import annotations

from pathlib import Path

import numpy as np

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".aiff", ".aif", ".mp3")


class AudioError(ValueError):
    """Audio that cannot be used: unreadable, corrupt, non-finite, wrong shape."""


def to_mono(x: np.ndarray) -> np.ndarray:
    """``(S,)`` or ``(S, C)`` -> ``(S,)`` float32 by channel mean."""
    x = np.asarray(x)
    if x.ndim == 2:
        x = x.mean(axis=1)
    elif x.ndim != 1:
        raise AudioError(f"expected (samples,) or (samples, channels), got shape {x.shape}")
    return x.astype(np.float32, copy=False)


def resample(x: np.ndarray, sr_in: int, sr_out: int = 16000) -> np.ndarray:
    """Resample mono ``(S,)`` from ``sr_in`` to ``sr_out`` Hz with libsoxr (high quality)."""
    if sr_in <= 0:
        raise AudioError(f"invalid sample rate {sr_in}")
    x = np.asarray(x, dtype=np.float32)
    if sr_in == sr_out:
        return x
    import soxr

    return soxr.resample(x, sr_in, sr_out, quality="HQ").astype(np.float32, copy=False)


def check_finite(x: np.ndarray, what: str = "audio") -> np.ndarray:
    if not np.all(np.isfinite(x)):
        bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
        raise AudioError(f"{what}: {bad} non-finite samples (NaN or Inf)")
    return x


def load_audio(path: str | Path, sr: int = 16000, *, start: float = 0.0, duration: float | None = None) -> np.ndarray:
    """Load ``path`` as mono float32 ``(S,)`` at ``sr`` Hz.

    ``start``/``duration`` in seconds select an excerpt (read without decoding the rest where the
    format allows). Raises :class:`AudioError` for a missing, unreadable or non-finite file.
    """
    import soundfile as sf

    path = Path(path)
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    try:
        with sf.SoundFile(str(path)) as f:
            native = f.samplerate
            f.seek(int(round(start * native)))
            frames = -1 if duration is None else int(round(duration * native))
            x = f.read(frames, dtype="float32", always_2d=True)
    except AudioError:
        raise
    except Exception as e:  # libsndfile raises several types for corrupt data
        raise AudioError(f"{path}: cannot read audio ({e})") from e
    x = check_finite(to_mono(x), str(path))
    return resample(x, native, sr)


def audio_info(path: str | Path) -> tuple[int, float]:
    """(native sample rate in Hz, duration in seconds) without decoding."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception as e:
        raise AudioError(f"{path}: cannot read audio header ({e})") from e
    return int(info.samplerate), float(info.frames) / float(info.samplerate)


def save_audio(path: str | Path, x: np.ndarray, sr: int = 16000) -> None:
    import soundfile as sf

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.asarray(x, dtype=np.float32), sr, subtype="PCM_16" if str(path).endswith(".wav") else None)
