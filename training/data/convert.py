"""Converters from MUSDB18-HQ and MoisesDB folders to the dataset layout (16 kHz mono 16-bit WAV).

MUSDB18-HQ: ``SRC/[train|test]/<track name>/{bass,drums,vocals,other,mixture}.wav``. Stems keep
their names; fine label = category = the stem name (MUSDB has no finer labels). ``mixture.wav``
is not copied (the mix is the sum of the stems). ``train``/``test`` subfolders become splits.

MoisesDB: ``SRC/<uuid>/data.json`` lists ``stems: [{stemName, tracks: [{id, trackType, extension}]}]``
with audio at ``SRC/<uuid>/<stemName>/<id>.<extension>``. Category = stemName, fine label =
trackType. Choice: the tracks of one stem that share a trackType are *summed* into one stem
(e.g. two "lead female singer" takes), tracks of different trackTypes stay separate stems, so every
stem has exactly one fine label. Stem id = ``<stemName>_<trackType>`` made file-safe.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np

from engine.audio import AUDIO_EXTENSIONS, AudioError, load_audio

from .layout import DatasetError

MUSDB_STEMS = ("bass", "drums", "vocals", "other")


def _safe(s: str) -> str:
    return re.sub(r"[^0-9A-Za-z]+", "_", s).strip("_").lower() or "x"


def _write_track(out: Path, tid: str, stems: dict[str, np.ndarray], info: dict[str, dict], meta: dict, sr: int):
    import soundfile as sf

    tmp = out / f".tmp-{tid}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    peak = max(float(np.abs(x).max()) for x in stems.values()) if stems else 0.0
    for sid, x in stems.items():
        sf.write(str(tmp / f"{sid}.wav"), np.clip(x, -1.0, 1.0), sr, subtype="PCM_16")
    (tmp / "track.json").write_text(json.dumps({"stems": info, **meta, "peak": round(peak, 4)}, indent=1))
    final = out / tid
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)


def _find_audio(folder: Path, name: str) -> Path | None:
    for ext in AUDIO_EXTENSIONS:
        p = folder / f"{name}{ext}"
        if p.is_file():
            return p
    return None


def convert_musdb(src, out, sr: int = 16000) -> dict:
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise DatasetError(f"{src}: no such folder")
    out.mkdir(parents=True, exist_ok=True)
    subsets = [d for d in ("train", "test") if (src / d).is_dir()]
    places = [(src / d, d) for d in subsets] or [(src, None)]
    splits: dict[str, list[str]] = {}
    report = {"converted": 0, "skipped": []}
    for folder, subset in places:
        for tdir in sorted(p for p in folder.iterdir() if p.is_dir()):
            tid = _safe(tdir.name)
            stems, info = {}, {}
            try:
                for name in MUSDB_STEMS:
                    p = _find_audio(tdir, name)
                    if p is None:
                        continue
                    stems[name] = load_audio(p, sr)
                    info[name] = {"label": name, "category": name}
            except AudioError as e:
                report["skipped"].append({"track": str(tdir), "reason": str(e)})
                continue
            if len(stems) < 2:
                report["skipped"].append({"track": str(tdir), "reason": f"fewer than 2 stems ({sorted(stems)})"})
                continue
            n = max(len(x) for x in stems.values())
            stems = {k: np.pad(x, (0, n - len(x))) for k, x in stems.items()}
            _write_track(out, tid, stems, info, {"source": str(tdir.relative_to(src)), "corpus": "musdb"}, sr)
            splits.setdefault(subset or "all", []).append(tid)
            report["converted"] += 1
    if subsets:
        splits["all"] = sorted(t for s in subsets for t in splits.get(s, []))
    (out / "splits.json").write_text(json.dumps(splits, indent=1))
    report["splits"] = {k: len(v) for k, v in splits.items()}
    return report


def convert_moisesdb(src, out, sr: int = 16000, val_fraction: float = 0.1, seed: int = 0) -> dict:
    from .render import split_of

    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise DatasetError(f"{src}: no such folder")
    out.mkdir(parents=True, exist_ok=True)
    splits: dict[str, list[str]] = {"train": [], "validation": [], "all": []}
    report = {"converted": 0, "skipped": []}
    for tdir in sorted(p for p in src.iterdir() if p.is_dir()):
        dj = tdir / "data.json"
        if not dj.is_file():
            continue
        try:
            doc = json.loads(dj.read_text(encoding="utf-8"))
            stems_doc = doc["stems"]
            if not isinstance(stems_doc, list):
                raise TypeError("stems is not a list")
        except (ValueError, KeyError, TypeError) as e:
            report["skipped"].append({"track": str(tdir), "reason": f"bad data.json ({e})"})
            continue
        stems: dict[str, np.ndarray] = {}
        info: dict[str, dict] = {}
        problems = []
        for st in stems_doc:
            cat = str(st.get("stemName", "")).strip()
            for tr in st.get("tracks", []):
                ttype = str(tr.get("trackType") or cat).strip()
                ext = str(tr.get("extension", "wav")).lstrip(".")
                p = tdir / cat / f"{tr.get('id')}.{ext}"
                try:
                    x = load_audio(p, sr)
                except AudioError as e:
                    problems.append(str(e))
                    continue
                sid = f"{_safe(cat)}_{_safe(ttype)}"
                if sid in stems:  # same stem and trackType: sum
                    n = max(len(stems[sid]), len(x))
                    stems[sid] = np.pad(stems[sid], (0, n - len(stems[sid]))) + np.pad(x, (0, n - len(x)))
                else:
                    stems[sid] = x
                    info[sid] = {"label": ttype.lower(), "category": cat.lower()}
        if len(stems) < 2:
            report["skipped"].append({"track": str(tdir), "reason": f"fewer than 2 readable stems; {problems[:3]}"})
            continue
        n = max(len(x) for x in stems.values())
        stems = {k: np.pad(x, (0, n - len(x))) for k, x in stems.items()}
        tid = _safe(tdir.name)
        meta = {"source": tdir.name, "corpus": "moisesdb", "title": doc.get("song"), "artist": doc.get("artist"),
                "genre": doc.get("genre")}
        if problems:
            meta["unreadable"] = problems
        _write_track(out, tid, stems, info, meta, sr)
        splits[split_of(tid, val_fraction, seed)].append(tid)
        splits["all"].append(tid)
        report["converted"] += 1
    (out / "splits.json").write_text(json.dumps(splits, indent=1))
    report["splits"] = {k: len(v) for k, v in splits.items()}
    return report
