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
and the beat stage (engine/beatstage.py): the window's 50 Hz beat activation -- the beat
network's over the new log-mel frames (``beat_source="net"``, the default when the model directory
ships it) or the encoder's beat head's (``"head"``) -- of which the values not yet seen (8 per 160
ms) go to the :class:`CausalBeatTracker`.

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

:meth:`Matcher.process_hop` runs the steps in order: ``_next_hop`` (which hop, dropping late
ones), ``_read`` (the ring's new samples; ``_restart`` after a stall or a lapped read),
``_frontend`` (key/tempo descriptor, log-mel window, beat network), the encoder (``_encode``, or
the streaming hop of engine/stream.py), ``_match`` (predictor + search), ``_beats`` (beat head or
network + tracker, engine/beatstage.py); what it returns and times is engine/hop.py, what a server
changes between hops engine/controls.py.

Non-finite samples (NaN/Inf from the callback) are replaced by 0 and counted
(``counters["nonfinite"]``). Times: ``stream_time = end_sample / 16000`` s on the ring's clock;
beat activation frame ``m`` (50 Hz, counted from the origin) is at ``(o + 320 m + 280) / 16000``
s, the centre of its two log-mel frames (:meth:`Matcher.act_time`; the training side uses the
same 17.5-ms offset).

:class:`HopResult`, :class:`BeatState` and :class:`CausalBeatTracker` are imported here too.
"""
from __future__ import annotations

import time

import numpy as np

from .beatnet import BeatNet, find_beatnet  # noqa: F401 (find_beatnet, BeatState, CausalBeatTracker: re-exported)
from .beats import BeatState, CausalBeatTracker  # noqa: F401
from .beatstage import MatcherBeats
from .controls import MatcherControls, manifest_get
from .frontend import FrontEndConfig, StreamingLogMel
from .hop import HopResult, LevelMeter, Stages
from .keytempo import DEFAULT_WEIGHT as KEYTEMPO_DEFAULT_WEIGHT
from .keytempo import KeyTempoStream
from .library import Match, StemLibrary, set_blas_threads
from .ring import RingBuffer, RingOverwritten


class Matcher(MatcherControls, MatcherBeats):
    """The live matcher; see the module docstring for the hop.

    ``backend``: an ``engine.backends`` backend (or anything with the same interface);
    ``library``: a :class:`StemLibrary` or None; ``instruments``: free-text names (may be empty);
    ``k``: matches per instrument; ``hop_ms``: hop length (rounded to 20 ms); ``window_s``:
    encoder window (a multiple of 0.16 s, at most the model's ``max_frames``);
    ``restrict_category``: search each instrument only among stems of its category (default on:
    on the validation sets the true stem ranks far higher among its own category's stems; a name
    whose category the library lacks is searched over the whole library, see
    :meth:`StemLibrary.category_of`);
    ``ring_s``: ring capacity (s); ``drop_late``: drop late hops (live) or process every hop
    (offline); ``blas_threads``: limit the process's BLAS pool (None: leave it);
    ``tracker_kw``: extra arguments for :class:`CausalBeatTracker`; ``signal_threshold_db``:
    the window level (RMS, dBFS) below which the input counts as silence (default -60 dBFS:
    digital silence, a muted input or hum well below playing level); ``stream``: the streaming
    path (module docstring; None: whenever the backend can, False: full recompute every hop);
    ``keytempo_weight``: weight of the tempo + key descriptor in the ranking, in [0, 1] (None: the
    model directory's ``ranking.keytempo_weight``, else :data:`engine.keytempo.DEFAULT_WEIGHT`; a
    library without descriptors ranks by the model alone); ``beat_source``: ``"net"`` (the beat
    network, engine/beatstage.py), ``"head"`` (the encoder's beat head), or None: the network when
    the model directory has one, else the head; ``beatnet``: a :class:`BeatNet` to use instead of
    the directory's. ``beat_source``: what the beats come from, after the choice.
    ``last_query``: the ``(N, d)`` query embeddings of the latest hop (None when not computed).
    """

    def __init__(self, backend, library: StemLibrary | None = None, instruments=(), k: int = 5,
                 hop_ms: float = 160, window_s: float = 8.0, restrict_category: bool = True, *,
                 ring_s: float = 30.0, min_window_s: float = 1.0, drop_late: bool = True,
                 blas_threads: int | None = 1, tracker_kw: dict | None = None, beats: bool = True,
                 signal_threshold_db: float = -60.0, stream: bool | None = None,
                 keytempo_weight: float | None = None, beat_source: str | None = None,
                 beatnet: BeatNet | None = None):
        self.backend = backend
        if not np.isfinite(signal_threshold_db):
            raise ValueError(f"signal_threshold_db must be finite, not {signal_threshold_db}")
        self.signal_threshold_db = float(signal_threshold_db)
        fe = manifest_get(backend, "frontend")
        self.fe = FrontEndConfig.from_dict(fe) if isinstance(fe, dict) else FrontEndConfig()
        cfg = manifest_get(backend, "config") or {}
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
        self._init_beats(beat_source, beatnet, tracker_kw)
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
            from .stream import StreamingHop

            self._shop = StreamingHop(backend, cfg, window_columns=self.W // self.patch)
        self._keytempo = KeyTempoStream(window_s)
        if keytempo_weight is None:
            keytempo_weight = (manifest_get(backend, "ranking") or {}).get("keytempo_weight", KEYTEMPO_DEFAULT_WEIGHT)
        self.keytempo_weight = 0.0
        self.set_keytempo_weight(keytempo_weight)
        self.set_k(k)
        self.set_library(library)
        self.set_instruments(instruments)
        self.hop_ms = 0.0
        self.hop = 0
        self._set_hop_value(hop_ms)
        self._scratch = np.empty(cap, dtype=np.float32)
        self._levels = LevelMeter(self.W, self.fe.hop)  # the window's and the hop's input level (dBFS)
        self.reset()

    # ------------------------------------------------------------------ the hop grid
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
        self._reset_beats()
        self._keytempo.reset()
        self._levels.reset()
        self.hops = 0
        self.drops = 0
        self.nonfinite = 0
        self.restarts = 0
        self._overruns0 = self.ring.overruns
        self.last_query = None
        if self.streaming:
            self._shop.reset()

    resync = reset

    # ------------------------------------------------------------------ the hop
    def counters(self) -> dict:
        return {"hops": self.hops, "drops": self.drops, "overruns": self.ring.overruns - self._overruns0,
                "nonfinite": self.nonfinite, "restarts": self.restarts}

    def pending_hops(self) -> int:
        """Complete hops waiting (0 when ``process_hop`` would return None)."""
        w = self.ring.written
        return 0 if w < self._next_end else 1 + (w - self._next_end) // self.hop

    def process_hop(self, drop_late: bool | None = None) -> HopResult | None:
        """Compute the next hop, or None when no hop is complete. With ``drop_late`` (default:
        the constructor's) a worker that fell behind skips to the newest complete hop."""
        t_start = time.perf_counter()
        end = self._next_hop(drop_late)
        if end is None:
            return None
        st = Stages()
        end_frames = (end - self._origin - self.lead) // self.fe.hop  # frames at `end` since origin
        prev_pos = self._pos
        x, start, level_db, hop_level_db = self._read(end, end_frames, st)
        signal = bool(level_db >= self.signal_threshold_db)
        self._frontend(x, start != prev_pos, start, st)
        assert self._frames == end_frames, (self._frames, end_frames)
        if self.streaming:  # the new columns through the encoder, predictor and beat head (engine/stream.py)
            T = self._shop.push(self._mel, self._frames, self._frame0, self.restarts, self.instruments, self._cond,
                                self.enable_beats and self.beatnet is None, st)
        else:
            T = (self._filled // self.patch) * self.patch
        ready = T >= self.min_frames
        matches, beat_state, new_act, act_time, new_down, new_tempo = {}, None, np.zeros(0, np.float32), None, None, None
        if ready:
            tokens = None if self.streaming else self._encode(T, st)  # streaming: column by column above
            matches = self._match(tokens, T, signal, st)
            if self.enable_beats:
                quiet = not signal or hop_level_db < self.signal_threshold_db
                beat_state, new_act, act_time, new_down, new_tempo = self._beats(tokens, T, end_frames, quiet, st)
        self.hops += 1
        st.ms["total"] = (time.perf_counter() - t_start) * 1e3
        return HopResult(end / self.sr, end, self._hop_index, ready, T, matches, beat_state, new_act, act_time,
                         st.ms, self.counters(), level_db, hop_level_db, signal, downbeat_activation=new_down,
                         tempo_activation=new_tempo)

    def _next_hop(self, drop_late: bool | None) -> int | None:
        """End (ring position) of the hop to compute now, or None when none is complete; with
        ``drop_late`` a worker that fell behind skips to the newest complete hop (counted)."""
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
        return end

    def _restart(self, end_frames: int) -> int:
        """Start the front end again on the newest window before the hop's end (after a stall,
        or a ring that lapped the reader), on the 50-Hz grid. Returns where reading starts."""
        f0 = max(0, end_frames - self.W)
        f0 -= f0 % self.frames_per_act  # keep the 50-Hz grid
        self._stream.reset()
        self._frame0 = self._frames = f0
        self._filled = 0
        self.restarts += 1
        self._restart_beats(f0)
        return self._origin + f0 * self.fe.hop

    def _read(self, end: int, end_frames: int, st: Stages) -> tuple[np.ndarray, int, float, float]:
        """The samples the front end has not seen, up to ``end`` (non-finite ones zeroed and
        counted): ``(samples, ring position of the first, window level, hop level)``."""
        with st("read"):
            start = self._pos
            if (end - self._pos) > self.fe.n_samples(self.W) + self.hop or self._pos < self.ring.oldest():
                start = self._restart(end_frames)
            try:
                x = self.ring.read(start, end, out=self._scratch)
            except RingOverwritten:  # lapped while reading: start over on what is there now
                start = self._restart(end_frames)
                x = self.ring.read(start, end, out=self._scratch)
            self.ring.mark_read(end)
            self._pos = end
            bad = ~np.isfinite(x)
            if bad.any():
                self.nonfinite += int(bad.sum())
                x[bad] = 0.0
            level_db, hop_level_db = self._levels(x, end - start)
        return x, start, level_db, hop_level_db

    def _frontend(self, x: np.ndarray, restarted: bool, start: int, st: Stages) -> None:
        """The new samples into the key/tempo descriptor and the streaming log-mel, whose new
        frames roll into the window."""
        with st("keytempo"):
            if restarted:  # a restart: the descriptor starts again on what is read now
                self._keytempo.reset(start - self._origin)  # the same frame grid, from where the read starts
            self._keytempo.push(x)
        with st("frontend"):
            new = self._stream.push(x)  # (80, t)
            t = new.shape[1]
            if t >= self.W:
                self._mel[:] = new[:, t - self.W:]
            elif t:
                self._mel[:, :self.W - t] = self._mel[:, t:]
                self._mel[:, self.W - t:] = new
            self._filled = min(self.W, self._filled + t)
            self._frames += t
        self._push_beatnet(new, st)

    def _encode(self, T: int, st: Stages) -> np.ndarray:
        """The full path's encoder over the newest ``T`` frames of the window: ``(1, P, d)``."""
        with st("encode"):
            return self.backend.encode(np.ascontiguousarray(self._mel[None, :, self.W - T:]))  # (1, 80, T) in

    def _match(self, tokens, T: int, signal: bool, st: Stages) -> dict[str, list[Match]]:
        """The predictor for every instrument in one batch (streaming: the window sum of the cached
        per-token outputs), then the library's top k per instrument; with no signal, no matches."""
        if not self.instruments:
            return {}
        with st("predict"):
            emb = None
            if signal and self.library is not None and len(self.library):
                emb = self._shop.predictor.embedding() if self.streaming else self.backend.predict(tokens, self._cond)
        self.last_query = emb  # (N, d) query embeddings of this hop (None: not computed)
        with st("search"):
            if emb is None:
                return {n: [] for n in self.instruments}
            cats = self._cats if self.restrict_category else None
            kq = self._keytempo.describe(T / self.frames_per_s) if self.ranking != "model" else None
            found = self.library.search(emb, self.k, categories=cats, keytempo=kq,
                                        keytempo_weight=self.keytempo_weight)
            return {n: r for n, r in zip(self.instruments, found)}

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
