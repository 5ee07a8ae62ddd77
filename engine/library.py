"""The stem library: an index of 8-s segments of stems, searched by predicted embeddings.

Each *segment* is a window of one stem (``window_s`` = 8 s, a new one every ``hop_s`` = 4 s)
embedded by the model's **target encoder** and pooled exactly like the retrieval evaluation:
tokens ``(P, d)`` -> mean over patches -> layer norm (no affine, eps 1e-5) -> L2, giving a
``(d,)`` float32 unit vector. The index holds

* ``embeddings`` ``(S, d)`` float32, L2-normalised, one row per segment;
* per segment: the stem it belongs to and its offset in the stem (s);
* per stem: ``stem_id`` (unique and stable: the audio file's path relative to the audio folder,
  without extension, ``/``-separated, e.g. ``pop909-502/bass``), ``track_id``, ``label`` (free
  text, e.g. "electric bass"), ``category`` (e.g. "bass"), ``path`` (relative to the library's
  audio root, ``/``-separated), ``duration`` (s) and ``grid``: the stem's own tempo and beat grid
  estimated at build time (:mod:`engine.stemgrid`; null when the stem has no steady beat);
* ``info["audio_root"]``: the audio folder relative to the index file's folder, so an index and
  its audio can move together; :attr:`StemLibrary.audio_root` is its absolute form and
  :meth:`StemLibrary.stem_file` a stem's absolute path;
* ``keytempo`` ``(S, 188)`` float32: each segment's tempo + key descriptor
  (:mod:`engine.keytempo`), unit rows, or absent in an index built before them;
* the fingerprint of the model that built it, ``hop_s``, ``window_s``.

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

Files: ``save(path)`` writes one ``.npz`` (arrays + the metadata as a JSON string; loaded with
``allow_pickle=False``) and a ``.json`` copy of the metadata beside it for people to read.
``load(path, expect_fingerprint=...)`` refuses an index built by another model.

CLI: ``python -m engine.library build AUDIO_DIR OUT [--model DIR] [--device cpu] [--hop S]``,
``python -m engine.library info OUT`` and ``python -m engine.library grid OUT [--audio-dir DIR]``
(re-estimate the stems' beat grids and rewrite their paths relative to the audio root, keeping
the embeddings: for an index built before grids existed), ``python -m engine.library keytempo
OUT`` (add the key/tempo descriptors to an index built before them).
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .audio import AUDIO_EXTENSIONS, AudioError, load_audio
from .categories import category_of
from .contract import pool
from .manifest import DEFAULT_MODEL_DIR
from .cli import Parser, guarded, report
from .frontend import FrontEndConfig, LogMel
from .keytempo import DIM as KEYTEMPO_DIM
from .keytempo import describe as keytempo_describe

FORMAT = "stemjepa-library"
VERSION = 1
FAISS_MIN_SEGMENTS = 100_000


class LibraryError(ValueError):
    """An index that cannot be used (unreadable, wrong format, built by another model)."""


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


def label_from_filename(name: str) -> str:
    """``"Electric_Bass-02.wav"`` -> ``"electric bass"``."""
    stem = Path(name).stem.lower()
    stem = re.sub(r"[_\-.]+", " ", stem)
    stem = re.sub(r"\s*\d+$", "", stem).strip()
    return " ".join(stem.split()) or Path(name).stem.lower()


def category_from_label(label: str) -> str:
    """Coarse category (bass, drums, vocals, other) from a free-text label (engine.categories)."""
    return category_of(label)


class StemLibrary:
    """Index of stem segments. Build with :func:`build`, :meth:`from_arrays` or :meth:`load`.

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
        cats = np.array([self.stems[i]["category"] for i in seg_stem], dtype=object)
        order = np.lexsort((seg_offset, seg_stem, cats.astype(str))) if len(e) else np.zeros(0, dtype=np.int64)
        self.embeddings = np.ascontiguousarray(e[order])
        self.keytempo = None if kt is None else np.ascontiguousarray(kt[order])
        self.seg_stem = seg_stem[order]
        self.seg_offset = seg_offset[order]
        self.fingerprint = fingerprint
        self.hop_s = float(hop_s)
        self.window_s = float(window_s)
        self.info = dict(info or {})
        # contiguous [start, end) per category
        self._cat_range: dict[str, tuple[int, int]] = {}
        sorted_cats = cats[order].astype(str) if len(e) else np.zeros(0, dtype=str)
        for c in dict.fromkeys(sorted_cats.tolist()):
            idx = np.flatnonzero(sorted_cats == c)
            self._cat_range[c] = (int(idx[0]), int(idx[-1]) + 1)
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
        name itself when it is a category of this library, or the category its words name
        (engine.categories: "fretless bass" -> bass) when this library has stems of it; else None
        (no restriction)."""
        n = " ".join(str(name).strip().lower().split())
        if n in self._labels:
            return self._labels[n]
        if n in self._cat_range:
            return n
        cat = category_of(n)
        return cat if cat != "other" and cat in self._cat_range else None

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
                cand = np.argpartition(-scores, m - 1)[:m]
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
        list of N entries, each a category name restricting that query (a category the library
        does not hold gives no matches) or None. ``unique``: ``"stem"`` (default) keeps only each
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
            if kq is not None:  # fused: (1 - a) cos_model + a cos_keytempo
                scores = (1.0 - a) * scores + a * (self.keytempo[lo:hi] @ kq)[None, :]
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
        p = _npz_path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        meta = self._meta()
        blob = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
        tmp = p.with_name(p.name + ".tmp.npz")
        extra = {} if self.keytempo is None else {"keytempo": self.keytempo}
        np.savez(tmp, embeddings=self.embeddings, seg_stem=self.seg_stem, seg_offset=self.seg_offset, meta=blob,
                 **extra)
        os.replace(tmp, p)
        side = p.with_suffix(".json")
        tmpj = side.with_name(side.name + ".tmp")
        tmpj.write_text(json.dumps(meta, indent=1))
        os.replace(tmpj, side)
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
        p = _npz_path(path)
        if not p.is_file():
            raise LibraryError(f"{p}: no such stem library index")
        if max_bytes is not None and p.stat().st_size > max_bytes:
            raise LibraryError(f"{p}: {p.stat().st_size} bytes, more than the limit of {max_bytes}")
        if max_segments is not None or max_stems is not None:
            shapes = _npz_shapes(p)
            n_seg = shapes.get("embeddings", (0,))[0]
            for name in ("seg_stem", "seg_offset", "keytempo"):
                n_seg = max(n_seg, shapes.get(name, (0,))[0])
            if max_segments is not None and n_seg > max_segments:
                raise LibraryError(f"{p}: {n_seg} segments, more than the limit of {max_segments}")
            meta_bytes = int(np.prod(shapes.get("meta", (0,))))
            if max_stems is not None and meta_bytes > 4096 * max_stems:  # a stem's entry is ~200 bytes
                raise LibraryError(f"{p}: its stem table of {meta_bytes} bytes is larger than {max_stems} stems need")
        try:
            with np.load(p, allow_pickle=False) as z:
                meta = json.loads(bytes(z["meta"]).decode("utf-8"))
                arrays = {k: z[k] for k in ("embeddings", "seg_stem", "seg_offset")}
                arrays["keytempo"] = z["keytempo"] if "keytempo" in z.files else None
        except LibraryError:
            raise
        except Exception as e:
            raise LibraryError(f"{p}: not a readable stem library index ({e})") from e
        if meta.get("format") != FORMAT:
            raise LibraryError(f"{p}: not a {FORMAT} file")
        if meta.get("version") != VERSION:
            raise LibraryError(f"{p}: index version {meta.get('version')}, this code reads {VERSION}")
        fp = meta.get("fingerprint")
        if expect_fingerprint is not None and fp != expect_fingerprint:
            raise LibraryError(
                f"{p}: this stem library was built by another model (index fingerprint {str(fp)[:12]}..., "
                f"loaded model {str(expect_fingerprint)[:12]}...); rebuild it with "
                f"'python -m engine.library build AUDIO_DIR OUT --model MODEL_DIR'")
        e = arrays["embeddings"]
        if e.size == 0:
            e = e.reshape(0, int(meta.get("dim") or 0))
        if max_stems is not None and len(meta.get("stems") or ()) > max_stems:
            raise LibraryError(f"{p}: {len(meta['stems'])} stems, more than the limit of {max_stems}")
        lib = cls(e, arrays["seg_stem"], arrays["seg_offset"], meta["stems"], fingerprint=fp,
                  hop_s=meta.get("hop_s", 4.0), window_s=meta.get("window_s", 8.0), info=meta.get("info"),
                  normalise=False, keytempo=arrays["keytempo"])
        lib.index_path = p
        return lib


def _npz_shapes(p: Path) -> dict[str, tuple[int, ...]]:
    """Shape of every array in an ``.npz`` file, read from the ``.npy`` headers only (each
    member is opened and its first bytes decompressed; nothing else is read)."""
    import zipfile

    out: dict[str, tuple[int, ...]] = {}
    try:
        with zipfile.ZipFile(p) as zf:
            for info in zf.infolist():
                name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    if version == (1, 0):
                        shape, _, _ = np.lib.format.read_array_header_1_0(f)
                    else:
                        shape, _, _ = np.lib.format.read_array_header_2_0(f)
                out[name] = tuple(int(x) for x in shape)
    except Exception as e:
        raise LibraryError(f"{p}: not a readable stem library index ({e})") from e
    return out


def _npz_path(path: str | Path) -> Path:
    p = Path(path)
    if p.suffix == ".npz":
        return p
    return p / "library.npz"


# ---------------------------------------------------------------------- building
@dataclass
class StemFile:
    path: Path
    stem_id: str
    track_id: str
    label: str
    category: str
    in_table: bool = False  # listed in its folder's track.json (dataset layout)


def find_stems(audio_dir: str | Path) -> list[StemFile]:
    """Every stem under ``audio_dir``, sorted by stem id.

    Dataset layout (``ROOT/<track>/<stem>.wav`` + ``track.json``): a folder with ``track.json``
    contributes the stems its ``"stems"`` table lists (label and category from there; other
    audio files there, e.g. a mixture, are ignored). Any other audio file is a stem whose label
    comes from its file name; its track is its folder (relative to ``audio_dir``), or the file
    name itself for files directly in ``audio_dir``.
    """
    root = Path(audio_dir)
    if not root.is_dir():
        raise LibraryError(f"{root}: not a folder")
    out: list[StemFile] = []
    tables: dict[Path, dict | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        d = Path(dirpath)
        table = None
        if "track.json" in filenames:
            try:
                table = json.loads((d / "track.json").read_text()).get("stems", {})
                if not isinstance(table, dict):
                    table = None
            except (OSError, ValueError, AttributeError):
                table = None
        tables[d] = table
        for fn in sorted(filenames):
            f = d / fn
            if f.suffix.lower() not in AUDIO_EXTENSIONS:
                continue
            rel = f.relative_to(root).with_suffix("")
            track = rel.parent.as_posix() if rel.parent != Path(".") else rel.name
            if table is not None:
                entry = table.get(f.stem)
                if entry is None:
                    continue
                label = str(entry.get("label") or label_from_filename(fn))
                category = str(entry.get("category") or category_from_label(label))
            else:
                label = label_from_filename(fn)
                category = category_from_label(label)
            out.append(StemFile(f, rel.as_posix(), track, label, category, table is not None))
    out.sort(key=lambda s: s.stem_id)
    return out


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


def embed_stem(backend, samples: np.ndarray, logmel: LogMel, *, window: int, hop: int, batch: int = 8,
               min_rms_db: float = -60.0) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    """One stem's segments -> (embeddings (n, d), offsets (n,) s, silent segments skipped,
    key/tempo descriptors (n, 188))."""
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
    embs, offs = [], []
    kts = [segment_keytempo(samples, s * cfg.hop, window * cfg.hop) for s, _ in keep]
    for i in range(0, len(keep), batch):
        group = keep[i:i + batch]
        t = group[0][1]
        x = np.stack([feats[:, s:s + t] for s, _ in group]).astype(np.float32)  # (B, 80, t)
        tokens = backend.encode_target(x)
        embs.append(pool_tokens(tokens))
        offs += [s * cfg.hop / cfg.sample_rate for s, _ in group]
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
        from .stemgrid import estimate_grid, track_consensus

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
        from .stemgrid import estimate_grid

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
          checkpoint_every: int = 25, log=None) -> StemLibrary:
    """Index every stem under ``audio_dir`` with ``backend.encode_target`` and save to ``out``.

    Segments of ``window_s`` every ``hop_s`` seconds (both multiples of 10 ms); segments quieter
    than ``min_rms_db`` dBFS RMS are skipped (a stem is only a candidate where it plays).
    ``resume``: an existing index at ``out`` built by the same model with the same hop is
    extended, skipping stems already done (indexed or found silent); stems that failed before
    are retried. The partial index is saved every ``checkpoint_every`` stems, and at the end.
    Unreadable files (:class:`engine.audio.AudioError`) are skipped and reported in
    ``library.info["failed"]`` and through ``log``. Returns the library.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    fp = _backend_fingerprint(backend)
    fe = _backend_frontend(backend)
    lm = LogMel(fe)
    frames_per_s = fe.sample_rate / fe.hop
    window = int(round(window_s * frames_per_s))
    hop = int(round(hop_s * frames_per_s))
    if window <= 0 or window % 16 or hop <= 0:
        raise ValueError("window_s must give a positive multiple of 16 frames and hop_s must be positive")
    stems = find_stems(audio_dir)
    out_p = _npz_path(out)

    embs: list[np.ndarray] = []
    seg_stem: list[np.ndarray] = []
    seg_off: list[np.ndarray] = []
    kts: list[np.ndarray] = []
    stem_meta: list[dict] = []
    done: set[str] = set()
    empty: list[str] = []
    if resume and out_p.is_file():
        old = StemLibrary.load(out_p)
        if old.fingerprint != fp or abs(old.hop_s - hop_s) > 1e-9 or abs(old.window_s - window_s) > 1e-9:
            raise LibraryError(f"{out_p}: existing index was built by another model or with another hop/window; "
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
                                "min_rms_db": min_rms_db, "backend": getattr(backend, "name", None)})
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
                                            min_rms_db=min_rms_db)
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


