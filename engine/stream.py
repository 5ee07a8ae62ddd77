"""The streaming live path of a causal (block-causal, sliding-window) model: per-layer cached keys
and values, cached predictor outputs per instrument, a running sum for the window's mean.

A causal encoder's token of time column ``c`` attends to columns ``c - max_columns + 1 .. c``
only (8 s), at every layer, so a token never changes once computed. A hop then encodes only the
new columns (5 tokens each), attending to a ring of ``max_columns * freq_patches`` = 250 cached
tokens per layer, and runs the predictor on the new tokens only::

    enc = StreamingEncoder(backend.encode_step, manifest.config)    # or backend.encode_target_step
    pred = StreamingPredictor(backend.predict_tokens, manifest.config, window_columns=50,
                              code_fn=backend.predict_code)
    pred.set_conditions(["drums", "bass"], backend.condition(["drums", "bass"]))
    tokens = enc.push(logmel_cols)          # (1, 80, 16 c) raw log-mel of c new columns -> (1, 5 c, d)
    pred.push(tokens[0])                    # per-instrument outputs of the new tokens into the rings
    emb = pred.embedding()                  # (N, d): window mean -> layer norm -> L2

Graphs (written by ``python -m export`` for causal models, listed under the manifest's
``"stream"`` entry, docs/model_dir.md):

* ``encoder_step`` / ``target_encoder_step``: ``logmel (B, 80, 16 c)`` raw log-mel of the new
  columns, ``past_age (S,)`` float32 (columns between each cached token's column and the first
  new one; ``>= max_columns`` = empty), ``k_cache_0 .. k_cache_{L-1}``, ``v_cache_0 ..``
  ``(B, H, S, d/H)`` every layer's ring (separate inputs: views of the engine's ``(L, ...)`` ring,
  never copied) ->
  ``tokens (B, 5 c, d)``, ``k_new``, ``v_new (L, B, H, 5 c, d/H)``: the cache is explicit input and
  output; the caller writes the new keys / values into the ring (no copy of the cache per hop);
* ``predictor_code``: ``cond (N, C) | (N,)`` -> ``code (N, K)``: what the predictor takes from a
  condition (FiLM: every hidden layer's gamma and beta, ``K = (layers - 1) * 2 * hidden``; class:
  its embedding, ``K = d``), computed once per instrument;
* ``predictor_tokens``: ``tokens (1, P, d)``, ``code (N, K)`` -> ``out (N, P, d)``: the
  predictor per token, before pooling (the ``predictor`` graph = mean of this -> LN -> L2).

Offline (:meth:`StreamingEncoder.encode`: a whole stream at once, column blocks of up to
``max_columns``) and streaming (:meth:`StreamingEncoder.push`, any number of columns per call)
give the same tokens; ``training.model.Encoder.forward_banded`` is the mask-based reference.
Every stateful object here has ``reset()``.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .contract import normalise_mean  # the pooling after the running mean (engine/contract.py)

STREAM_GRAPHS = ("encoder_step", "target_encoder_step", "predictor_code", "predictor_tokens")
STREAM_VERSION = 1


class StreamError(ValueError):
    """A model directory whose streaming graphs cannot be used; the message says why."""


def stream_io(config: dict) -> dict[str, dict]:
    """I/O contract of the streaming graphs for a model config (symbolic dims are strings)."""
    f, d, h, layers = int(config["n_mels"]), int(config["d_model"]), int(config["heads"]), int(config["depth"])
    dh = d // h

    def t(shape, dtype="float32"):
        return {"shape": list(shape), "dtype": dtype}

    caches = {f"{kv}_cache_{i}": t(["B", h, "S", dh]) for kv in ("k", "v") for i in range(layers)}
    step = {"inputs": {"logmel": t(["B", f, "T"]), "past_age": t(["S"]), **caches},
            "outputs": {"tokens": t(["B", "P", d]), "k_new": t([layers, "B", h, "P", dh]),
                        "v_new": t([layers, "B", h, "P", dh])}}
    film = config["conditioning"] == "film"
    cond = t(["N", int(config["text_dim"])]) if film else t(["N"], "int64")
    k = (int(config["predictor_layers"]) - 1) * 2 * int(config["predictor_hidden"]) if film else d
    return {"encoder_step": step, "target_encoder_step": step,
            "predictor_code": {"inputs": {"cond": cond}, "outputs": {"code": t(["N", k])}},
            "predictor_tokens": {"inputs": {"tokens": t([1, "P", d]), "code": t(["N", k])},
                                 "outputs": {"out": t(["N", "P", d])}}}


def stream_info(manifest) -> dict | None:
    """The manifest's ``"stream"`` entry, its files checked (present, sha256, recorded I/O vs the
    config), or None when the model has no streaming graphs (a bidirectional model, or one exported
    before they existed). Raises :class:`StreamError` for a broken entry."""
    data = manifest.data.get("stream")
    cfg = manifest.config
    if not data or not cfg.get("causal"):
        return None
    root = Path(manifest.root)
    exp = stream_io(cfg)
    for section in ("graphs", "torch"):
        for g, per in (data.get(section) or {}).items():
            if g not in exp:
                raise StreamError(f"{root}: unknown streaming graph {g!r}")
            for prec, e in per.items():
                p = root / e["path"]
                if not p.is_file():
                    raise StreamError(f"{root}: streaming graph {g} ({prec}): file {e['path']} is missing")
                if _sha256(p) != e["sha256"]:
                    raise StreamError(f"{root}: streaming graph {g} ({prec}): {e['path']} is corrupt (sha256)")
                for side in ("inputs", "outputs"):
                    for name, spec in exp[g][side].items():
                        got = e.get(side, {}).get(name, {}).get("shape")
                        if got is None or len(got) != len(spec["shape"]) or any(
                                isinstance(a, int) and isinstance(b, int) and a != b for a, b in zip(spec["shape"], got)):
                            raise StreamError(f"{root}: streaming graph {g} ({prec}) {side[:-1]} {name!r} is recorded as "
                                              f"{got}, the config needs {spec['shape']}")
    if int(data.get("ring_tokens", -1)) != int(cfg["max_frames"]) // int(cfg["patch"]) * (int(cfg["n_mels"]) // int(cfg["patch"])):
        raise StreamError(f"{root}: streaming ring of {data.get('ring_tokens')} tokens does not fit the config")
    return data


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


StepFn = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], tuple]


class StreamingEncoder:
    """Per-layer key / value rings of the causal encoder (``S = max_columns * freq_patches``
    tokens, 250 for 8 s) and the column clock.

    ``step_fn(logmel (B, F, 16 c), k_cache, v_cache, past_age) -> (tokens, k_new, v_new)``: a
    backend's ``encode_step`` / ``encode_target_step``. ``batch``: streams encoded side by side
    (1 live; several stems at once for a library).
    """

    def __init__(self, step_fn: StepFn, config: dict, batch: int = 1):
        self.step_fn = step_fn
        self.n_mels, self.patch = int(config["n_mels"]), int(config["patch"])
        self.rows = self.n_mels // self.patch
        self.cols = int(config["max_frames"]) // self.patch  # the attention window, columns
        self.slots = self.cols * self.rows
        self.layers, self.heads = int(config["depth"]), int(config["heads"])
        self.dh = int(config["d_model"]) // self.heads
        self.batch = int(batch)
        self.k = np.zeros((self.layers, self.batch, self.heads, self.slots, self.dh), np.float32)
        self.v = np.zeros_like(self.k)
        self.age = np.empty(self.slots, np.float32)
        self.reset()

    def reset(self) -> None:
        """Empty the rings: the next column is column 0 of a new stream."""
        self.age[:] = float(self.cols)  # all masked
        self.columns = 0  # columns encoded since reset

    def push(self, logmel: np.ndarray) -> np.ndarray:
        """``(B, F, 16 c)`` raw log-mel of the next ``c >= 1`` columns -> their tokens
        ``(B, 5 c, d)`` (float32). Blocks of at most ``max_columns`` columns per graph call."""
        x = np.asarray(logmel, dtype=np.float32)
        if x.ndim != 3 or x.shape[0] != self.batch or x.shape[1] != self.n_mels or x.shape[2] % self.patch or not x.shape[2]:
            raise ValueError(f"streaming encoder input must be ({self.batch}, {self.n_mels}, 16 c) with c >= 1; "
                             f"got {x.shape}")
        c_all = x.shape[2] // self.patch
        out = []
        for c0 in range(0, c_all, self.cols):
            c = min(self.cols, c_all - c0)
            blk = np.ascontiguousarray(x[:, :, c0 * self.patch:(c0 + c) * self.patch])
            tokens, k_new, v_new = self.step_fn(blk, self.k, self.v, self.age)
            self.age += c
            for j in range(c):  # column `columns + j` goes to ring column slot (columns + j) % cols
                s = ((self.columns + j) % self.cols) * self.rows
                self.k[:, :, :, s:s + self.rows] = k_new[:, :, :, j * self.rows:(j + 1) * self.rows]
                self.v[:, :, :, s:s + self.rows] = v_new[:, :, :, j * self.rows:(j + 1) * self.rows]
                self.age[s:s + self.rows] = c - j
            self.columns += c
            out.append(np.asarray(tokens, dtype=np.float32))
        return out[0] if len(out) == 1 else np.concatenate(out, axis=1)

    def encode(self, logmel: np.ndarray) -> np.ndarray:
        """Offline: ``(B, F, T)`` raw log-mel of a whole stream (T a multiple of 16) -> all its
        tokens ``(B, 5 T/16, d)``, from a fresh ring (the state is reset before and kept after)."""
        self.reset()
        return self.push(logmel)


class StreamingPredictor:
    """Cached predictor outputs per instrument over the ring of encoder tokens, and their running
    sum over the newest ``window_columns`` columns (the window whose mean is the query).

    ``tokens_fn(tokens (1, n, d), code) -> (N, n, d)``: a backend's ``predict_tokens``;
    ``code_fn(cond) -> (N, K)``: its ``predict_code``, run once per new instrument (None: the
    condition itself is passed to ``tokens_fn``, e.g. a per-token predictor taking cond). The
    encoder tokens of the last ``max_columns`` columns are kept, so that a new or changed
    instrument's ring is computed once from them (:meth:`set_conditions`), never per hop.
    Sums are float64 and recomputed exactly from the rings once per ring turn (no drift).
    """

    def __init__(self, tokens_fn: Callable, config: dict, window_columns: int | None = None,
                 code_fn: Callable | None = None):
        self.tokens_fn = tokens_fn
        self.code_fn = code_fn
        self.code = None  # (N, K) codes of the current instruments (or their conditions)
        self.rows = int(config["n_mels"]) // int(config["patch"])
        self.cols = int(config["max_frames"]) // int(config["patch"])
        self.d = int(config["d_model"])
        self.window = int(window_columns or self.cols)
        if not 1 <= self.window <= self.cols:
            raise ValueError(f"window_columns must be 1..{self.cols}, got {window_columns}")
        self.tokens = np.zeros((self.cols * self.rows, self.d), np.float32)  # encoder tokens, ring
        self.names: list[str] = []
        self.cond = None
        self.out = np.zeros((0, self.cols * self.rows, self.d), np.float32)  # (N, S, d) ring
        self.sum = np.zeros((0, self.d), np.float64)
        self.recomputed = 0  # instruments whose ring was recomputed (set_conditions), cumulative
        self.reset()

    def reset(self) -> None:
        """Forget every column (the conditions are kept)."""
        self.columns = 0
        self.out[:] = 0.0
        self.sum[:] = 0.0

    @property
    def window_columns(self) -> int:
        """Columns in the current mean (grows to ``window_columns`` after a reset)."""
        return min(self.columns, self.window)

    def _slots(self, first: int, count: int) -> np.ndarray:
        """Ring token indices of columns ``first .. first + count - 1`` (absolute column numbers)."""
        cols = (np.arange(first, first + count) % self.cols)[:, None] * self.rows + np.arange(self.rows)[None, :]
        return cols.reshape(-1)

    def set_conditions(self, names: Sequence[str], cond) -> int:
        """Instruments ``names`` with conditioning ``cond`` (``(N, C)`` float or ``(N,)`` int64).
        Instruments already present keep their rings; each new or changed one is computed once
        over the cached columns. Returns how many were recomputed."""
        names = list(names)
        cond = None if cond is None or not names else np.asarray(cond)
        old = {n: i for i, n in enumerate(self.names)}
        code = np.zeros((len(names),) + (() if self.code is None else self.code.shape[1:]), np.float32)
        out = np.zeros((len(names), self.out.shape[1], self.d), np.float32)
        sums = np.zeros((len(names), self.d), np.float64)
        todo = []
        for i, n in enumerate(names):
            j = old.get(n)
            if j is not None and self.cond is not None and np.array_equal(self.cond[j], cond[i]):
                out[i], sums[i], code[i] = self.out[j], self.sum[j], self.code[j]
            else:
                todo.append(i)
        if todo:
            new = cond[todo] if self.code_fn is None else np.asarray(self.code_fn(cond[todo]))
            if code.shape[1:] != new.shape[1:]:
                code = np.zeros((len(names),) + new.shape[1:], new.dtype)
                for i, n in enumerate(names):  # (only when the code width was unknown: the first call)
                    if i not in todo:
                        code[i] = self.code[old[n]]
            code[todo] = new
        live = min(self.columns, self.cols)
        if todo and live:
            idx = self._slots(self.columns - live, live)
            res = np.asarray(self.tokens_fn(self.tokens[idx][None], code[todo]), dtype=np.float32)  # (n, live*rows, d)
            out[np.asarray(todo)[:, None], idx[None, :]] = res
        self.names, self.cond, self.code, self.out, self.sum = names, cond, (code if names else None), out, sums
        if todo:
            self._resum()
        self.recomputed += len(todo)
        return len(todo)

    def _resum(self) -> None:
        w = self.window_columns
        if not w or not len(self.names):
            self.sum[:] = 0.0
            return
        idx = self._slots(self.columns - w, w)
        self.sum = self.out[:, idx].sum(axis=1, dtype=np.float64)

    def push(self, tokens: np.ndarray) -> None:
        """``(5 c, d)`` encoder tokens of the next ``c`` columns: cache them, run the predictor on
        them for every instrument, update the window sums."""
        t = np.asarray(tokens, dtype=np.float32)
        c = t.shape[0] // self.rows
        if t.ndim != 2 or t.shape[0] != c * self.rows or t.shape[1] != self.d or c == 0:
            raise ValueError(f"tokens must be (5 c, {self.d}), got {t.shape}")
        if c > self.cols:  # ring-sized blocks
            for i in range(0, c, self.cols):
                self.push(t[i * self.rows:(i + self.cols) * self.rows])
            return
        res = (np.asarray(self.tokens_fn(t[None], self.code), dtype=np.float32)
               if len(self.names) else None)  # (N, 5c, d)
        for j in range(c):
            col = self.columns + j
            s = self._slots(col, 1)
            if res is not None:
                if col >= self.window:  # the column leaving the mean
                    self.sum -= self.out[:, self._slots(col - self.window, 1)].sum(axis=1, dtype=np.float64)
                r = res[:, j * self.rows:(j + 1) * self.rows]
                self.out[:, s] = r
                self.sum += r.sum(axis=1, dtype=np.float64)
            self.tokens[s] = t[j * self.rows:(j + 1) * self.rows]
        before = self.columns
        self.columns += c
        if len(self.names) and before // self.cols != self.columns // self.cols:
            self._resum()  # once per ring turn: exact sums again

    def embedding(self) -> np.ndarray:
        """``(N, d)`` query embeddings: mean of the cached outputs over the window -> layer norm
        -> L2 (float32)."""
        w = self.window_columns
        if not w:
            raise ValueError("no columns yet")
        return normalise_mean(self.sum / (w * self.rows))


class StreamingHop:
    """The live matcher's streaming hop (engine/pipeline.py): each hop's newly complete columns of
    the log-mel window through a :class:`StreamingEncoder` (its key/value rings), a
    :class:`StreamingPredictor` on their tokens only (per-instrument rings + window sums; an
    instrument that changed is computed once over the cached columns) and the beat head on their
    tokens, whose activation rolls into the window's (:attr:`act`, ``beat_probes`` per column).
    Columns are counted from the front end's first frame: the stream origin, or a restart's first
    frame (:meth:`push` with a new ``restarts`` count resets the rings there)."""

    def __init__(self, backend, config: dict, window_columns: int):
        self.patch = int(config.get("patch", 16))
        self.encoder = StreamingEncoder(backend.encode_step, config)
        self.predictor = StreamingPredictor(backend.predict_tokens, config, window_columns=window_columns,
                                            code_fn=backend.predict_code)
        self.backend = backend
        self.act = np.zeros(window_columns * int(config.get("beat_probes", 8)), np.float32)
        self.reset()

    def reset(self) -> None:
        """A new stream: the rings are emptied and columns count from frame 0."""
        self.encoder.reset()
        self.predictor.reset()
        self.done = 0  # frame (from the front end's origin) where the next column starts
        self.restarts = 0

    def push(self, mel: np.ndarray, frames: int, frame0: int, restarts: int, names: Sequence[str], cond,
             beats: bool, stages) -> int:
        """One hop: ``mel`` ``(80, W)``, the window, whose newest frame ends ``frames`` frames after
        the origin; ``frame0``: the front end's first frame, ``restarts``: its restart count;
        ``names``, ``cond``: the instruments and their conditioning; ``beats``: run the beat head;
        ``stages``: an :class:`engine.hop.Stages` (``encode``, ``predict``, ``beat_head``). Returns
        the frames of the window the query means over (``16 * columns``, at most ``W``)."""
        W = mel.shape[1]
        with stages("encode"):
            if restarts != self.restarts:  # the front end restarted: so does the stream
                self.restarts = restarts
                self.encoder.reset()
                self.predictor.reset()
                self.done = frame0
            pend = frames - self.done  # frames not yet in a column (newest `pend` of the window)
            c = pend // self.patch
            tokens = None
            if c:
                tokens = self.encoder.push(mel[None, :, W - pend:W - pend + c * self.patch])
                self.done += c * self.patch
        with stages("predict"):
            sp = self.predictor
            if sp.names != names or sp.cond is not cond:
                sp.set_conditions(names, cond)
                sp.cond = cond  # identity marks it current
            if tokens is not None:
                sp.push(tokens[0])
        if tokens is not None and beats:
            with stages("beat_head"):
                new = np.asarray(self.backend.beats(tokens), dtype=np.float32).reshape(-1)  # (8 c,)
                n = min(len(new), len(self.act))
                self.act[:-n] = self.act[n:]
                self.act[-n:] = new[-n:]
        return sp.window_columns * self.patch


def embed_stream(encoder: StreamingEncoder, logmel: np.ndarray, starts: Sequence[int], columns: int) -> np.ndarray:
    """Library side: ``logmel (F, T)`` raw log-mel of one whole stem (T a multiple of 16 frames)
    through the streaming encoder (``encoder`` built on a backend's ``encode_target_step``, batch
    1), then for every segment starting at column ``starts[i]`` (160-ms units; offset in s =
    ``0.16 * start``) and ``columns`` long, the mean of its tokens -> layer norm -> L2.
    Returns ``(len(starts), d)``: the embeddings the live path compares queries with, computed
    from the same tokens a live stream over the stem would have."""
    x = np.asarray(logmel, dtype=np.float32)
    tokens = encoder.encode(x[None])[0]  # (5 T/16, d)
    rows = encoder.rows
    means = [tokens[int(s) * rows:(int(s) + columns) * rows].mean(axis=0, dtype=np.float64) for s in starts]
    return normalise_mean(np.stack(means)) if means else np.zeros((0, tokens.shape[1]), np.float32)
