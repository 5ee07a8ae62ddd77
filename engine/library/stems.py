"""The stems of a folder, as the library's builder reads them: :func:`find_stems` walks the folder
(the dataset layout, ``ROOT/<track>/<stem>.wav`` with a ``track.json`` per track, or any tree of
audio files) and gives one :class:`StemFile` a stem -- its file, ids, label and category.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..audio import AUDIO_EXTENSIONS
from .index import category_from_label
from .store import LibraryError


@dataclass
class StemFile:
    path: Path
    stem_id: str
    track_id: str
    label: str
    category: str
    in_table: bool = False  # listed in its folder's track.json (dataset layout)


def label_from_filename(name: str) -> str:
    """``"Electric_Bass-02.wav"`` -> ``"electric bass"``."""
    stem = Path(name).stem.lower()
    stem = re.sub(r"[_\-.]+", " ", stem)
    stem = re.sub(r"\s*\d+$", "", stem).strip()
    return " ".join(stem.split()) or Path(name).stem.lower()


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
