"""The backend contract: what every backend of a model directory offers (docs/model_dir.md).

One module that both backends import and that imports neither of them (``engine.backends``, the
ONNX Runtime kinds, and ``engine.torch_backend``, the TorchScript kinds):

* :class:`Backend` -- the methods and attributes every backend has, with shapes and units;
* :class:`StreamingBackend` -- the optional streaming methods of a causal model's backend
  (engine/stream.py; ``backend.stream`` is None when the directory has no streaming graphs);
* :class:`BackendError` (and :class:`BackendInputError`, a bad argument to one of the methods);
* :class:`InputSpec` -- the one input check both backends run before their graphs, so a bad
  input fails the same way, with the same message, whatever the kind;
* :class:`Conditioner` -- instrument names -> conditioning (film vectors or class ids);
* :func:`pool` (and :func:`normalise_mean`, its second half) -- the numpy retrieval pooling of
  the live path, the same function as ``training.model.pool_embedding`` (held equal by
  tests/test_backends.py).

No torch import: the ONNX path runs without torch (docs/architecture.md).
"""
from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from .categories import category_of
from .manifest import Manifest


class BackendError(RuntimeError):
    """A backend cannot be opened or cannot run what was asked of it."""


class BackendInputError(BackendError, ValueError):
    """A backend method was given an input of the wrong shape or dtype (also a ``ValueError``)."""


# ---------------------------------------------------------------------------------------------
# the protocol


@runtime_checkable
class Backend(Protocol):
    """A model directory opened for inference (``engine.backends.load_backend``).

    Shapes: ``B`` windows, ``T`` log-mel frames (10 ms each; a multiple of ``patch`` = 16, one
    160-ms column, up to ``max_frames`` = 800, 8 s), ``P = 5 T/16`` tokens (time-major), ``d`` the
    model width, ``N`` instruments, ``C`` the text width (film) or none (class ids). Inputs are
    numpy arrays (any real dtype, cast to the graph's); outputs are float32 numpy arrays. A bad
    input raises :class:`BackendInputError` (see :class:`InputSpec`).
    """

    name: str  # the kind: "onnx-fp32", "onnx-int8", "torch-fp32", "trt-fp16", ...
    manifest: Manifest  # the directory's manifest (config, front end, norm, fingerprint, ...)
    stream: dict | None  # the manifest's checked "stream" entry, None without streaming graphs

    def encode(self, logmel: np.ndarray) -> np.ndarray:
        """Context encoder: raw log-mel ``(B, 80, T)`` -> tokens ``(B, P, d)``."""

    def encode_target(self, logmel: np.ndarray) -> np.ndarray:
        """EMA target encoder (indexes the stem library): same I/O as :meth:`encode`."""

    def predict(self, tokens: np.ndarray, cond: np.ndarray) -> np.ndarray:
        """Tokens ``(1, P, d)`` and conditions ``(N, C)`` float (film) or ``(N,)`` int (class)
        -> embeddings ``(N, d)``: the predictor, mean over tokens, layer norm, L2 (unit norm)."""

    def beats(self, tokens: np.ndarray) -> np.ndarray:
        """Tokens ``(B, P, d)`` -> beat activation ``(B, 8 P/5)`` in [0, 1] at 50 Hz."""

    def condition(self, names: Sequence[str]) -> np.ndarray:
        """``N`` instrument names -> ``(N, C)`` float32 (film) or ``(N,)`` int64 class ids."""


