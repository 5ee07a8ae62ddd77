"""The stem library's builder: every stem of a folder as 8-s segments embedded by the model's
target encoder (:func:`build`, resumable), with each stem's beat grid (:class:`GridEstimator`,
:mod:`engine.stemgrid`) and each segment's tempo + key descriptor (:func:`segment_keytempo`,
:mod:`engine.keytempo`); and, for an index built before them, :func:`add_grids` and
:func:`add_keytempo`, which keep its embeddings. The stems of a folder are
:mod:`engine.library.stems` (:func:`find_stems`, re-exported here); the command line over them is
:mod:`engine.library.command` (``python -m engine.library``).
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ..audio import AUDIO_EXTENSIONS, AudioError, load_audio  # noqa: F401 (AUDIO_EXTENSIONS: re-exported)
from ..frontend import FrontEndConfig, LogMel
from ..keytempo import DIM as KEYTEMPO_DIM
from ..keytempo import describe as keytempo_describe
from .index import StemLibrary, category_from_label, pool_tokens  # noqa: F401 (category_from_label: re-exported)
from .stems import StemFile, find_stems, label_from_filename  # noqa: F401 (label_from_filename: re-exported)
from .store import LibraryError, npz_path


def _backend_fingerprint(backend) -> str | None:
    m = getattr(backend, "manifest", None)
    return getattr(m, "fingerprint", None) if m is not None else None


def _backend_frontend(backend) -> FrontEndConfig:
    m = getattr(backend, "manifest", None)
    fe = getattr(m, "frontend", None) if m is not None else None
    return FrontEndConfig.from_dict(fe) if isinstance(fe, dict) else FrontEndConfig()


def segment_frames(n_frames: int, window: int, hop: int, patch: int = 16, min_frames: int = 96) -> list[tuple[int, int]]:
    """``[(start, length)]`` of segments (log-mel frames): full windows every ``hop`` frames; a
    stem shorter than one window gives one segment of its length rounded down to ``patch``
    (none if that is under ``min_frames``)."""
    if n_frames >= window:
        return [(s, window) for s in range(0, n_frames - window + 1, hop)]
    t = (n_frames // patch) * patch
    return [(0, t)] if t >= min_frames else []


LIBRARY_TOKENS = ("window", "stream")  # how a segment's tokens are computed (embed_stem)


def stem_streamer(backend):
    """A :class:`engine.stream.StreamingEncoder` over the backend's streaming target encoder, or
    None when the backend cannot stream (a bidirectional model, or no streaming graphs)."""
    if getattr(backend, "stream", None) is None or not hasattr(backend, "encode_target_step"):
        return None
    from ..controls import manifest_get
    from ..stream import StreamingEncoder

    return StreamingEncoder(backend.encode_target_step, manifest_get(backend, "config") or {})


def embed_stem(backend, samples: np.ndarray, logmel: LogMel, *, window: int, hop: int, batch: int = 8,
               min_rms_db: float = -60.0, streamer=None) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    """One stem's segments -> (embeddings (n, d), offsets (n,) s, silent segments skipped,
    key/tempo descriptors (n, 188)).

    ``streamer`` (:func:`stem_streamer`): the segments' tokens are those of one causal stream over
    the whole stem (each token has seen up to 8 s before it, as the live path's tokens have,
    :func:`engine.stream.embed_stream`), instead of each 8-s window encoded on its own. Segment
    starts and lengths are then whole 160-ms columns (the default 4-s hop is)."""
    cfg = logmel.cfg
    # pad n_fft - hop zeros so that S samples give exactly S // hop frames: an 8.00-s stem then
    # holds one full 800-frame window (the last frame reaches 15 ms past the end)
    padded = np.concatenate([samples, np.zeros(cfg.n_fft - cfg.hop, dtype=np.float32)])
    feats = logmel(padded)  # (80, T)
    segs = segment_frames(feats.shape[1], window, hop)
    keep = []
    silent = 0
    for s, t in segs:
        a = s * cfg.hop
        x = samples[a:a + cfg.n_samples(t)]
        rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0
        if 20 * np.log10(max(rms, 1e-12)) < min_rms_db:
            silent += 1
            continue
        keep.append((s, t))
    embs = []
    kts = [segment_keytempo(samples, s * cfg.hop, window * cfg.hop) for s, _ in keep]
    offs = [s * cfg.hop / cfg.sample_rate for s, _ in keep]
    if streamer is not None and keep:  # starts and lengths are whole columns (checked by build)
        from ..stream import embed_stream

        patch = streamer.patch
        end = max(s + t for s, t in keep)
        embs.append(embed_stream(streamer, feats[:, :end], [s // patch for s, _ in keep], keep[0][1] // patch))
    else:
        for i in range(0, len(keep), batch):
            group = keep[i:i + batch]
            t = group[0][1]
            x = np.stack([feats[:, s:s + t] for s, _ in group]).astype(np.float32)  # (B, 80, t)
            embs.append(pool_tokens(backend.encode_target(x)))
    if not embs:
        return (np.zeros((0, 0), dtype=np.float32), np.zeros(0, dtype=np.float32), silent,
                np.zeros((0, KEYTEMPO_DIM), dtype=np.float32))
    return (np.concatenate(embs).astype(np.float32), np.asarray(offs, dtype=np.float32), silent,
            np.stack(kts).astype(np.float32))


class GridEstimator:
    """Each stem's grid for the builder (:mod:`engine.stemgrid`). Stems of the dataset layout
    (listed in a ``track.json``) are fitted together: every stem of the track gets its own grid,
    then :func:`engine.stemgrid.track_consensus` gives them one tempo, phase and bar phase (a stem
    whose own grid disagrees gets the track's, ``scope: "track"``). Any other stem keeps its own
    grid (``scope: "stem"``)."""

    def __init__(self, stems: Sequence[StemFile], sample_rate: int):
        self.sr = int(sample_rate)
        self.by_track: dict[str, list[StemFile]] = {}
        for s in stems:
            if s.in_table:
                self.by_track.setdefault(s.track_id, []).append(s)
        self._done: dict[str, dict] = {}

    def _track(self, track_id: str) -> None:
        from ..stemgrid import estimate_grid, track_consensus

        grids, durs = {}, {}
        for s in self.by_track[track_id]:
            try:
                x = load_audio(s.path, self.sr)
            except AudioError:
                continue
            grids[s.stem_id], durs[s.stem_id] = estimate_grid(x, self.sr), len(x) / self.sr
        for k, g in track_consensus(grids, durs).items():
            self._done[k] = {"duration": round(durs[k], 4), "grid": None if g is None else g.to_dict()}

    def __call__(self, st: StemFile, x: np.ndarray) -> dict:
        """``{"duration": s, "grid": dict or None}`` for a stem and its audio at ``sample_rate``."""
        from ..stemgrid import estimate_grid

        if st.in_table and len(self.by_track.get(st.track_id, ())) > 1:
            if st.stem_id not in self._done:
                self._track(st.track_id)
            if st.stem_id in self._done:
                return self._done[st.stem_id]
        grid = estimate_grid(x, self.sr)
        return {"duration": round(len(x) / self.sr, 4), "grid": None if grid is None else grid.to_dict()}


def _rel_path(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` (``/``-separated), or absolute when it is not under it."""
    try:
        return Path(os.path.abspath(path)).relative_to(Path(os.path.abspath(root))).as_posix()
    except ValueError:
        return Path(os.path.abspath(path)).as_posix()


def _audio_root_info(audio_dir: str | Path, index: Path) -> str:
    return Path(os.path.relpath(os.path.abspath(audio_dir), os.path.abspath(index.parent))).as_posix()


def add_grids(lib: StemLibrary, audio_dir: str | Path | None = None, *, log=None) -> StemLibrary:
    """Estimate every stem's duration and grid from its audio and rewrite its ``path`` relative
    to ``audio_dir`` (default: the library's audio root, else the folder the build ran on);
    embeddings are kept. The library is saved back to its index file. Returns it."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    if lib.index_path is None:
        raise LibraryError("add_grids needs a library loaded from (or saved to) an index file")
    old_files = [lib.stem_file(s) for s in lib.stems]
    root = Path(audio_dir) if audio_dir is not None else (lib.audio_root or Path(lib.info.get("audio_dir", ".")))
    if not root.is_dir():
        raise LibraryError(f"{root}: not a folder (pass the audio folder the index was built from)")
    found = {s.stem_id: s for s in find_stems(root)}
    files = []
    for st, f in zip(lib.stems, old_files):
        sf = found.get(st["stem_id"])
        if sf is None:
            if f is None or not f.is_file():
                raise LibraryError(f"stem {st['stem_id']!r}: no audio file under {root}")
            sf = StemFile(f, st["stem_id"], st["track_id"], st["label"], st["category"], False)
        files.append(sf)
    est = GridEstimator(files, 16000)
    for st, sf in zip(lib.stems, files):
        st.update(est(sf, load_audio(sf.path, 16000)))
        st["path"] = _rel_path(sf.path, root)
    lib.info["audio_root"] = _audio_root_info(root, lib.index_path)
    lib.save(lib.index_path)
    n = sum(1 for s in lib.stems if s.get("grid"))
    log(f"grids for {n} of {lib.n_stems} stems; paths relative to {lib.audio_root} -> {lib.index_path}")
    return lib


def segment_keytempo(samples: np.ndarray, start: int, window: int) -> np.ndarray:
    """A segment's key/tempo descriptor: the window of audio from ``start`` (samples), ``window``
    samples long (a stem shorter than that: what there is)."""
    return keytempo_describe(samples[start:start + window])


def add_keytempo(lib: StemLibrary, audio_dir: str | Path | None = None, *, log=None) -> StemLibrary:
    """Compute every segment's key/tempo descriptor from its stem's audio (``audio_dir``, default
    the library's audio root) for an index built before them; embeddings are kept. The library is
    saved back to its index file. Returns it."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    if lib.index_path is None:
        raise LibraryError("add_keytempo needs a library loaded from (or saved to) an index file")
    root = Path(audio_dir) if audio_dir is not None else lib.audio_root
    found = {s.stem_id: s.path for s in find_stems(root)} if root is not None and root.is_dir() else {}
    win = int(round(lib.window_s * 16000))
    kt = np.zeros((len(lib), KEYTEMPO_DIM), np.float32)
    for si, st in enumerate(lib.stems):
        rows = np.flatnonzero(lib.seg_stem == si)
        if not len(rows):
            continue
        f = found.get(st["stem_id"]) or lib.stem_file(st)
        if f is None or not Path(f).is_file():
            raise LibraryError(f"stem {st['stem_id']!r}: no audio file (pass the audio folder the index was built from)")
        x = load_audio(f, 16000)
        for r in rows:
            kt[r] = segment_keytempo(x, int(round(float(lib.seg_offset[r]) * 16000)), win)
    lib.keytempo = kt
    lib.save(lib.index_path)
    log(f"key/tempo descriptors for {len(lib)} segments of {lib.n_stems} stems -> {lib.index_path}")
    return lib


def build(audio_dir: str | Path, backend, out: str | Path, hop_s: float = 4.0, resume: bool = True, *,
          window_s: float = 8.0, batch: int = 8, min_rms_db: float = -60.0, progress: bool = True,
          checkpoint_every: int = 25, log=None, tokens: str = "window") -> StemLibrary:
    """Index every stem under ``audio_dir`` with ``backend.encode_target`` and save to ``out``.

    ``tokens``: ``"window"`` encodes each segment's 8 s on its own; ``"stream"`` takes them from one
    causal stream over the whole stem (:func:`embed_stem`; a causal model with streaming graphs),
    as the live path computes its queries. Written to ``library.info["tokens"]``.

    Segments of ``window_s`` every ``hop_s`` seconds (both multiples of 10 ms); segments quieter
    than ``min_rms_db`` dBFS RMS are skipped (a stem is only a candidate where it plays).
    ``resume``: an existing index at ``out`` built by the same model with the same hop is
    extended, skipping stems already done (indexed or found silent); stems that failed before
    are retried. The partial index is saved every ``checkpoint_every`` stems, and at the end.
    Unreadable files (:class:`engine.audio.AudioError`) are skipped and reported in
    ``library.info["failed"]`` and through ``log``. Returns the library.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    if tokens not in LIBRARY_TOKENS:
        raise LibraryError(f"tokens={tokens!r}: one of {', '.join(LIBRARY_TOKENS)}")
    streamer = stem_streamer(backend) if tokens == "stream" else None
    if tokens == "stream" and streamer is None:
        raise LibraryError("streamed library tokens need a causal model whose directory has the streaming graphs; "
                           "use tokens='window' (--tokens window) with this model")
    fp = _backend_fingerprint(backend)
    fe = _backend_frontend(backend)
    lm = LogMel(fe)
    frames_per_s = fe.sample_rate / fe.hop
    window = int(round(window_s * frames_per_s))
    hop = int(round(hop_s * frames_per_s))
    if window <= 0 or window % 16 or hop <= 0:
        raise ValueError("window_s must give a positive multiple of 16 frames and hop_s must be positive")
    if streamer is not None and hop % streamer.patch:
        raise LibraryError(f"streamed segments start on whole columns of {streamer.patch} frames: give a hop that is "
                           f"a multiple of {streamer.patch / frames_per_s:g} s (e.g. the default 4.0)")
    stems = find_stems(audio_dir)
    out_p = npz_path(out)

    embs: list[np.ndarray] = []
    seg_stem: list[np.ndarray] = []
    seg_off: list[np.ndarray] = []
    kts: list[np.ndarray] = []
    stem_meta: list[dict] = []
    done: set[str] = set()
    empty: list[str] = []
    if resume and out_p.is_file():
        old = StemLibrary.load(out_p)
        if (old.fingerprint != fp or abs(old.hop_s - hop_s) > 1e-9 or abs(old.window_s - window_s) > 1e-9
                or old.info.get("tokens", "window") != tokens):
            raise LibraryError(f"{out_p}: existing index was built by another model or with another hop/window/tokens; "
                               f"remove it or pass resume=False (--no-resume)")
        stem_meta = old.stems
        if old.info.get("audio_root") is None or any("grid" not in s for s in stem_meta):
            raise LibraryError(f"{out_p}: this index predates beat grids and audio roots; add them with "
                               f"'python -m engine.library grid {out_p} --audio-dir {audio_dir}' first, "
                               f"or rebuild with --no-resume")
        if len(old) and old.keytempo is None:
            log(f"{out_p}: adding the key/tempo descriptors this index predates")
            add_keytempo(old, audio_dir, log=log)
        if len(old):
            embs.append(old.embeddings)
            seg_stem.append(old.seg_stem)
            seg_off.append(old.seg_offset)
            kts.append(old.keytempo)
        empty = list(old.info.get("empty", []))
        done = {s["stem_id"] for s in stem_meta} | set(empty)
        log(f"resuming {out_p}: {len(done)} stems already done")

    failed: list[dict] = []
    silent_total = 0
    todo = [s for s in stems if s.stem_id not in done]
    t0 = time.time()

    def snapshot() -> StemLibrary:
        d = embs[0].shape[1] if embs else 0
        e = np.concatenate(embs) if embs else np.zeros((0, d), dtype=np.float32)
        lib = StemLibrary(e, np.concatenate(seg_stem) if seg_stem else np.zeros(0, np.int32),
                          np.concatenate(seg_off) if seg_off else np.zeros(0, np.float32), stem_meta,
                          fingerprint=fp, hop_s=hop_s, window_s=window_s, normalise=False,
                          keytempo=np.concatenate(kts) if kts else np.zeros((0, KEYTEMPO_DIM), np.float32),
                          info={"audio_dir": str(audio_dir), "audio_root": _audio_root_info(audio_dir, out_p),
                                "failed": failed, "empty": empty,
                                "min_rms_db": min_rms_db, "backend": getattr(backend, "name", None),
                                "tokens": tokens})
        lib.save(out_p)
        return lib

    bar = None
    if progress:
        try:
            from tqdm import tqdm

            bar = tqdm(total=len(todo), unit="stem", desc="indexing", file=sys.stderr)
        except ImportError:
            bar = None
    n_new = 0
    grids = GridEstimator(stems, fe.sample_rate)
    for st in todo:
        try:
            x = load_audio(st.path, fe.sample_rate)
            e, off, silent, kt = embed_stem(backend, x, lm, window=window, hop=hop, batch=batch,
                                            min_rms_db=min_rms_db, streamer=streamer)
            extras = grids(st, x) if len(e) else {}
        except AudioError as err:
            failed.append({"stem_id": st.stem_id, "path": str(st.path), "error": str(err)})
            log(f"skipped {st.path}: {err}")
            e, off, silent = None, None, 0
        silent_total += silent
        if e is not None:
            if len(e):
                idx = len(stem_meta)
                stem_meta.append({"stem_id": st.stem_id, "track_id": st.track_id, "label": st.label,
                                  "category": st.category, "path": _rel_path(st.path, Path(audio_dir)), **extras})
                embs.append(e)
                seg_stem.append(np.full(len(e), idx, dtype=np.int32))
                seg_off.append(off)
                kts.append(kt)
            else:
                empty.append(st.stem_id)
        n_new += 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(segments=sum(len(a) for a in embs), failed=len(failed))
        if checkpoint_every and n_new % checkpoint_every == 0:
            snapshot()
    if bar is not None:
        bar.close()
    lib = snapshot()
    log(f"indexed {len(todo) - len(failed)} stems in {time.time() - t0:.1f} s -> {len(lib)} segments "
        f"({lib.n_stems} stems in the index, {silent_total} silent segments skipped, {len(failed)} bad files) -> {out_p}")
    return lib


