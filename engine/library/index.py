"""The stem library's index, :class:`StemLibrary`: the segments' embeddings, the stem table, and
their exact search (the package docstring, :mod:`engine.library`, says what the index holds).

Search (:meth:`StemLibrary.search`) is exact: one matmul of the queries against the embeddings
(cosine similarity; on unit vectors it ranks exactly like the Euclidean distance of the
reference code) and ``argpartition``. With a live descriptor and a weight ``a`` (``search(..., keytempo=kq,
keytempo_weight=a)``) a segment scores ``(1 - a) * cos(query, embedding) + a * cos(kq, keytempo)``:
the model says what fits in kind, the descriptor whether it shares the key and the pulse
(docs/keytempo.md). Segments are stored sorted by category so that a
category-restricted query multiplies a contiguous slice (a view, no copy). **Results hold at
most one match per stem** (its best segment, whose offset is reported), so the ``k`` results
name ``k`` different stems; ``unique="segment"`` returns raw segments instead. When the optional
``faiss`` package is installed and the library holds more than :data:`FAISS_MIN_SEGMENTS`
segments, unrestricted queries use a faiss exact inner-product index.

Files (:mod:`engine.library.store`): :meth:`StemLibrary.save` and :meth:`StemLibrary.load`; the
index builder is :mod:`engine.library.builder`, which this module does not import.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..categories import category_of
from ..contract import pool
from ..keytempo import DIM as KEYTEMPO_DIM
from .store import FORMAT, VERSION, LibraryError, read_index, write_index

FAISS_MIN_SEGMENTS = 100_000


@dataclass(frozen=True)
class Match:
    """One search hit. ``offset``: start of the matching 8-s segment in the stem (s);
    ``score``: cosine similarity in [-1, 1] (higher is better)."""

    stem_id: str
    track_id: str
    label: str
    category: str
    offset: float
    score: float

    def to_dict(self) -> dict:
        return asdict(self)


#: ``(B, P, d)`` tokens -> ``(B, d)`` float32: mean over patches, layer norm, L2 (the contract's pooling)
pool_tokens = pool


def set_blas_threads(n: int | None) -> bool:
    """Limit the BLAS thread pool (used by :meth:`StemLibrary.search`) to ``n`` threads for the
    whole process, through ``threadpoolctl`` when installed. On a busy 2-core machine one thread
    was 2-40x faster than two for these matrix-vector products. Returns False when it could not."""
    if n is None:
        return False
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return False
    threadpool_limits(limits=int(n), user_api="blas")
    return True


def _l2(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def category_from_label(label: str) -> str:
    """Coarse category (bass, drums, vocals, other) from a free-text label (engine.categories)."""
    return category_of(label)


def _ranges(sorted_names: np.ndarray) -> dict[str, tuple[int, int]]:
    """``{name: (start, end)}`` of each run of equal names in a sorted ``(S,)`` array."""
    out: dict[str, tuple[int, int]] = {}
    for c in dict.fromkeys(sorted_names.tolist()):
        idx = np.flatnonzero(sorted_names == c)
        out[c] = (int(idx[0]), int(idx[-1]) + 1)
    return out


class StemLibrary:
    """Index of stem segments. Build with :func:`engine.library.build`, :meth:`from_arrays` or :meth:`load`.

    Attributes: ``embeddings (S, d)`` float32 unit rows (sorted by category), ``seg_stem (S,)``
    int32 index into ``stems``, ``seg_offset (S,)`` float32 seconds, ``stems`` list of dicts
    (``stem_id, track_id, label, category, path``), ``fingerprint`` (str or None), ``hop_s``,
    ``window_s``, ``info`` (free dict: build report etc.), ``keytempo`` ``(S, 188)`` float32
    unit rows in the same order, or None (an index built before the descriptors).
    """

    def __init__(self, embeddings: np.ndarray, seg_stem: np.ndarray, seg_offset: np.ndarray, stems: list[dict],
                 *, fingerprint: str | None = None, hop_s: float = 4.0, window_s: float = 8.0,
                 info: dict | None = None, normalise: bool = True, keytempo: np.ndarray | None = None):
        e = np.asarray(embeddings, dtype=np.float32)
        if e.ndim != 2:
            raise LibraryError(f"embeddings must be (S, d), got shape {e.shape}")
        seg_stem = np.asarray(seg_stem, dtype=np.int32).reshape(-1)
        seg_offset = np.asarray(seg_offset, dtype=np.float32).reshape(-1)
        if not (len(seg_stem) == len(seg_offset) == len(e)):
            raise LibraryError("embeddings, seg_stem and seg_offset must have the same length")
        if len(seg_stem) and (seg_stem.min() < 0 or seg_stem.max() >= len(stems)):
            raise LibraryError("seg_stem refers to a stem that is not listed")
        if not np.all(np.isfinite(e)):
            raise LibraryError("embeddings contain non-finite values")
        if normalise:
            e = _l2(e)
        kt = None
        if keytempo is not None:
            kt = np.asarray(keytempo, dtype=np.float32)
            if kt.shape != (len(e), KEYTEMPO_DIM):
                raise LibraryError(f"keytempo must be ({len(e)}, {KEYTEMPO_DIM}), got shape {kt.shape}")
            if not np.all(np.isfinite(kt)):
                raise LibraryError("keytempo descriptors contain non-finite values")
        self.stems = [dict(s) for s in stems]
        cats = np.array([self.stems[i]["category"] for i in seg_stem], dtype=object).astype(str)
        # a library's categories may be finer than the four of engine.categories (GM families:
        # "piano", "reed", ...); each falls in one coarse category, and segments are sorted by
        # (coarse, category, stem, offset) so that both are contiguous slices
        coarse_of = {c: category_of(c) for c in dict.fromkeys(cats.tolist())}
        coarse = np.array([coarse_of[c] for c in cats.tolist()], dtype=str)
        order = np.lexsort((seg_offset, seg_stem, cats, coarse)) if len(e) else np.zeros(0, dtype=np.int64)
        self.embeddings = np.ascontiguousarray(e[order])
        self.keytempo = None if kt is None else np.ascontiguousarray(kt[order])
        self.seg_stem = seg_stem[order]
        self.seg_offset = seg_offset[order]
        self.fingerprint = fingerprint
        self.hop_s = float(hop_s)
        self.window_s = float(window_s)
        self.info = dict(info or {})
        # contiguous [start, end) per category, and per coarse category (engine.categories)
        self._cat_range = _ranges(cats[order] if len(e) else np.zeros(0, dtype=str))
        self._coarse_range = _ranges(coarse[order] if len(e) else np.zeros(0, dtype=str))
        self._labels = {}
        for s in self.stems:
            self._labels.setdefault(s["label"].lower(), s["category"])
        self._faiss = None
        self.index_path: Path | None = None  # set by load() / save()
        self._by_id: dict[str, int] | None = None

    # ------------------------------------------------------------------ playable stems
    def stem_by_id(self, stem_id: str) -> dict | None:
        """The stem table entry of ``stem_id`` (None when this library has no such stem)."""
        if self._by_id is None:
            self._by_id = {s["stem_id"]: i for i, s in enumerate(self.stems)}
        i = self._by_id.get(str(stem_id))
        return None if i is None else self.stems[i]

    @property
    def audio_root(self) -> Path | None:
        """Absolute folder the stems' ``path`` entries are relative to (None for an index built
        before audio roots existed: its paths are then made absolute against the working folder)."""
        root = self.info.get("audio_root")
        if root is None:
            return None
        base = self.index_path.parent if self.index_path is not None else Path.cwd()
        return Path(os.path.abspath(base / root))

    def stem_file(self, stem: dict) -> Path | None:
        """Absolute path of a stem's audio file (None when the stem has no path)."""
        p = stem.get("path") or ""
        if not p:
            return None
        root = self.audio_root
        return Path(os.path.abspath((root / p) if root is not None else p))

    def segment_length(self, stem: dict, offset: float) -> float:
        """Length (s) of the segment starting at ``offset``: ``window_s``, or less at a stem's end."""
        dur = stem.get("duration")
        if dur is None:
            return self.window_s
        return float(max(0.0, min(self.window_s, float(dur) - float(offset))))

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_arrays(cls, embeddings: np.ndarray, stem_ids: Sequence[str], *, track_ids: Sequence[str] | None = None,
                    labels: Sequence[str] | None = None, categories: Sequence[str] | None = None,
                    offsets: Sequence[float] | None = None, fingerprint: str | None = None,
                    hop_s: float = 4.0, window_s: float = 8.0, keytempo: np.ndarray | None = None) -> "StemLibrary":
        """Library from per-segment arrays (benches, tests): ``embeddings (S, d)`` (normalised
        here), ``stem_ids (S,)``; optional per-segment ``track_ids``, ``labels``, ``categories``
        (default: the stem id, label = stem id, category from the label), ``offsets`` (s) and
        ``keytempo (S, 188)`` descriptors."""
        n = len(stem_ids)
        stems: list[dict] = []
        index: dict[str, int] = {}
        seg_stem = np.empty(n, dtype=np.int32)
        for i, sid in enumerate(stem_ids):
            sid = str(sid)
            if sid not in index:
                label = str(labels[i]) if labels is not None else sid
                index[sid] = len(stems)
                stems.append({"stem_id": sid, "track_id": str(track_ids[i]) if track_ids is not None else sid,
                              "label": label,
                              "category": str(categories[i]) if categories is not None else category_from_label(label),
                              "path": ""})
            seg_stem[i] = index[sid]
        off = np.zeros(n, dtype=np.float32) if offsets is None else np.asarray(offsets, dtype=np.float32)
        return cls(embeddings, seg_stem, off, stems, fingerprint=fingerprint, hop_s=hop_s, window_s=window_s,
                   keytempo=keytempo)

    # ------------------------------------------------------------------ properties
    def __len__(self) -> int:
        return len(self.embeddings)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def n_stems(self) -> int:
        return len(self.stems)

    @property
    def n_tracks(self) -> int:
        return len({s["track_id"] for s in self.stems})

    @property
    def categories(self) -> list[str]:
        return sorted(self._cat_range)

    def category_of(self, name: str) -> str | None:
        """Category for an instrument name: the category of a stem with exactly that label, the
        name itself when it is a category of this library, or the coarse category its words name
        (engine.categories: "fretless bass" -> bass, "warm synth pad" -> other, which in a
        library of GM families holds piano, reed, synth lead, ...) when this library has stems of
        it; else None (no restriction: a library without any stem of that category is searched
        whole rather than answering nothing). :meth:`search` takes any of these names."""
        n = " ".join(str(name).strip().lower().split())
        if n in self._labels:
            return self._labels[n]
        if n in self._cat_range or n in self._coarse_range:
            return n
        cat = category_of(n)
        return cat if cat in self._coarse_range else None

    def summary(self) -> dict:
        return {"segments": len(self), "stems": self.n_stems, "tracks": self.n_tracks,
                "dim": self.dim if len(self) else None, "categories": {c: b - a for c, (a, b) in self._cat_range.items()},
                "fingerprint": self.fingerprint, "hop_s": self.hop_s, "window_s": self.window_s,
                "keytempo": self.keytempo is not None}

    # ------------------------------------------------------------------ search
    def _faiss_index(self):
        if self._faiss is None:
            try:
                import faiss  # type: ignore
            except ImportError:
                self._faiss = False
                return False
            idx = faiss.IndexFlatIP(self.dim)
            idx.add(self.embeddings)
            self._faiss = idx
        return self._faiss

    def _select(self, scores: np.ndarray, base: int, k: int, unique: str | None) -> list[Match]:
        """Top-k matches from one query's scores over segments ``[base, base + len(scores))``."""
        n = len(scores)
        if n == 0 or k <= 0:
            return []
        m = min(n, k if unique != "stem" else max(4 * k, k + 16))
        while True:
            if m < n:
                cand = np.argpartition(scores, n - m)[n - m:]  # the m highest, unordered
            else:
                cand = np.arange(n)
            cand = cand[np.lexsort((cand, -scores[cand]))]  # by score, ties by position
            out, seen = [], set()
            for j in cand:
                si = int(self.seg_stem[base + j])
                if unique == "stem":
                    if si in seen:
                        continue
                    seen.add(si)
                out.append((j, si))
                if len(out) == k:
                    break
            if len(out) == k or m >= n:
                break
            m = min(n, 4 * m)
        res = []
        for j, si in out:
            s = self.stems[si]
            res.append(Match(s["stem_id"], s["track_id"], s["label"], s["category"],
                             float(self.seg_offset[base + j]), float(scores[j])))
        return res

    def search(self, queries: np.ndarray, k: int = 5, categories: Sequence[str | None] | None = None,
               unique: str | None = "stem", keytempo: np.ndarray | None = None,
               keytempo_weight: float = 0.0) -> list[list[Match]]:
        """Top-``k`` matches for each query.

        ``queries``: ``(N, d)`` (or ``(d,)``) float, normalised here. ``categories``: None, or a
        list of N entries, each a category name restricting that query (one of the library's
        categories, or a coarse one of engine.categories, which covers every category that falls
        in it; a category the library does not hold gives no matches) or None. ``unique``: ``"stem"`` (default) keeps only each
        stem's best segment; None returns raw segments. Returns N lists of :class:`Match`, best
        first (score descending). ``keytempo``: the ``(188,)`` descriptor of what is playing (one
        for all queries) and ``keytempo_weight`` ``a`` in [0, 1]: segments score ``(1 - a) *
        cos(query, embedding) + a * cos(keytempo, segment descriptor)``; ignored (the model
        alone) when the library has no descriptors, when ``a`` is 0 or the descriptor is None.
        """
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None]
        if q.ndim != 2 or (len(self) and q.shape[1] != self.dim):
            raise LibraryError(f"queries must be (N, {self.dim if len(self) else 'd'}), got {q.shape}")
        if not np.all(np.isfinite(q)):
            raise LibraryError("queries contain non-finite values")
        if unique not in ("stem", None):
            raise ValueError("unique must be 'stem' or None")
        k = int(k)
        nq = len(q)
        if categories is None:
            categories = [None] * nq
        if len(categories) != nq:
            raise ValueError(f"{nq} queries but {len(categories)} categories")
        q = _l2(q)
        a = float(keytempo_weight)
        if not 0.0 <= a <= 1.0:
            raise ValueError(f"keytempo_weight must be in [0, 1], got {keytempo_weight}")
        kq = None
        if keytempo is not None and a > 0.0 and self.keytempo is not None:
            kq = np.asarray(keytempo, dtype=np.float32).reshape(-1)
            if kq.shape != (KEYTEMPO_DIM,) or not np.all(np.isfinite(kq)):
                raise LibraryError(f"keytempo must be a finite ({KEYTEMPO_DIM},) vector, got shape {kq.shape}")
        results: list[list[Match]] = [[] for _ in range(nq)]
        if nq == 0 or len(self) == 0 or k <= 0:
            return results
        groups: dict[str | None, list[int]] = {}
        for i, c in enumerate(categories):
            groups.setdefault(None if c is None else str(c), []).append(i)
        for cat, idx in groups.items():
            if cat is None:
                lo, hi = 0, len(self)
            elif cat in self._coarse_range:  # a coarse category: all of it (a superset of a fine one of that name)
                lo, hi = self._coarse_range[cat]
            elif cat in self._cat_range:
                lo, hi = self._cat_range[cat]
            else:
                continue
            if kq is None and cat is None and len(self) > FAISS_MIN_SEGMENTS and self._faiss_index():
                m = min(len(self), max(4 * k, k + 16) if unique == "stem" else k)
                sc, ix = self._faiss.search(q[idx], m)
                rest = []
                for r, i in enumerate(idx):
                    results[i] = self._select_from(ix[r], sc[r], k, unique)
                    if len(results[i]) < k:  # too few distinct stems among the candidates
                        rest.append(i)
                idx = rest
                if not idx:
                    continue
            scores = (self.embeddings[lo:hi] @ q[idx].T).T  # (n, hi - lo) cosine similarities
            if kq is not None:  # fused, in place: (1 - a) cos_model + a cos_keytempo
                kts = self.keytempo[lo:hi] @ kq
                kts *= a
                scores *= 1.0 - a
                scores += kts[None, :]
            for r, i in enumerate(idx):
                results[i] = self._select(scores[r], lo, k, unique)
        return results

    def _select_from(self, ix: np.ndarray, sc: np.ndarray, k: int, unique: str | None) -> list[Match]:
        out, seen = [], set()
        for j, s in zip(ix.tolist(), sc.tolist()):
            if j < 0:
                break
            si = int(self.seg_stem[j])
            if unique == "stem":
                if si in seen:
                    continue
                seen.add(si)
            st = self.stems[si]
            out.append(Match(st["stem_id"], st["track_id"], st["label"], st["category"], float(self.seg_offset[j]), float(s)))
            if len(out) == k:
                break
        return out


    # ------------------------------------------------------------------ files
    def _meta(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "fingerprint": self.fingerprint, "hop_s": self.hop_s,
                "window_s": self.window_s, "stems": self.stems, "info": self.info,
                "segments": len(self), "dim": self.dim if len(self) else None}

    def save(self, path: str | Path) -> Path:
        """Write ``path`` (``.npz``; a directory gets ``library.npz`` inside) atomically, plus a
        readable ``.json`` copy of the metadata. Returns the ``.npz`` path."""
        p = write_index(path, self._meta(), self.embeddings, self.seg_stem, self.seg_offset, self.keytempo)
        self.index_path = p
        return p

    @classmethod
    def load(cls, path: str | Path, expect_fingerprint: str | None = None, *, max_bytes: int | None = None,
             max_segments: int | None = None, max_stems: int | None = None) -> "StemLibrary":
        """Read an index written by :meth:`save`. ``expect_fingerprint``: the loading model's
        fingerprint; an index built by another model is refused with :class:`LibraryError`.
        ``max_bytes`` (file size), ``max_segments`` and ``max_stems``: limits checked from the
        file's size and its arrays' headers *before* anything is decompressed, so that a small file
        that would expand to gigabytes is refused at no cost (None: no limit)."""
        p, meta, arrays = read_index(path, expect_fingerprint, max_bytes=max_bytes, max_segments=max_segments,
                                     max_stems=max_stems)
        lib = cls(arrays["embeddings"], arrays["seg_stem"], arrays["seg_offset"], meta["stems"],
                  fingerprint=meta.get("fingerprint"), hop_s=meta.get("hop_s", 4.0),
                  window_s=meta.get("window_s", 8.0), info=meta.get("info"), normalise=False,
                  keytempo=arrays["keytempo"])
        lib.index_path = p
        return lib