@runtime_checkable
class StreamingBackend(Backend, Protocol):
    """A causal model's backend (``backend.stream`` is not None): the streaming graphs of
    engine/stream.py. Optional: a bidirectional model's backend has the methods but they raise
    :class:`BackendError`."""

    def encode_step(self, logmel, k_cache, v_cache, past_age) -> list:
        """Raw log-mel of ``c`` new columns ``(B, 80, 16 c)``, the rings ``k_cache``, ``v_cache``
        (``L`` arrays ``(B, H, S, d/H)`` each), ``past_age (S,)`` float32 (columns since each
        cached token) -> ``[tokens (B, 5 c, d), k_new, v_new (L, B, H, 5 c, d/H)]``."""

    def encode_target_step(self, logmel, k_cache, v_cache, past_age) -> list:
        """Same as :meth:`encode_step`, target encoder."""

    def predict_code(self, cond: np.ndarray) -> np.ndarray:
        """Conditions ``(N, C) | (N,)`` -> their codes ``(N, K)`` (constant per instrument)."""

    def predict_tokens(self, tokens: np.ndarray, code: np.ndarray) -> np.ndarray:
        """Tokens ``(1, P, d)``, codes ``(N, K)`` -> the predictor per token ``(N, P, d)``."""


# ---------------------------------------------------------------------------------------------
# the one input check


def _real(x, what: str) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype.kind not in "iuf":
        raise BackendInputError(f"{what} must be a real numeric array; got dtype {a.dtype}")
    return a


