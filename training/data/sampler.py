"""Training sampler: random 8-s crops of the stems of a split, as (context mix, target stem, label).

All stems of the split are held as int16 at 16 kHz: 16-bit mono WAVs at the right rate are
memory-mapped (the OS page cache then holds them once for every worker), anything else is decoded,
resampled and converted once. A 100-ms RMS envelope of every stem is precomputed, so deciding
which stems are active in a crop is a couple of array lookups.

Activity: a stem is active in a crop when at least ``min_active`` (default 25 %) of its 100-ms
frames are louder than ``active_db`` (default -60 dBFS RMS).
"""
from __future__ import annotations

import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.audio import AudioError

from .layout import DatasetError, Track, load_dataset

HOP = 1600  # samples per envelope frame at 16 kHz (100 ms)
LABEL_MODES = ("fine", "category", "mixed")


def _pcm16_memmap(path: Path, sr: int):
    """np.memmap over the samples of a mono 16-bit PCM WAV at ``sr`` Hz, else None."""
    if path.suffix.lower() != ".wav":
        return None
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            fmt = None
            while True:
                ch = f.read(8)
                if len(ch) < 8:
                    return None
                cid, size = ch[:4], struct.unpack("<I", ch[4:])[0]
                if cid == b"fmt ":
                    fmt = f.read(size)
                    if size % 2:
                        f.read(1)
                elif cid == b"data":
                    if fmt is None:
                        return None
                    tag, chans, rate, _, _, bits = struct.unpack("<HHIIHH", fmt[:16])
                    if tag != 1 or chans != 1 or rate != sr or bits != 16:
                        return None
                    off = f.tell()
                    n = min(size, path.stat().st_size - off) // 2
                    if n <= 0:
                        return None
                    return np.memmap(path, dtype="<i2", mode="r", offset=off, shape=(n,))
                else:
                    f.seek(size + (size % 2), 1)
    except (OSError, struct.error, ValueError):
        return None


def _load_int16(path: Path, sr: int, mmap: bool) -> np.ndarray:
    if mmap:
        m = _pcm16_memmap(path, sr)
        if m is not None:
            return m
    from engine.audio import load_audio

    x = load_audio(path, sr)  # raises AudioError for unreadable / NaN audio
    return np.round(np.clip(x, -1.0, 1.0) * 32767.0).astype(np.int16)


