"""The calibration of the live tracker's confidence: the knots that map its raw confidence to the
fraction of reported beats that are correct.

:class:`engine.tracker.CausalBeatTracker` computes a raw confidence in [0, 1] (``P(tracking)``
times the mass near its best tempo and phase) and maps it through a monotone piecewise-linear
curve given by knots ``(raw, calibrated)``, one curve per beat source (``"net"``, ``"head"``).
The shipped knots are in :data:`CALIBRATION_FILE` (``engine/assets/beat_calibration.json``),
fitted with ``python -m training.beatcal``; the file holds ``{source: {"raw": [...],
"calibrated": [...]}, ...}``, or one such object for every source.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

CALIBRATION_FILE = Path(__file__).resolve().parent / "assets" / "beat_calibration.json"


def load_calibration(path: str | Path | None = CALIBRATION_FILE,
                     source: str = "net") -> tuple[np.ndarray, np.ndarray] | None:
    """Knots ``(raw (K,), calibrated (K,))``, float64, for ``source`` from a calibration file
    (``{source: {"raw": [...], "calibrated": [...]}, ...}``, or one such object for every source),
    or None (no file, or no entry for the source: the raw confidence). The raw values must
    increase, the calibrated ones must not decrease; they are clipped to [0, 1]."""
    if path is None or not Path(path).is_file():
        return None
    doc = json.loads(Path(path).read_text())
    if "raw" not in doc:
        doc = doc.get(source)
        if doc is None:
            return None
    x, y = np.asarray(doc["raw"], dtype=np.float64), np.asarray(doc["calibrated"], dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape or len(x) < 2 or np.any(np.diff(x) <= 0) or np.any(np.diff(y) < 0):
        raise ValueError(f"{path}: calibration knots must be increasing raw values with non-decreasing outputs")
    return x, np.clip(y, 0.0, 1.0)