class InputSpec:
    """The input check of every backend, from the manifest's config. Each method returns the
    array cast to the graph's dtype (float32, or int64 for class ids) and C-contiguous, or raises
    :class:`BackendInputError` saying what was expected and what came."""

    def __init__(self, manifest: Manifest):
        cfg = manifest.config
        self.n_mels = int(cfg.get("n_mels", 80))
        self.patch = int(cfg.get("patch", 16))
        self.max_frames = int(cfg.get("max_frames", 800))
        self.d = int(cfg["d_model"])
        self.rows = self.n_mels // self.patch  # tokens per column
        self.max_tokens = self.rows * (self.max_frames // self.patch)
        self.class_ids = manifest.conditioning == "class"
        self.n_classes = len(manifest.classes) if self.class_ids else 0
        self.text_dim = None if self.class_ids else int(cfg["text_dim"])

    def logmel(self, x, what: str = "encoder input") -> np.ndarray:
        """``(B, n_mels, T)``, ``B >= 1``, ``T`` a positive multiple of ``patch`` up to ``max_frames``."""
        a = _real(x, what)
        if a.ndim != 3 or a.shape[0] < 1 or a.shape[1] != self.n_mels or a.shape[2] % self.patch \
                or not 0 < a.shape[2] <= self.max_frames:
            raise BackendInputError(f"{what} must be (B, {self.n_mels}, T) with T a multiple of {self.patch} "
                                    f"up to {self.max_frames}; got {a.shape}")
        return np.ascontiguousarray(a, dtype=np.float32)

    def tokens(self, x, what: str = "tokens", one: bool = False) -> np.ndarray:
        """``(B, P, d)`` (``B == 1`` when ``one``), ``P`` a positive multiple of the tokens per
        column up to a window's."""
        a = _real(x, what)
        if a.ndim != 3 or a.shape[0] < 1 or (one and a.shape[0] != 1) or a.shape[2] != self.d \
                or a.shape[1] % self.rows or not 0 < a.shape[1] <= self.max_tokens:
            b = "1" if one else "B"
            raise BackendInputError(f"{what} must be ({b}, P, {self.d}) with P a multiple of {self.rows} "
                                    f"up to {self.max_tokens}; got {a.shape}")
        return np.ascontiguousarray(a, dtype=np.float32)

    def cond(self, c, what: str = "cond") -> np.ndarray:
        """Film: ``(N, text_dim)`` float; class: ``(N,)`` int ids in ``[0, n_classes)``; ``N >= 1``."""
        a = np.asarray(c)
        if self.class_ids:
            if a.dtype.kind not in "iu" or a.ndim != 1 or a.shape[0] < 1:
                raise BackendInputError(f"{what} of a class model must be (N,) integer class ids; "
                                        f"got {a.dtype} {a.shape}")
            if a.min() < 0 or a.max() >= self.n_classes:
                raise BackendInputError(f"{what}: class ids must be in [0, {self.n_classes}); got {a.tolist()}")
            return np.ascontiguousarray(a, dtype=np.int64)
        if a.dtype.kind != "f" or a.ndim != 2 or a.shape[0] < 1 or a.shape[1] != self.text_dim:
            raise BackendInputError(f"{what} of a film model must be (N, {self.text_dim}) float vectors "
                                    f"(backend.condition); got {a.dtype} {a.shape}")
        return np.ascontiguousarray(a, dtype=np.float32)

    def code(self, c, what: str = "code") -> np.ndarray:
        """``(N, K)`` float codes from ``predict_code``."""
        a = _real(c, what)
        if a.ndim != 2 or a.shape[0] < 1:
            raise BackendInputError(f"{what} must be (N, K) codes (backend.predict_code); got {a.shape}")
        return np.ascontiguousarray(a, dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# pooling (numpy; training.model.pool_embedding is the torch side)


def normalise_mean(m: np.ndarray) -> np.ndarray:
    """``(N, d)`` means over tokens -> layer norm (no affine, eps 1e-5) -> L2, float32: :func:`pool`
    after its mean (the streaming predictor keeps running sums, engine/stream.py)."""
    m = np.asarray(m, dtype=np.float64)
    m = m - m.mean(axis=-1, keepdims=True)
    m = m / np.sqrt((m * m).mean(axis=-1, keepdims=True) + 1e-5)
    return (m / np.maximum(np.linalg.norm(m, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def pool(tokens: np.ndarray) -> np.ndarray:
    """``(B, P, d)`` -> ``(B, d)``: mean over tokens, layer norm without affine (eps 1e-5), L2.
    Same function as ``training.model.pool_embedding`` (tests/test_backends.py)."""
    return normalise_mean(np.asarray(tokens, dtype=np.float32).mean(axis=1, dtype=np.float64))


# ---------------------------------------------------------------------------------------------
# conditioning: names -> vectors (film) or class ids (class)


class Conditioner:
    """``condition(names)``: film models look names up in ``conditioning.npz`` (vectors of the
    training labels) and encode any other name with the ONNX text encoder (cached); class models
    map names to the 4 classes by keyword (engine.categories; unknown -> "other")."""

    def __init__(self, manifest: Manifest, threads: int = 1):
        self.m = manifest
        self._text = None
        self._threads = threads
        if manifest.conditioning == "film":
            from .text import CachedText

            dim = int(manifest.config["text_dim"])

            class _NoEncoder:
                name = "cache-only"

                def encode(inner, texts):
                    raise BackendError(
                        f"{manifest.root}: no text encoder in this model directory; known names: "
                        f"{', '.join(sorted(self.cache.table)) or 'none'}; unknown: {', '.join(texts)}")

            inner = _NoEncoder()
            inner.dim = dim
            self.cache = CachedText(inner)
            cpath = manifest.file("conditioning")
            if cpath is not None:
                z = np.load(cpath, allow_pickle=False)
                self.cache.preload({str(n): v for n, v in zip(z["names"], z["vectors"])})

    def _text_encoder(self):
        if self._text is None:
            from .text import OnnxText

            if not self.m.has("text_encoder", "int8"):
                return None
            tok = self.m.file("tokenizer")
            self._text = OnnxText(self.m.graph_path("text_encoder", "int8"), tok, name=self.m.text.get("encoder", "text"),
                                  threads=self._threads, max_length=int(self.m.text.get("max_length", 32)))
        return self._text

    def __call__(self, names: Sequence[str]) -> np.ndarray:
        names = list(names)
        if self.m.conditioning == "class":
            return np.array([self.class_of(n) for n in names], dtype=np.int64)
        from .text import normalise_name

        missing = [n for n in {normalise_name(x) for x in names} if n not in self.cache]
        if missing:
            enc = self._text_encoder()
            if enc is not None:
                self.cache.inner = enc
        return self.cache.encode(names)

    def class_of(self, name: str) -> int:
        from .text import normalise_name

        n = normalise_name(name)
        classes = self.m.classes
        if n in classes:
            return classes.index(n)
        return classes.index(category_of(n))