# ---------------------------------------------------------------------- CLI
@guarded("python -m engine.library")
def main(argv: list[str] | None = None) -> int:
    ap = Parser(prog="python -m engine.library", description="Build or inspect a stem library index.")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    b = sub.add_parser("build", help="index every stem of a folder",
                       description="Embed every stem of AUDIO_DIR (the dataset layout TRACK/STEM.wav + track.json, "
                       "or any folder of audio files, labels from file names) as 8-s segments with the model's "
                       "target encoder. Resumable: an interrupted build goes on where it stopped.")
    b.add_argument("audio_dir", help="folder of stems (dataset layout or plain audio files)")
    b.add_argument("out", help="index path (.npz, or a folder that gets library.npz)")
    b.add_argument("--model", default=None, metavar="DIR",
                   help="model directory (default: the shipped model, engine/assets/model)")
    b.add_argument("--device", default="cpu", help="cpu or cuda:N")
    b.add_argument("--kind", default=None, help="backend kind, e.g. onnx-int8 or torch-fp32 (default: fastest available)")
    b.add_argument("--threads", type=int, default=None,
                   help="inference threads (default: every CPU core of this machine)")
    b.add_argument("--hop", type=float, default=4.0, help="seconds between segment starts")
    b.add_argument("--batch", type=int, default=8, help="segments embedded per forward pass")
    b.add_argument("--min-rms-db", type=float, default=-60.0, metavar="DBFS",
                   help="segments quieter than this (RMS, dBFS) are not indexed")
    b.add_argument("--no-resume", action="store_true",
                   help="start from scratch instead of keeping the stems an interrupted build already embedded")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    i = sub.add_parser("info", help="print an index summary", description="Print an index summary as JSON.")
    i.add_argument("index", help="index file (.npz)")
    g = sub.add_parser("grid", help="(re-)estimate every stem's tempo and beat grid and store its path relative "
                                    "to the audio folder; embeddings are kept",
                       description="Re-estimate the stems' beat grids and rewrite their paths relative to the audio "
                       "root, keeping the embeddings (for an index built before grids existed).")
    g.add_argument("index", help="index file (.npz)")
    g.add_argument("--audio-dir", default=None,
                   help="the audio folder the index was built from (default: the index's audio root)")
    kt = sub.add_parser("keytempo", help="add the key/tempo descriptors to an index built before them",
                        description="Compute every segment's tempo + key descriptor from the stems' audio "
                        "(engine/keytempo.py), keeping the embeddings.")
    kt.add_argument("index", help="index file (.npz)")
    kt.add_argument("--audio-dir", default=None,
                    help="the audio folder the index was built from (default: the index's audio root)")
    args = ap.parse_args(argv)
    if args.cmd == "build":
        args.model = args.model or str(DEFAULT_MODEL_DIR)
        args.threads = args.threads or max(1, os.cpu_count() or 1)
        if args.threads < 1 or args.batch < 1 or args.hop <= 0:
            ap.error("--threads and --batch must be >= 1, --hop > 0")
    try:
        if args.cmd == "info":
            print(json.dumps(StemLibrary.load(args.index).summary(), indent=1))
            return 0
        if args.cmd == "grid":
            add_grids(StemLibrary.load(args.index), args.audio_dir)
            return 0
        if args.cmd == "keytempo":
            add_keytempo(StemLibrary.load(args.index), args.audio_dir)
            return 0
        from .backends import load_backend  # type: ignore

        backend = load_backend(args.model, device=args.device, kind=args.kind, threads=args.threads)
        build(args.audio_dir, backend, args.out, hop_s=args.hop, resume=not args.no_resume, batch=args.batch,
              min_rms_db=args.min_rms_db, progress=not args.no_progress)
        return 0
    except (LibraryError, AudioError, FileNotFoundError) as e:
        if "--debug" in (argv or []):
            raise
        return report("python -m engine.library", e)


if __name__ == "__main__":
    sys.exit(main())
