"""The live hop (docs/architecture.md, "A live hop"): ring buffer -> log-mel -> encoder -> predictor ->
stem-library search, and encoder tokens -> beat head -> causal beat tracker.

::

    m = Matcher(backend, library, instruments=["drums", "fretless bass"], k=5, hop_ms=160)
    m.ring.write(block)        # audio callback: 16 kHz mono float32, copy only
    res = m.process_hop()      # worker: None when no new hop is complete, else a HopResult

Hop grid. After :meth:`Matcher.reset` (stream origin ``o`` = the ring's sample clock then) hop
``n`` ends at ring position ``o + n * hop + (n_fft - fe_hop)`` (the 240-sample lead makes the
log-mel frame count exactly ``n * hop / 160`` there), so hops are defined by the stream, never by
how audio arrived: the same samples written whole, in chunks or frame by frame give the same
hops. ``hop_ms`` is rounded to a multiple of 20 ms (two log-mel frames = one 50-Hz beat frame).

Each hop pushes only the hop's new samples through a :class:`StreamingLogMel` and rolls them into
an ``(80, W)`` log-mel window (``W = window_s * 100`` frames, 800 for 8 s). **Before W frames
exist the encoder runs on the shorter window** -- the newest multiple of 16 frames (the encoder
accepts any multiple of 16), starting once ``min_window_s`` (1 s) is there; padding with the log
of silence would dilute the mean-pooled query with silent patches. Hops before that return a
:class:`HopResult` with ``ready=False`` and no matches.

Then: ``backend.encode`` -> tokens ``(1, P, d)``; one ``backend.predict`` for all N instruments
(conditioning from ``backend.condition``, cached until the instruments change) -> ``(N, d)``;
``library.search`` top-k per instrument (one match per stem; restricted to the instrument's
category when ``restrict_category`` and the library knows the category, see
:meth:`StemLibrary.category_of`), each segment scored by the model's cosine fused with the
tempo + key descriptor's (a :class:`KeyTempoStream` over the input, about 1 ms a hop;
``keytempo_weight``, default the model's own, 0 for the model alone; docs/keytempo.md);
``backend.beats(tokens)`` -> the window's 50 Hz activation, of
which the values not yet seen (8 per 160 ms) go to the :class:`CausalBeatTracker`.

**Streaming** (``stream=None``, the default, picks it whenever the backend has the streaming
graphs of a causal model; ``stream=False`` forces the full recompute): each hop encodes only the
time columns completed since the last hop with the streaming encoder (per-layer key/value rings
of 250 tokens, engine/stream.py), runs the predictor on those 5 tokens per column and instrument
(per-instrument output rings, a running sum for the window mean; a changed instrument is computed
once over the cached columns) and the beat head on those tokens only. Columns are counted on the
stream's own 160-ms grid from the stream origin, so a hop of a multiple of 160 ms sees exactly the
full path's window; with other hops the window ends at the newest complete column. The tokens are
those of the sliding-window causal encoder over the whole stream (``Encoder.forward_banded``).

Late hops are dropped, never queued: when a hop is due and more complete hops are already waiting
behind it, the worker jumps to the newest one (the skipped audio still goes through the log-mel
front end, which is cheap, so the window stays exact and the beat tracker gets every activation
frame); the number of skipped hops is counted in ``counters["drops"]``. If the gap exceeds the
window (a stall), the front end restarts on the newest window of audio in the ring.

Non-finite samples (NaN/Inf from the callback) are replaced by 0 and counted
(``counters["nonfinite"]``). Times: ``stream_time = end_sample / 16000`` s on the ring's clock;
beat activation frame ``m`` (50 Hz, counted from the origin) is at ``(o + 320 m + 280) / 16000``
s, the centre of its two log-mel frames (the training side uses the same 17.5-ms offset).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .beats import BeatState, CausalBeatTracker
from .frontend import FrontEndConfig, StreamingLogMel
from .keytempo import DEFAULT_WEIGHT as KEYTEMPO_DEFAULT_WEIGHT
from .keytempo import KeyTempoStream
from .library import LibraryError, Match, StemLibrary, set_blas_threads
from .ring import RingBuffer, RingOverwritten


@dataclass
class HopResult:
    """Everything one hop produced.

    ``stream_time``: s, ring clock at the hop's end (just after its last sample);
    ``end_sample``: the same in samples; ``hop_index``: hop number since reset (dropped hops
    included); ``ready``: False while the window is shorter than ``min_window_s`` (then no
    matches/beat); ``window_frames``: encoder input length T; ``matches``: {instrument: [Match]}
    best first; ``beat``: tracker state after this hop's activations (None before ready);
    ``activation``: the new 50 Hz activation values fed to the tracker (float32);
    ``activation_time``: time (s) of ``activation[0]``; ``timings``: ms per stage (read,
    frontend, encode, predict, search, beat_head, tracker, total); ``counters``: cumulative
    ``hops`` (computed), ``drops``, ``overruns`` (ring), ``nonfinite`` (samples zeroed),
    ``restarts`` (front-end restarts after stalls); ``level_db``: RMS level (dBFS) of the
    audio in the window; ``hop_level_db``: the same over this hop's newest samples; ``signal``:
    the window is louder than the matcher's ``signal_threshold_db`` -- without signal there are
    no matches (empty lists) and the beat tracker is fed zero activation (it reports silence).
    """

    stream_time: float
    end_sample: int
    hop_index: int
    ready: bool
    window_frames: int
    matches: dict
    beat: BeatState | None
    activation: np.ndarray
    activation_time: float | None
    timings: dict
    counters: dict = field(default_factory=dict)
    level_db: float = -120.0
    hop_level_db: float = -120.0
    signal: bool = False

    def to_dict(self) -> dict:
        return {"stream_time": self.stream_time, "end_sample": self.end_sample, "hop_index": self.hop_index,
                "ready": self.ready, "window_frames": self.window_frames, "level_db": self.level_db,
                "hop_level_db": self.hop_level_db, "signal": self.signal,
                "matches": {k: [m.to_dict() for m in v] for k, v in self.matches.items()},
                "beat": None if self.beat is None else self.beat.to_dict(),
                "activation": [float(a) for a in self.activation], "activation_time": self.activation_time,
                "timings": dict(self.timings), "counters": dict(self.counters)}


def _manifest_get(backend, key, default=None):
    m = getattr(backend, "manifest", None)
    return getattr(m, key, default) if m is not None else default


class Matcher:
    """The live matcher; see the module docstring for the hop.

    ``backend``: an ``engine.backends`` backend (or anything with the same interface);
    ``library``: a :class:`StemLibrary` or None; ``instruments``: free-text names (may be empty);
    ``k``: matches per instrument; ``hop_ms``: hop length (rounded to 20 ms); ``window_s``:
    encoder window (a multiple of 0.16 s, at most the model's ``max_frames``);
    ``restrict_category``: search each instrument only among stems of its category;
    ``ring_s``: ring capacity (s); ``drop_late``: drop late hops (live) or process every hop
    (offline); ``blas_threads``: limit the process's BLAS pool (None: leave it);
    ``tracker_kw``: extra arguments for :class:`CausalBeatTracker`; ``signal_threshold_db``:
    the window level (RMS, dBFS) below which the input counts as silence (default -60 dBFS:
    digital silence, a muted input or hum well below playing level); ``stream``: the streaming
    path (module docstring; None: whenever the backend can, False: full recompute every hop);
    ``keytempo_weight``: weight of the tempo + key descriptor in the ranking, in [0, 1] (None: the
    model directory's ``ranking.keytempo_weight``, else :data:`engine.keytempo.DEFAULT_WEIGHT`; a
    library without descriptors ranks by the model alone).
    ``last_query``: the ``(N, d)`` query embeddings of the latest hop (None when not computed).
    """

    def __init__(self, backend, library: StemLibrary | None = None, instruments=(), k: int = 5,
                 hop_ms: float = 160, window_s: float = 8.0, restrict_category: bool = False, *,
                 ring_s: float = 30.0, min_window_s: float = 1.0, drop_late: bool = True,
                 blas_threads: int | None = 1, tracker_kw: dict | None = None, beats: bool = True,
                 signal_threshold_db: float = -60.0, stream: bool | None = None,
                 keytempo_weight: float | None = None):
        self.backend = backend
        if not np.isfinite(signal_threshold_db):
            raise ValueError(f"signal_threshold_db must be finite, not {signal_threshold_db}")
        self.signal_threshold_db = float(signal_threshold_db)
        fe = _manifest_get(backend, "frontend")
        self.fe = FrontEndConfig.from_dict(fe) if isinstance(fe, dict) else FrontEndConfig()
        cfg = _manifest_get(backend, "config") or {}
        self.patch = int(cfg.get("patch", 16))
        self.max_frames = int(cfg.get("max_frames", 800))
        self.d_model = cfg.get("d_model")
        self.beat_probes = int(cfg.get("beat_probes", 8))
        self.sr = self.fe.sample_rate
        self.frames_per_s = self.sr / self.fe.hop
        self.lead = self.fe.n_fft - self.fe.hop  # samples
        w = int(round(window_s * self.frames_per_s))
        if w <= 0 or w % self.patch or w > self.max_frames:
            raise ValueError(f"window_s={window_s} gives {w} frames; need a positive multiple of {self.patch} "
                             f"up to {self.max_frames}")
        self.window_s = float(window_s)
        self.W = w
        self.min_frames = max(self.patch, int(np.ceil(min_window_s * self.frames_per_s / self.patch)) * self.patch)
        self.min_frames = min(self.min_frames, self.W)
        self.beat_fps = self.beat_probes * self.frames_per_s / self.patch  # 50 Hz
        self.frames_per_act = self.patch // self.beat_probes  # 2 log-mel frames per activation frame
        cap = int(ring_s * self.sr)
        if cap < self.fe.n_samples(self.W) + 4 * self.sr:
            raise ValueError(f"ring_s={ring_s} too small for a {window_s}-s window")
        self.ring = RingBuffer(cap)
        self.drop_late = bool(drop_late)
        self.enable_beats = bool(beats)
        self.tracker = CausalBeatTracker(self.beat_fps, **(tracker_kw or {}))
        if blas_threads is not None:
            set_blas_threads(blas_threads)
        self.library: StemLibrary | None = None
        self.instruments: list[str] = []
        self._cond = None
        self._cats: list[str | None] = []
        self.k = 1
        self.restrict_category = bool(restrict_category)
        can_stream = getattr(backend, "stream", None) is not None and hasattr(backend, "encode_step")
        if stream and not can_stream:
            raise ValueError("stream=True needs a causal model whose directory has the streaming graphs "
                             "(engine/stream.py; re-export a causal checkpoint)")
        self.streaming = can_stream if stream is None else bool(stream)
        if self.streaming:
            from .stream import StreamingEncoder, StreamingPredictor

            self._senc = StreamingEncoder(backend.encode_step, cfg)
            self._spred = StreamingPredictor(backend.predict_tokens, cfg, window_columns=self.W // self.patch,
                                             code_fn=backend.predict_code)
            self._sact = np.zeros(self.W // self.patch * self.beat_probes, np.float32)  # the window's activation
        self._keytempo = KeyTempoStream(window_s)
        if keytempo_weight is None:
            keytempo_weight = (_manifest_get(backend, "ranking") or {}).get("keytempo_weight", KEYTEMPO_DEFAULT_WEIGHT)
        self.keytempo_weight = 0.0
        self.set_keytempo_weight(keytempo_weight)
        self.set_k(k)
        self.set_library(library)
        self.set_instruments(instruments)
        self.hop_ms = 0.0
        self.hop = 0
        self._set_hop_value(hop_ms)
        self._scratch = np.empty(cap, dtype=np.float32)
        self.reset()

    # ------------------------------------------------------------------ control
    def set_instruments(self, names) -> None:
        """Free-text instrument names (an empty list is allowed: no matches). Conditioning is
        computed here, once per change: ``apply_instruments(prepare_instruments(names))``."""
        self.apply_instruments(self.prepare_instruments(names))

    def prepare_instruments(self, names) -> tuple[list[str], object]:
        """The heavy half of :meth:`set_instruments` (text encoding), with no change of state, so
        that a server can run it off the hop and control threads: ``(clean names, conditioning)``."""
        if isinstance(names, str):
            names = [names]
        clean: list[str] = []
        for n in names:
            if not isinstance(n, str) or not n.strip():
                raise ValueError(f"instrument names must be non-empty strings, got {n!r}")
            n = " ".join(n.split())
            if n not in clean:
                clean.append(n)
        try:
            cond = self.backend.condition(clean) if clean else None
        except (ValueError, TypeError, KeyError):
            raise
        except Exception as e:  # e.g. no text encoder for an unknown name: a bad argument here
            raise ValueError(f"cannot condition on {clean}: {e}") from e
        return clean, cond

    def apply_instruments(self, prepared: tuple[list[str], object]) -> None:
        """Swap in what :meth:`prepare_instruments` computed (cheap; between two hops)."""
        clean, cond = prepared
        self.instruments, self._cond = list(clean), cond
        self._update_categories()

    def set_k(self, k: int) -> None:
        k = int(k)
        if k < 1:
            raise ValueError("k must be >= 1")
        self.k = k

    def set_library(self, library: StemLibrary | None) -> None:
        """Swap the stem library (None: no matches). Refuses one built by another model or with
        another embedding width."""
        if library is not None:
            fp = _manifest_get(self.backend, "fingerprint")
            if library.fingerprint is not None and fp is not None and library.fingerprint != fp:
                raise LibraryError("this stem library was built by another model (fingerprint "
                                   f"{library.fingerprint[:12]}... vs {str(fp)[:12]}...)")
            if len(library) and self.d_model is not None and library.dim != int(self.d_model):
                raise LibraryError(f"library embeddings are {library.dim}-d, the model's are {self.d_model}-d")
        self.library = library
        self._update_categories()

    def set_keytempo_weight(self, weight: float) -> None:
        """Weight ``a`` of the tempo + key descriptor: segments score ``(1 - a) * cos_model +
        a * cos_keytempo`` (0: the model alone, 1: the heuristic alone)."""
        a = float(weight)
        if not 0.0 <= a <= 1.0:
            raise ValueError(f"keytempo_weight must be in [0, 1], got {weight}")
        self.keytempo_weight = a

    @property
    def ranking(self) -> str:
        """How matches are ranked now: ``"model+keytempo"``, or ``"model"`` (weight 0, or a
        library without descriptors)."""
        lib = self.library
        fused = self.keytempo_weight > 0.0 and lib is not None and getattr(lib, "keytempo", None) is not None
        return "model+keytempo" if fused else "model"

    def set_restrict_category(self, on: bool) -> None:
        self.restrict_category = bool(on)

    def _update_categories(self) -> None:
        lib = self.library
        self._cats = [lib.category_of(n) if lib is not None else None for n in self.instruments]

    def _set_hop_value(self, ms: float) -> None:
        ms = float(ms)
        if not np.isfinite(ms) or ms <= 0:
            raise ValueError(f"hop must be a positive number of ms, got {ms}")
        step = 2 * self.fe.hop  # samples per 50-Hz beat frame (20 ms)
        n = max(1, int(round(ms * self.sr / 1000.0 / step)))
        self.hop = n * step
        self.hop_ms = self.hop * 1000.0 / self.sr

    def set_hop(self, ms: float) -> None:
        """New hop length (rounded to a multiple of 20 ms; read back ``hop_ms``). Takes effect
        from the next hop; the stream is not reset."""
        self._set_hop_value(ms)
        self._next_end = self._last_end + self.hop  # the grid continues from the last hop's end

    def reset(self) -> None:
        """Start a new stream at the ring's current position: front end, window, beat tracker and
        counters are cleared (the ring and its overrun count are kept)."""
        self._origin = self.ring.written
        self._stream = StreamingLogMel(self.fe)
        self._frame0 = 0  # frame index (from origin) of the streaming front end's first frame
        self._pos = self._origin  # samples before this went through the front end
        self._mel = np.zeros((self.fe.n_mels, self.W), dtype=np.float32)
        self._filled = 0
        self._frames = 0  # frames produced since origin (window end)
        self._last_end = self._origin + self.lead
        self._next_end = self._last_end + self.hop
        self._hop_index = -1
        self._act_next: int | None = None
        self.tracker.reset(0.0)
        self._keytempo.reset()
        # mean square of the audio per 10-ms front-end hop, for the newest W frames (the window)
        self._ms = np.zeros(self.W, dtype=np.float64)
        self._ms_n = 0
        self.hops = 0
        self.drops = 0
        self.nonfinite = 0
        self.restarts = 0
        self._overruns0 = self.ring.overruns
        self.last_query = None
        if self.streaming:
            self._senc.reset()
            self._spred.reset()
            self._sdone = 0  # frame (from origin) where the next column of the streaming encoder starts
            self._srestarts = 0

    resync = reset

    # ------------------------------------------------------------------ the hop
    def counters(self) -> dict:
        return {"hops": self.hops, "drops": self.drops, "overruns": self.ring.overruns - self._overruns0,
                "nonfinite": self.nonfinite, "restarts": self.restarts}

    def act_time(self, m: int) -> float:
        """Time (s) of 50-Hz activation frame ``m`` of the current stream."""
        fpa = self.frames_per_act * self.fe.hop
        return (self._origin + m * fpa) / self.sr + self.fe.frames_centre_s(self.frames_per_act)

    def pending_hops(self) -> int:
        """Complete hops waiting (0 when ``process_hop`` would return None)."""
        w = self.ring.written
        return 0 if w < self._next_end else 1 + (w - self._next_end) // self.hop

    def process_hop(self, drop_late: bool | None = None) -> HopResult | None:
        """Compute the next hop, or None when no hop is complete. With ``drop_late`` (default:
        the constructor's) a worker that fell behind skips to the newest complete hop."""
        t_start = time.perf_counter()
        waiting = self.pending_hops()
        if waiting == 0:
            return None
        drop = self.drop_late if drop_late is None else drop_late
        end = self._next_end
        skipped = 0
        if drop and waiting > 1:
            skipped = waiting - 1
            end += skipped * self.hop
            self.drops += skipped
        self._next_end = end + self.hop
        self._last_end = end
        self._hop_index += 1 + skipped
        tm: dict[str, float] = {}

        # --- new samples -> new log-mel frames -> rolling window
        t0 = time.perf_counter()
        end_frames = (end - self._origin - self.lead) // self.fe.hop  # frames at `end` since origin
        need = prev_pos = self._pos
        restart = (end - self._pos) > self.fe.n_samples(self.W) + self.hop or self._pos < self.ring.oldest()
        if restart:
            f0 = max(0, end_frames - self.W)
            f0 -= f0 % self.frames_per_act  # keep the 50-Hz grid
            self._stream.reset()
            self._frame0 = f0
            self._frames = f0
            self._filled = 0
            need = self._origin + f0 * self.fe.hop
            self.restarts += 1
            self._act_next = None
        try:
            x = self.ring.read(need, end, out=self._scratch)
        except RingOverwritten:  # lapped while reading: start over on what is there now
            f0 = max(0, end_frames - self.W)
            f0 -= f0 % self.frames_per_act
            self._stream.reset()
            self._frame0 = self._frames = f0
            self._filled = 0
            need = self._origin + f0 * self.fe.hop
            self.restarts += 1
            self._act_next = None
            x = self.ring.read(need, end, out=self._scratch)
        self.ring.mark_read(end)
        self._pos = end
        bad = ~np.isfinite(x)
        if bad.any():
            self.nonfinite += int(bad.sum())
            x[bad] = 0.0
        level_db, hop_level_db = self._levels(x, end - need)
        signal = bool(level_db >= self.signal_threshold_db)
        tm["read"] = (time.perf_counter() - t0) * 1e3

        t0 = time.perf_counter()
        if need != prev_pos:  # a restart: the descriptor starts again on what is read now
            self._keytempo.reset(need - self._origin)  # the same frame grid, from where the read starts
        self._keytempo.push(x)
        tm["keytempo"] = (time.perf_counter() - t0) * 1e3

        t0 = time.perf_counter()
        new = self._stream.push(x)  # (80, t)
        t = new.shape[1]
        if t >= self.W:
            self._mel[:] = new[:, t - self.W:]
        elif t:
            self._mel[:, :self.W - t] = self._mel[:, t:]
            self._mel[:, self.W - t:] = new
        self._filled = min(self.W, self._filled + t)
        self._frames += t
        tm["frontend"] = (time.perf_counter() - t0) * 1e3
        assert self._frames == end_frames, (self._frames, end_frames)

        T = (self._filled // self.patch) * self.patch
        if self.streaming:
            T = self._stream_columns(tm)
        stream_time = end / self.sr
        if T < self.min_frames:
            self.hops += 1
            tm["total"] = (time.perf_counter() - t_start) * 1e3
            return HopResult(stream_time, end, self._hop_index, False, T, {}, None,
                             np.zeros(0, np.float32), None, tm, self.counters(), level_db, hop_level_db, signal)

        # --- encoder (streaming: done above, column by column)
        if not self.streaming:
            t0 = time.perf_counter()
            logmel = np.ascontiguousarray(self._mel[None, :, self.W - T:])  # (1, 80, T)
            tokens = self.backend.encode(logmel)  # (1, P, d)
            tm["encode"] = (time.perf_counter() - t0) * 1e3

        # --- predictor (one batch for all instruments) + search
        matches: dict[str, list[Match]] = {}
        if self.instruments:
            t0 = time.perf_counter()
            want = signal and self.library is not None and len(self.library)
            if self.streaming:  # the window sum of the cached per-token outputs
                emb = self._spred.embedding() if want else None
            else:
                emb = self.backend.predict(tokens, self._cond) if want else None
            tm["predict"] = tm.get("predict", 0.0) + (time.perf_counter() - t0) * 1e3
            self.last_query = emb  # (N, d) query embeddings of this hop (None: not computed)
            t0 = time.perf_counter()
            if emb is not None:
                cats = self._cats if self.restrict_category else None
                kq = self._keytempo.describe(T / self.frames_per_s) if self.ranking != "model" else None
                found = self.library.search(emb, self.k, categories=cats, keytempo=kq,
                                            keytempo_weight=self.keytempo_weight)
                matches = {n: r for n, r in zip(self.instruments, found)}
            else:
                matches = {n: [] for n in self.instruments}
            tm["search"] = (time.perf_counter() - t0) * 1e3

        # --- beats
        beat_state = None
        new_act = np.zeros(0, np.float32)
        act_time = None
        if self.enable_beats:
            t0 = time.perf_counter()
            if self.streaming:  # computed per new column above; the window's part
                act = self._sact[len(self._sact) - T // self.frames_per_act:].copy()  # results keep their values
            else:
                act = np.asarray(self.backend.beats(tokens), dtype=np.float32).reshape(-1)  # (T/2,)
            tm["beat_head"] = tm.get("beat_head", 0.0) + (time.perf_counter() - t0) * 1e3
            t0 = time.perf_counter()
            m_end = (self._sdone if self.streaming else end_frames) // self.frames_per_act
            m_start = m_end - len(act)
            if self._act_next is None or self._act_next < m_start:
                self._act_next = m_start
                self.tracker.reset(self.act_time(m_start))
            new_act = act[self._act_next - m_start:]
            if not signal or hop_level_db < self.signal_threshold_db:
                new_act = np.zeros_like(new_act)  # no onsets in silence: the tracker decays, never locks
            act_time = self.act_time(self._act_next)
            beat_state = self.tracker.process(new_act)
            self._act_next = m_end
            tm["tracker"] = (time.perf_counter() - t0) * 1e3

        self.hops += 1
        tm["total"] = (time.perf_counter() - t_start) * 1e3
        return HopResult(stream_time, end, self._hop_index, True, T, matches, beat_state, new_act, act_time, tm,
                         self.counters(), level_db, hop_level_db, signal)

    def _stream_columns(self, tm: dict) -> int:
        """Streaming path: the window's newly complete columns through the streaming encoder (its
        key/value rings), the predictor on their tokens only (per-instrument rings + window sums;
        an instrument set by :meth:`set_instruments` is computed once over the cached columns) and
        the beat head on their tokens. Columns are counted from the front end's first frame (the
        stream origin, or a restart's first frame, which resets the rings). Returns the frames of
        the window the query means over (``16 * columns``, at most ``W``)."""
        t0 = time.perf_counter()
        if self.restarts != self._srestarts:  # the front end restarted: so does the stream
            self._srestarts = self.restarts
            self._senc.reset()
            self._spred.reset()
            self._sdone = self._frame0
        pend = self._frames - self._sdone  # frames not yet in a column (newest `pend` of the window)
        c = pend // self.patch
        tokens = None
        if c:
            tokens = self._senc.push(self._mel[None, :, self.W - pend:self.W - pend + c * self.patch])
            self._sdone += c * self.patch
        tm["encode"] = (time.perf_counter() - t0) * 1e3
        t0 = time.perf_counter()
        sp = self._spred
        if sp.names != self.instruments or sp.cond is not self._cond:
            sp.set_conditions(self.instruments, self._cond)
            sp.cond = self._cond  # identity marks it current
        if tokens is not None:
            sp.push(tokens[0])
        tm["predict"] = (time.perf_counter() - t0) * 1e3
        if tokens is not None and self.enable_beats:
            t0 = time.perf_counter()
            new = np.asarray(self.backend.beats(tokens), dtype=np.float32).reshape(-1)  # (8 c,)
            n = min(len(new), len(self._sact))
            self._sact[:-n] = self._sact[n:]
            self._sact[-n:] = new[-n:]
            tm["beat_head"] = (time.perf_counter() - t0) * 1e3
        return sp.window_columns * self.patch

    def _levels(self, x: np.ndarray, n_new: int) -> tuple[float, float]:
        """(window level, hop level) in dBFS after the ``n_new`` newest samples of ``x``; the
        window keeps one mean square per 10-ms front-end hop for its W frames. Each 10-ms block's
        own mean is removed first, so a DC offset (a faulty interface, a stuck converter) is not
        taken for signal: it is silence to the model's front end too."""
        h = self.fe.hop
        new = x[len(x) - n_new:] if n_new <= len(x) else x
        k = len(new) // h
        if k:
            blocks = new[-k * h:].reshape(k, h).astype(np.float64)
            blocks = blocks - blocks.mean(axis=1, keepdims=True)
            ms = np.einsum("ij,ij->i", blocks, blocks) / h
            if k >= self.W:
                self._ms[:] = ms[-self.W:]
            else:
                self._ms[:-k] = self._ms[k:]
                self._ms[-k:] = ms
            self._ms_n = min(self.W, self._ms_n + k)
        hop_ms = float(np.var(new.astype(np.float64))) if len(new) else 0.0
        win = float(self._ms[self.W - self._ms_n:].mean()) if self._ms_n else 0.0
        return float(10.0 * np.log10(win + 1e-12)), float(10.0 * np.log10(hop_ms + 1e-12))

    # ------------------------------------------------------------------ offline
    def run_array(self, samples: np.ndarray, chunk: int = 2560, sr: int | None = None,
                  drop_late: bool = False) -> list[HopResult]:
        """Push ``samples`` ``(S,)`` (16 kHz unless ``sr`` is given) through the ring ``chunk``
        samples at a time, draining every complete hop after each write (no drops by default),
        exactly as the live path does. Continues the current stream (call :meth:`reset` first for
        a fresh one). Returns the hop results in order."""
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        if sr is not None and sr != self.sr:
            from .audio import resample

            x = resample(x, sr, self.sr)
        chunk = int(max(1, min(int(chunk), self.ring.capacity // 2)))
        out: list[HopResult] = []
        for i in range(0, len(x), chunk):
            self.ring.write(x[i:i + chunk])
            while True:
                r = self.process_hop(drop_late=drop_late)
                if r is None:
                    break
                out.append(r)
        return out
