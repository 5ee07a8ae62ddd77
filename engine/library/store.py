"""The stem library's file: one ``.npz`` (the arrays, and the metadata as a JSON string; read with
``allow_pickle=False``) and a ``.json`` copy of the metadata beside it for people to read.

:func:`write_index` writes both atomically; :func:`read_index` checks a file (its size and its
arrays' headers against limits before anything is decompressed, then its format, version and
the fingerprint of the model that built it) and returns its metadata and arrays.
:meth:`engine.library.StemLibrary.save` and :meth:`~engine.library.StemLibrary.load` use them.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

FORMAT = "stemjepa-library"
VERSION = 1


class LibraryError(ValueError):
    """An index that cannot be used (unreadable, wrong format, built by another model)."""


def npz_path(path: str | Path) -> Path:
    """The index file of ``path``: itself when it ends in ``.npz``, else ``library.npz`` inside it."""
    p = Path(path)
    if p.suffix == ".npz":
        return p
    return p / "library.npz"


def write_index(path: str | Path, meta: dict, embeddings: np.ndarray, seg_stem: np.ndarray,
                seg_offset: np.ndarray, keytempo: np.ndarray | None = None) -> Path:
    """Write ``path`` (``.npz``; a directory gets ``library.npz`` inside) atomically, plus a
    readable ``.json`` copy of ``meta``. Returns the ``.npz`` path."""
    p = npz_path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    blob = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    tmp = p.with_name(p.name + ".tmp.npz")
    extra = {} if keytempo is None else {"keytempo": keytempo}
    np.savez(tmp, embeddings=embeddings, seg_stem=seg_stem, seg_offset=seg_offset, meta=blob, **extra)
    os.replace(tmp, p)
    side = p.with_suffix(".json")
    tmpj = side.with_name(side.name + ".tmp")
    tmpj.write_text(json.dumps(meta, indent=1))
    os.replace(tmpj, side)
    return p


def read_index(path: str | Path, expect_fingerprint: str | None = None, *, max_bytes: int | None = None,
               max_segments: int | None = None, max_stems: int | None = None) -> tuple[Path, dict, dict]:
    """``(npz path, metadata, arrays)`` of an index written by :func:`write_index`; ``arrays``:
    ``embeddings`` (``(0, dim)`` when empty), ``seg_stem``, ``seg_offset`` and ``keytempo`` (None
    in an index built before the descriptors). ``expect_fingerprint``: the loading model's
    fingerprint; an index built by another model is refused with :class:`LibraryError`.
    ``max_bytes`` (file size), ``max_segments`` and ``max_stems``: limits checked from the file's
    size and its arrays' headers *before* anything is decompressed, so that a small file that
    would expand to gigabytes is refused at no cost (None: no limit)."""
    p = npz_path(path)
    if not p.is_file():
        raise LibraryError(f"{p}: no such stem library index")
    if max_bytes is not None and p.stat().st_size > max_bytes:
        raise LibraryError(f"{p}: {p.stat().st_size} bytes, more than the limit of {max_bytes}")
    if max_segments is not None or max_stems is not None:
        shapes = npz_shapes(p)
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
        arrays["embeddings"] = e.reshape(0, int(meta.get("dim") or 0))
    if max_stems is not None and len(meta.get("stems") or ()) > max_stems:
        raise LibraryError(f"{p}: {len(meta['stems'])} stems, more than the limit of {max_stems}")
    return p, meta, arrays


def npz_shapes(p: Path) -> dict[str, tuple[int, ...]]:
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
