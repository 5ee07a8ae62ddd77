"""The dataset layout (training/data/README.md, "Layout and loaders") and its loader.

::

    ROOT/<track_id>/<stem_id>.wav   any sample rate, mono or stereo (any of engine.audio.AUDIO_EXTENSIONS)
    ROOT/<track_id>/track.json      {"stems": {"<stem_id>": {"label": ..., "category": ...}}, "beats": [...]}
    ROOT/splits.json                optional {"train": [track ids], "validation": [...], ...}

A file named ``mixture.*`` or ``mix.*`` in a track folder is allowed without being listed (it is
not a stem). Folders whose name starts with "." are ignored (temporary and bookkeeping folders).
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.audio import AUDIO_EXTENSIONS, AudioError, audio_info, load_audio

MIX_NAMES = ("mixture", "mix")


class DatasetError(ValueError):
    """A dataset folder that does not follow the layout."""


@dataclass
class Stem:
    track_id: str
    stem_id: str
    path: Path
    label: str  # fine label, e.g. "fretless bass"
    category: str  # family, e.g. "bass"

    def load(self, sr: int = 16000) -> np.ndarray:
        """Mono float32 at ``sr``; raises :class:`engine.audio.AudioError` for unreadable/NaN audio."""
        return load_audio(self.path, sr)


@dataclass
class Track:
    track_id: str
    path: Path
    stems: dict[str, Stem]
    beats: list[float] | None = None
    meta: dict = field(default_factory=dict)  # every other key of track.json

    @property
    def has_beats(self) -> bool:
        return bool(self.beats)


def _audio_files(folder: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS and not p.name.startswith("."):
            if p.stem in out:
                raise DatasetError(f"{folder}: two audio files for stem {p.stem!r}: {out[p.stem].name}, {p.name}")
            out[p.stem] = p
    return out


def load_track(folder: str | Path) -> Track:
    """Read one track folder; raises :class:`DatasetError` when track.json and the files disagree."""
    folder = Path(folder)
    tj = folder / "track.json"
    if not tj.is_file():
        raise DatasetError(f"{folder}: no track.json")
    try:
        doc = json.loads(tj.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise DatasetError(f"{tj}: malformed JSON ({e})") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("stems"), dict) or not doc["stems"]:
        raise DatasetError(f"{tj}: needs a non-empty object \"stems\": {{stem_id: {{label, category}}}}")
    files = _audio_files(folder)
    stems = {}
    for sid, info in doc["stems"].items():
        if not isinstance(info, dict) or not isinstance(info.get("label"), str) or not isinstance(
                info.get("category"), str) or not info["label"].strip() or not info["category"].strip():
            raise DatasetError(f"{tj}: stem {sid!r} needs string \"label\" and \"category\"")
        if sid not in files:
            raise DatasetError(f"{folder}: stem {sid!r} is listed in track.json but has no audio file "
                               f"({sid}.wav or another of {', '.join(AUDIO_EXTENSIONS)})")
        stems[sid] = Stem(folder.name, sid, files[sid], info["label"].strip(), info["category"].strip().lower())
    extra = sorted(set(files) - set(stems) - set(MIX_NAMES))
    if extra:
        raise DatasetError(f"{folder}: audio files not listed in track.json: {', '.join(files[e].name for e in extra)}")
    beats = doc.get("beats")
    if beats is not None:
        if not isinstance(beats, list) or not all(isinstance(b, (int, float)) for b in beats):
            raise DatasetError(f"{tj}: \"beats\" must be a list of seconds")
        beats = [float(b) for b in beats]
    meta = {k: v for k, v in doc.items() if k not in ("stems", "beats")}
    return Track(folder.name, folder, stems, beats, meta)


def read_splits(root: str | Path) -> dict[str, list[str]]:
    p = Path(root) / "splits.json"
    if not p.is_file():
        return {}
    try:
        doc = json.loads(p.read_text())
    except ValueError as e:
        raise DatasetError(f"{p}: malformed JSON ({e})") from e
    return {k: v for k, v in doc.items() if isinstance(v, list)}


def load_dataset(root: str | Path, split: str | None = None, strict: bool = True) -> list[Track]:
    """All tracks under ``root`` (sorted by id), or those of ``split`` in ``root/splits.json``.

    ``strict=False`` skips (with a warning) track folders that break the layout instead of raising.
    Raises :class:`DatasetError` for a missing folder, a folder without tracks, an unknown split.
    Audio is not read here (see :meth:`Stem.load`).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such dataset folder")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if split is not None:
        splits = read_splits(root)
        if not splits:
            raise DatasetError(f"{root}: split {split!r} requested but there is no splits.json")
        if split not in splits:
            raise DatasetError(f"{root}/splits.json has no split {split!r} (has: {', '.join(sorted(splits))})")
        wanted = set(splits[split])
        missing = sorted(wanted - {p.name for p in folders})
        if missing:
            msg = f"{root}: {len(missing)} tracks of split {split!r} have no folder (e.g. {missing[0]})"
            if strict:
                raise DatasetError(msg)
            warnings.warn(msg)
        folders = [p for p in folders if p.name in wanted]
    tracks = []
    for p in folders:
        if not (p / "track.json").exists() and not _audio_files(p):
            continue  # not a track folder
        try:
            tracks.append(load_track(p))
        except DatasetError as e:
            if strict:
                raise
            warnings.warn(f"skipping track: {e}")
    if not tracks:
        raise DatasetError(f"{root}: no tracks (expected ROOT/<track_id>/track.json and stem audio files)"
                           + (f" in split {split!r}" if split else ""))
    return tracks


def dataset_stats(root: str | Path, split: str | None = None) -> dict:
    """Tracks, stems, hours of mix audio (from file headers) and per-category/label counts."""
    tracks = load_dataset(root, split, strict=False)
    cats: dict[str, int] = {}
    labels: dict[str, int] = {}
    seconds = 0.0
    stem_seconds = 0.0
    for t in tracks:
        durs = []
        for s in t.stems.values():
            cats[s.category] = cats.get(s.category, 0) + 1
            labels[s.label] = labels.get(s.label, 0) + 1
            try:
                durs.append(audio_info(s.path)[1])
            except AudioError:
                pass
        seconds += max(durs, default=0.0)
        stem_seconds += sum(durs)
    n_stems = sum(len(t.stems) for t in tracks)
    return {"tracks": len(tracks), "stems": n_stems, "hours": round(seconds / 3600, 2),
            "stem_hours": round(stem_seconds / 3600, 2), "with_beats": sum(t.has_beats for t in tracks),
            "splits": {k: len(v) for k, v in read_splits(root).items()},
            "categories": dict(sorted(cats.items(), key=lambda kv: -kv[1])),
            "labels": dict(sorted(labels.items(), key=lambda kv: -kv[1]))}
