"""Packed model directories: one form of the weights in git, every other form built once.

``python -m export.cache pack CHECKPOINT DIR``  writes a packed directory: ``weights.pt`` (the
stripped checkpoint with fp16 weights, about 17 MB for ``tiny``), ``packed.json`` (fingerprint,
sha256 of every file, precisions to build), the text encoder, its tokenizer and the conditioning
cache. Nothing else: a new default model adds one weights file to the repository.

``python -m export.cache [DIR]``  builds DIR's ONNX (fp32, int8, ...) and TorchScript (fp32, bf16)
forms with ``python -m export``'s own code, parity checks included, into
``$STEMJEPA_CACHE/models/<fingerprint>`` (default ``~/.cache/stemjepa``), and prints where. A
second call finds them and returns at once; ``engine.manifest.load_manifest(DIR)`` reads them.

``python -m export.cache add DIR FILE``  lists an optional file beside the model in DIR (packed:
``packed.json``; full: ``manifest.json``'s ``files``), copying it in: today the beat network,
``beatnet.npz`` (engine/beatnet.py). It is not part of the fingerprint (libraries stay valid);
a build copies it into the built directory, and a built directory that lacks it (or holds another
version) gets it on the next ``ensure_built``, without a rebuild.
The fingerprint is that of the fp32 model rebuilt from the fp16 weights, so every built form,
every stem library index and the packed directory agree on one identity.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from engine.cli import Parser, guarded
from engine.manifest import (MANIFEST, OPTIONAL_FILES, PACKED, PACKED_FORMAT, PACKED_VERSION, ModelDirError,
                             built_dir, read_packed, sha256_file, sync_optional, write_json)

from .core import ExportError

WEIGHTS = "weights.pt"
DEFAULT_DIR = Path(__file__).resolve().parents[1] / "engine" / "assets" / "model"
PACK_FILES = ("text_encoder.onnx", "tokenizer.json", "conditioning.npz")


def pack_model(checkpoint: str | Path, out_dir: str | Path, *, precisions=("fp32", "int8"),
               text_from: str | Path, overwrite: bool = False, keytempo_weight: float | None = None,
               log=print) -> dict:
    """Write the packed directory of ``checkpoint``; ``text_from``: a model directory (full or
    packed) whose text encoder, tokenizer and conditioning cache are copied; ``keytempo_weight``:
    the fused ranking's weight, kept in the weights file (None: the checkpoint's own). Returns
    packed.json."""
    import torch

    from training.checkpoint import load_model

    from .core import fingerprint, publish_dir, strip_checkpoint

    out_dir, text_from = Path(out_dir), Path(text_from)
    if out_dir.exists() and not overwrite:
        raise ExportError(f"{out_dir} exists; pass --overwrite to replace it")
    missing = [f for f in PACK_FILES if not (text_from / f).is_file()]
    if missing:
        raise ExportError(f"{text_from}: lacks {', '.join(missing)} (a model directory to take the text encoder from)")
    _, state = load_model(checkpoint)
    st = strip_checkpoint(state)
    st["model"] = {k: (v.half() if v.is_floating_point() else v) for k, v in st["model"].items()}
    st["weights_dtype"] = "float16"
    for k in ("phase", "step", "ranking"):
        if k in state:
            st[k] = state[k]
    if keytempo_weight is not None:
        st["ranking"] = {"keytempo_weight": float(keytempo_weight)}
    src_text = {}
    for m in (text_from / MANIFEST, text_from / PACKED):
        if m.is_file():
            src_text = json.loads(m.read_text()).get("text", {})
            break
    st["text"] = {**dict(st.get("text") or {}), **{k: v for k, v in src_text.items() if k not in ("encoder", "dim")}}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        torch.save(st, tmp / WEIGHTS)
        rebuilt, _ = load_model(tmp / WEIGHTS)  # what a build will see: fp32 from the fp16 weights
        fp = fingerprint(rebuilt)
        extra = [f for f in OPTIONAL_FILES if (text_from / f).is_file()]  # e.g. the beat network
        for f in (*PACK_FILES, *extra):
            shutil.copyfile(text_from / f, tmp / f)
        doc = {"format": PACKED_FORMAT, "version": PACKED_VERSION, "fingerprint": fp,
               "weights": {"path": WEIGHTS, "sha256": sha256_file(tmp / WEIGHTS), "dtype": "float16"},
               "files": {f: {"path": f, "sha256": sha256_file(tmp / f)} for f in (*PACK_FILES, *extra)},
               "precisions": list(dict.fromkeys(["fp32", *precisions])),
               "config": rebuilt.cfg.to_dict(), "norm": st["norm"], "text": st["text"],
               "source": {"checkpoint": Path(checkpoint).name, "step": state.get("step"), "phase": state.get("phase")},
               "labels": len(st.get("labels") or []), "ranking": dict(st.get("ranking") or {})}
        (tmp / PACKED).write_text(json.dumps(doc, indent=1))
        publish_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    size = sum(p.stat().st_size for p in out_dir.iterdir())
    log(f"pack: wrote {out_dir} (fingerprint {fp[:12]}, {size / 1e6:.1f} MB, weights "
        f"{(out_dir / WEIGHTS).stat().st_size / 1e6:.1f} MB)")
    return doc


def _verify_packed(root: Path, packed: dict) -> None:
    entries = [("weights", packed["weights"])] + list(packed.get("files", {}).items())
    for name, e in entries:
        p = root / e["path"]
        if not p.is_file():
            raise ModelDirError(f"{root}: {name}: file {e['path']} is missing")
        if sha256_file(p) != e["sha256"]:
            raise ModelDirError(f"{root}: {name}: {e['path']} is corrupt (sha256 differs from {PACKED})")


def ensure_built(model_dir: str | Path = DEFAULT_DIR, log=print) -> Path:
    """The directory to load for ``model_dir``: itself when it is a full model directory, else the
    built forms of the packed one, building them first when absent (about a minute for tiny)."""
    import fcntl

    from .core import export_model

    root = Path(model_dir)
    if (root / MANIFEST).is_file() or not (root / PACKED).is_file():
        if not root.is_dir():
            raise ModelDirError(f"{root}: model directory does not exist")
        return root
    packed = read_packed(root)
    out = built_dir(root, packed)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time; the others then find it built
        if _built_ok(out, packed):
            sync_optional(root, packed, out)
            return out
        _verify_packed(root, packed)
        log(f"export.cache: building the ONNX/TorchScript forms of {root} once into {out} ...")
        t0 = time.time()
        te = packed.get("text", {})
        export_model(root / WEIGHTS, out, precisions=[p for p in packed["precisions"] if p != "fp32"],
                     text_from=root, conditioning_from=root / "conditioning.npz", overwrite=True,
                     checkpoint_copy=False, text_info_extra={k: v for k, v in te.items() if k not in ("encoder", "dim")},
                     log=lambda m: None)
        got = json.loads((out / MANIFEST).read_text())["fingerprint"]
        if got != packed["fingerprint"]:
            shutil.rmtree(out, ignore_errors=True)
            raise ModelDirError(f"{root}: the built model's fingerprint {got[:12]} differs from {PACKED}'s "
                                f"{packed['fingerprint'][:12]}: weights.pt and packed.json disagree")
        sync_optional(root, packed, out)
        log(f"export.cache: built in {time.time() - t0:.0f} s")
    return out


def add_file(model_dir: str | Path, file: str | Path) -> dict:
    """List ``file`` (one of :data:`OPTIONAL_FILES` by name) in a model directory, copying it in:
    ``packed.json``'s ``files`` of a packed directory, ``manifest.json``'s ``files`` of a full one.
    Returns the entry written."""
    root, file = Path(model_dir), Path(file)
    if file.name not in OPTIONAL_FILES:
        raise ModelDirError(f"{file}: only {', '.join(OPTIONAL_FILES)} can be added beside a model")
    if not file.is_file():
        raise ModelDirError(f"{file}: no such file")
    dest = root / file.name
    if dest.resolve() != file.resolve():
        shutil.copyfile(file, dest)
    entry = {"path": file.name, "sha256": sha256_file(dest)}
    if (root / MANIFEST).is_file():
        path, key = root / MANIFEST, OPTIONAL_FILES[file.name]
    elif (root / PACKED).is_file():
        path, key = root / PACKED, file.name
    else:
        raise ModelDirError(f"{root}: neither {MANIFEST} nor {PACKED}: not a model directory")
    doc = json.loads(path.read_text())
    doc.setdefault("files", {})[key] = entry
    write_json(path, doc)
    return entry


def _built_ok(out: Path, packed: dict) -> bool:
    from engine.manifest import load_manifest

    if not (out / MANIFEST).is_file():
        return False
    try:
        m = load_manifest(out, verify=True, read_graphs=False)
    except ModelDirError:
        return False
    want = (packed.get("ranking") or {}).get("keytempo_weight")  # same weights, another ranking: rebuild
    return m.fingerprint == packed["fingerprint"] and (want is None or m.ranking.get("keytempo_weight") == want)


@guarded("python -m export.cache")
def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "add":
        ap = Parser(prog="python -m export.cache add", description="List a file beside the model in a model "
                    "directory (copying it in): the beat network, beatnet.npz (docs/model_dir.md).")
        ap.add_argument("model_dir", help="model directory, packed or full")
        ap.add_argument("file", help="e.g. runs/beatnet/beatnet.npz (python -m training beatnet export)")
        a = ap.parse_args(argv[1:])
        try:
            e = add_file(a.model_dir, a.file)
        except ModelDirError as e:
            print(f"export.cache: {e}", file=sys.stderr)
            return 2
        print(f"export.cache: {a.model_dir}: {e['path']} (sha256 {e['sha256'][:12]})")
        return 0
    if argv and argv[0] == "pack":
        ap = Parser(prog="python -m export.cache pack",
                                     description="Write a packed model directory (fp16 weights + text encoder).")
        ap.add_argument("checkpoint", help="training checkpoint (.pt)")
        ap.add_argument("out_dir", help="packed model directory to write")
        ap.add_argument("--text-from", default=None,
                        help="model directory whose text encoder, tokenizer and conditioning cache are copied "
                        "(default: the shipped model, engine/assets/model)")
        ap.add_argument("--precision", nargs="+", default=["fp32", "int8"], choices=["fp32", "fp16", "int8", "bf16"],
                        help="ONNX precisions the build writes (default: fp32 int8)")
        ap.add_argument("--overwrite", action="store_true", help="replace an existing OUT_DIR")
        ap.add_argument("--keytempo-weight", type=float, default=None, metavar="A",
                        help="the fused ranking's key/tempo weight in [0, 1] (default: the checkpoint's, else the "
                        "engine default; choose it with python -m training.fusion)")
        a = ap.parse_args(argv[1:])
        a.text_from = a.text_from or str(DEFAULT_DIR)
        try:
            pack_model(a.checkpoint, a.out_dir, precisions=a.precision, text_from=a.text_from, overwrite=a.overwrite,
                       keytempo_weight=a.keytempo_weight)
        except (ExportError, ModelDirError) as e:
            print(f"export.cache: {e}", file=sys.stderr)
            return 2
        return 0
    ap = Parser(prog="python -m export.cache",
                description="Build (once) the ONNX/TorchScript forms of a packed model directory into the cache, "
                "and print where they are. 'python -m export.cache pack --help': write a packed directory.")
    ap.add_argument("model_dir", nargs="?", default=None,
                    help="model directory (default: the shipped model, engine/assets/model)")
    a = ap.parse_args(argv)
    a.model_dir = a.model_dir or str(DEFAULT_DIR)
    try:
        print(ensure_built(a.model_dir, log=lambda m: print(m, file=sys.stderr)))
    except (ExportError, ModelDirError) as e:
        print(f"export.cache: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