def _envelope_db(x: np.ndarray) -> np.ndarray:
    """RMS per 100-ms frame in dBFS (last partial frame zero-padded)."""
    n = len(x)
    nf = -(-n // HOP)
    buf = np.zeros(nf * HOP, dtype=np.float32)
    buf[:n] = x
    b = buf.reshape(nf, HOP)
    e = np.einsum("ij,ij->i", b, b) * (1.0 / (HOP * 32768.0 ** 2))
    return (10.0 * np.log10(e + 1e-12)).astype(np.float32)


def _cached_envelope(path: Path, x: np.ndarray, write: bool = True) -> np.ndarray:
    """:func:`_envelope_db` of a stem, cached beside it (``.<stem>.env.npy``, ignored by the layout)
    so that a restart does not read every sample again; recomputed when the audio file is newer.
    ``write=False``: use a cache that is there, write none (a dataset others own)."""
    cache = path.with_name(f".{path.stem}.env.npy")
    try:
        if cache.is_file() and cache.stat().st_mtime >= path.stat().st_mtime:
            e = np.load(cache)
            if e.shape == (-(-len(x) // HOP),):
                return e
    except (OSError, ValueError):
        pass
    e = _envelope_db(x)
    if not write:
        return e
    try:
        tmp = cache.with_name(cache.name + ".tmp.npy")
        np.save(tmp, e)
        tmp.replace(cache)
    except OSError:  # read-only dataset: no cache
        pass
    return e


@dataclass
class _TrackData:
    track: Track
    stem_ids: list[str]
    audio: list[np.ndarray]  # int16 per stem
    cum: np.ndarray  # (n_stems, frames+1) cumulative count of active frames
    length: int  # samples (longest stem)
    beats: np.ndarray | None
    downbeats: np.ndarray | None = None  # track.json's "downbeats" (s), when the render wrote them


class StemSampler:
    """See the module docstring. ``sample`` and ``sample_beats`` are the API the training loop uses."""

    def __init__(self, root, split="train", seconds=8.0, sr=16000, label_mode="mixed", seed=0, max_tracks=None,
                 active_db: float = -60.0, min_active: float = 0.25, mmap: bool = True, progress: bool = False,
                 write_cache: bool = True):
        if label_mode not in LABEL_MODES:
            raise ValueError(f"label_mode must be one of {LABEL_MODES}, not {label_mode!r}")
        if sr != 16000:
            warnings.warn("StemSampler: envelope frames assume 16 kHz; other rates work but frames are not 100 ms")
        self.root = Path(root)
        self.split = split
        self.seconds = float(seconds)
        self.sr = int(sr)
        self.S = int(round(self.seconds * self.sr))
        self.label_mode = label_mode
        self.active_db = float(active_db)
        self.min_active = float(min_active)
        self.errors: list[str] = []  # stems/tracks skipped while loading, with the reason
        self.write_cache = bool(write_cache)  # False: envelope caches are read, never written
        tracks = load_dataset(self.root, split, strict=False)
        if max_tracks is not None and max_tracks < len(tracks):
            pick = np.sort(np.random.default_rng(seed).permutation(len(tracks))[:max_tracks])
            tracks = [tracks[i] for i in pick]
        it = tracks
        if progress:
            from tqdm import tqdm

            it = tqdm(tracks, desc=f"loading {split or 'all'}", unit="track")
        self._tracks: list[_TrackData] = []
        for t in it:
            td = self._load_track(t, mmap)
            if td is not None:
                self._tracks.append(td)
        if not self._tracks:
            raise DatasetError(f"{root}: no usable track (need 2 readable stems) in split {split!r}")
        if self.errors:
            warnings.warn(f"StemSampler: {len(self.errors)} stems/tracks skipped, e.g. {self.errors[0]}")
        self._beat_tracks = [i for i, td in enumerate(self._tracks) if td.beats is not None and len(td.beats)]
        # (track index, stem index) of every stem, by category: category-grouped batches draw here
        self._by_category: dict[str, list[tuple[int, int]]] = {}
        for ti, td in enumerate(self._tracks):
            for si, sid in enumerate(td.stem_ids):
                self._by_category.setdefault(td.track.stems[sid].category, []).append((ti, si))
        labels = set()
        for td in self._tracks:
            for sid in td.stem_ids:
                s = td.track.stems[sid]
                labels.add(s.label)
                labels.add(s.category)
        self.labels: list[str] = sorted(labels)

    def _load_track(self, t: Track, mmap: bool):
        ids, audio, envs = [], [], []
        for sid, st in sorted(t.stems.items()):
            try:
                x = _load_int16(st.path, self.sr, mmap)
            except AudioError as e:
                self.errors.append(f"{t.track_id}/{sid}: {e}")
                continue
            ids.append(sid)
            audio.append(x)
            envs.append(_cached_envelope(st.path, x, self.write_cache))
        if len(ids) < 2:
            self.errors.append(f"{t.track_id}: fewer than 2 readable stems")
            return None
        nf = max(len(e) for e in envs)
        act = np.zeros((len(ids), nf), dtype=np.int32)
        for i, e in enumerate(envs):
            act[i, : len(e)] = e > self.active_db
        cum = np.concatenate([np.zeros((len(ids), 1), np.int32), np.cumsum(act, axis=1, dtype=np.int32)], axis=1)
        beats = np.asarray(t.beats, dtype=np.float64) if t.beats else None
        db = t.meta.get("downbeats")
        downbeats = np.asarray(db, dtype=np.float64) if isinstance(db, list) and db else None
        return _TrackData(t, ids, audio, cum, max(len(a) for a in audio), beats, downbeats)

    def __len__(self) -> int:
        return len(self._tracks)

    @property
    def track_ids(self) -> list[str]:
        return [td.track.track_id for td in self._tracks]

    # ---- helpers -------------------------------------------------------------------------------

    def _offset(self, td: _TrackData, rng) -> int:
        span = td.length - self.S
        return int(rng.integers(0, span + 1)) if span > 0 else 0

    def active(self, ti: int, offset: int) -> np.ndarray:
        """Indices of the stems of track ``ti`` that are active in the crop starting at ``offset``."""
        td = self._tracks[ti]
        nf = td.cum.shape[1] - 1
        f0 = min(offset // HOP, nf)
        f1 = min(-(-(offset + self.S) // HOP), nf)
        n = max(1, -(-self.S // HOP))  # frames of a full crop: short tracks count their padding as silence
        frac = (td.cum[:, f1] - td.cum[:, f0]) / n
        return np.flatnonzero(frac >= self.min_active)

    def crop(self, ti: int, stem: int, offset: int) -> np.ndarray:
        """float32 (S,) of one stem, zero-padded past its end."""
        a = self._tracks[ti].audio[stem]
        out = np.zeros(self.S, dtype=np.float32)
        seg = a[offset: offset + self.S]
        out[: len(seg)] = seg
        out *= 1.0 / 32768.0
        return out

    def _draw_label(self, rng, fine: str, category: str) -> str:
        if self.label_mode == "fine":
            return fine
        if self.label_mode == "category":
            return category
        return fine if rng.random() < 0.5 else category

    # ---- API -----------------------------------------------------------------------------------

    def sample(self, rng: np.random.Generator, max_tries: int = 200) -> dict:
        """One (context mix, target stem, label) example from a random track and offset."""
        for _ in range(max_tries):
            ti = int(rng.integers(len(self._tracks)))
            it = self.sample_track(rng, ti)
            if it is not None:
                return it
        raise DatasetError(f"{self.root}: no crop with 2 active stems found in {max_tries} tries "
                           f"(threshold {self.active_db} dBFS on {self.min_active:.0%} of the crop)")

    def sample_category(self, rng: np.random.Generator, category: str, tries: int = 8) -> dict | None:
        """An example whose target is a stem of ``category`` (another song's, usually): a stem of
        that category drawn uniformly, at an offset where it plays beside another stem. None when
        no stem of the category is found active in ``tries`` draws."""
        pool = self._by_category.get(category)
        if not pool:
            return None
        for _ in range(tries):
            ti, si = pool[int(rng.integers(len(pool)))]
            it = self.sample_track(rng, ti, offsets=2, target=si)
            if it is not None:
                return it
        return None

    def sample_track(self, rng: np.random.Generator, ti: int, exclude: set | frozenset = frozenset(),
                     offsets: int = 4, target: int | None = None) -> dict | None:
        """An example from track index ``ti`` whose target stem id is not in ``exclude`` (song-grouped
        batches: several targets of one song). Tries ``offsets`` random offsets; None if none has
        an allowed active target beside at least one other active stem. ``target``: this stem
        index must be the target (it must be active at the offset)."""
        from training.config import class_index

        td = self._tracks[ti]
        for _ in range(offsets):
            off = self._offset(td, rng)
            act = self.active(ti, off)
            if len(act) < 2:
                continue
            allowed = np.asarray([a for a in act if td.stem_ids[int(a)] not in exclude
                                  and (target is None or int(a) == target)], dtype=np.int64)
            if len(allowed):
                break
        else:
            return None
        target = int(allowed[rng.integers(len(allowed))])
        others = act[act != target]
        while True:  # uniform over non-empty subsets of the other active stems
            keep = rng.random(len(others)) < 0.5
            if keep.any():
                break
        context = others[keep]
        mix = np.zeros(self.S, dtype=np.float32)
        for c in context:
            mix += self.crop(ti, int(c), off)
        sid = td.stem_ids[target]
        st = td.track.stems[sid]
        return {"mix": mix, "target": self.crop(ti, target, off),
                "label": self._draw_label(rng, st.label, st.category), "fine": st.label,
                "category": st.category, "class_idx": class_index(st.category), "track_id": td.track.track_id,
                "track_index": ti, "stem_id": sid, "context_ids": [td.stem_ids[int(c)] for c in context],
                "offset": off / self.sr}

    def sample_beats(self, rng: np.random.Generator, keep: float = 1.0) -> dict:
        """A crop of a track with beats: the mix of its stems, the beats (s from the crop's start)
        and, when the track has them, the downbeats (else None). ``keep < 1``: each stem joins the
        mix with that probability (at least one does; the grid is the song's either way)."""
        if not self._beat_tracks:
            raise DatasetError(f"{self.root}: no track of split {self.split!r} has beats")
        ti = self._beat_tracks[int(rng.integers(len(self._beat_tracks)))]
        td = self._tracks[ti]
        off = self._offset(td, rng)
        use = np.arange(len(td.stem_ids))
        if keep < 1.0:
            pick = rng.random(len(use)) < keep
            use = use[pick] if pick.any() else use[[int(rng.integers(len(use)))]]
        mix = np.zeros(self.S, dtype=np.float32)
        for i in use:
            mix += self.crop(ti, int(i), off)
        t0 = off / self.sr

        def window(x):
            return None if x is None else (x[(x >= t0) & (x < t0 + self.seconds)] - t0).astype(np.float64)

        return {"mix": mix, "beats": window(td.beats), "downbeats": window(td.downbeats),
                "track_id": td.track.track_id, "offset": t0}

    def sample_batch(self, rng: np.random.Generator, n: int) -> dict:
        """``n`` samples stacked: arrays (n, S), lists for the strings."""
        items = [self.sample(rng) for _ in range(n)]
        out = {k: np.stack([it[k] for it in items]) for k in ("mix", "target")}
        for k in ("label", "fine", "category", "track_id", "stem_id", "offset", "class_idx"):
            out[k] = [it[k] for it in items]
        out["class_idx"] = np.asarray(out["class_idx"], dtype=np.int64)
        return out


class PooledBeatSampler:
    """Several :class:`StemSampler` (one per dataset root) seen as one pool of tracks with beats,
    for :meth:`sample_beats`: each crop comes from a root drawn in proportion to its number of
    tracks with beats, so every such track is as likely as in one merged dataset. The samplers must
    share the crop length (``S`` samples)."""

    def __init__(self, samplers: list[StemSampler]):
        if not samplers:
            raise DatasetError("PooledBeatSampler: no sampler")
        if len({s.S for s in samplers}) != 1:
            raise ValueError("PooledBeatSampler: the samplers' crop lengths differ")
        self.samplers = list(samplers)
        self.S = samplers[0].S
        n = np.array([len(s._beat_tracks) for s in samplers], np.float64)
        if n.sum() == 0:
            raise DatasetError("PooledBeatSampler: no track with beats in any root")
        self._cum = np.cumsum(n) / n.sum()
        self.root = ", ".join(str(s.root) for s in samplers)

    def __len__(self) -> int:
        return sum(len(s) for s in self.samplers)

    def sample_beats(self, rng: np.random.Generator, keep: float = 1.0) -> dict:
        """As :meth:`StemSampler.sample_beats`; with several roots one uniform draw picks the root
        first (with one, nothing more is drawn: the same crops as the sampler alone)."""
        if len(self.samplers) == 1:
            return self.samplers[0].sample_beats(rng, keep)
        i = int(np.searchsorted(self._cum, rng.random(), side="right"))
        return self.samplers[min(i, len(self.samplers) - 1)].sample_beats(rng, keep)
