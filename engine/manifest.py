"""Load and validate a model directory (docs/model_dir.md). No torch import.

``load_manifest(dir)`` returns a :class:`Manifest` or raises :class:`ModelDirError` with a message
that names the directory and what is wrong: missing manifest, unparseable JSON, wrong format or
version, a listed file missing or with a different sha256, or a config that does not match the
graphs' I/O (recorded in the manifest and, when the ``onnx`` package is present, read from the
ONNX files themselves).
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

FORMAT = "stemjepa-model"
VERSION = 1
MANIFEST = "manifest.json"
MODEL_GRAPHS = ("encoder", "target_encoder", "predictor", "beat_head")
PRECISIONS = ("fp32", "fp16", "int8", "bf16")
#: the shipped model directory: the default of every command that loads a model
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "assets" / "model"
#: the shipped demo track (the mix of one demo-library song; its true beats in demo_track.json)
DEMO_TRACK = Path(__file__).resolve().parent / "assets" / "demo" / "demo_track.flac"


class ModelDirError(ValueError):
    """A model directory that cannot be used; the message says why."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def graph_filename(name: str, precision: str) -> str:
    return f"{name}.onnx" if precision == "fp32" else f"{name}.{precision}.onnx"


def expected_io(config: dict, text_dim: int | None = None) -> dict[str, dict]:
    """The I/O contract of every graph for a model config: ``{graph: {"inputs": {name: {"shape",
    "dtype"}}, "outputs": {...}}}``. Symbolic dims are strings (B, T, P, N, A, L)."""
    f, d = int(config["n_mels"]), int(config["d_model"])

    def t(shape, dtype="float32"):
        return {"shape": list(shape), "dtype": dtype}

    io = {
        "encoder": {"inputs": {"logmel": t(["B", f, "T"])}, "outputs": {"tokens": t(["B", "P", d])}},
        "beat_head": {"inputs": {"tokens": t(["B", "P", d])}, "outputs": {"activation": t(["B", "A"])}},
    }
    io["target_encoder"] = json.loads(json.dumps(io["encoder"]))
    cond = t(["N", int(config["text_dim"])]) if config["conditioning"] == "film" else t(["N"], "int64")
    io["predictor"] = {"inputs": {"tokens": t([1, "P", d]), "cond": cond},
                       "outputs": {"embedding": t(["N", d])}}
    if text_dim:
        io["text_encoder"] = {"inputs": {"input_ids": t(["N", "L"], "int64"), "attention_mask": t(["N", "L"], "int64")},
                              "outputs": {"embedding": t(["N", int(text_dim)])}}
    return io


@dataclass
class Manifest:
    root: Path
    data: dict = field(repr=False)

    @property
    def config(self) -> dict:
        return self.data["config"]

    @property
    def frontend(self) -> dict:
        return self.data["frontend"]

    @property
    def norm(self) -> dict:
        return self.data["norm"]

    @property
    def text(self) -> dict:
        return self.data.get("text", {})

    @property
    def ranking(self) -> dict:
        """How this model's matches are ranked: ``{"keytempo_weight": a, ...}`` (engine/keytempo.py);
        empty for a directory exported before the fused ranking."""
        r = self.data.get("ranking")
        return dict(r) if isinstance(r, dict) else {}

    @property
    def fingerprint(self) -> str:
        return self.data["fingerprint"]

    @property
    def conditioning(self) -> str:
        return self.config["conditioning"]

    @property
    def classes(self) -> list[str]:
        from .categories import CATEGORIES

        return list(self.data.get("classes", CATEGORIES))

    @property
    def graphs(self) -> dict:
        return self.data["graphs"]

    def precisions(self, graph: str = "encoder") -> list[str]:
        return [p for p in PRECISIONS if p in self.graphs.get(graph, {})]

    def has(self, graph: str, precision: str = "fp32") -> bool:
        return precision in self.graphs.get(graph, {})

    def graph_path(self, graph: str, precision: str = "fp32") -> Path:
        try:
            return self.root / self.graphs[graph][precision]["path"]
        except KeyError:
            raise ModelDirError(f"{self.root}: no {precision} {graph} graph (has: "
                                f"{', '.join(self.precisions(graph)) or 'none'})") from None

    @property
    def torch_graphs(self) -> dict:
        """``{graph: {precision: entry}}`` of the self-contained TorchScript files (may be empty:
        directories exported before they existed)."""
        return (self.data.get("torch") or {}).get("graphs", {})

    def has_torch(self, precision: str = "fp32") -> bool:
        """All four graphs exist as TorchScript files of ``precision``."""
        return all(precision in self.torch_graphs.get(g, {}) for g in MODEL_GRAPHS)

    def torch_path(self, graph: str, precision: str = "fp32") -> Path:
        try:
            return self.root / self.torch_graphs[graph][precision]["path"]
        except KeyError:
            raise ModelDirError(f"{self.root}: no {precision} TorchScript {graph} (re-export with this version of "
                                f"`python -m export` to get the torch backends' files)") from None

    def file(self, key: str) -> Path | None:
        e = self.data.get("files", {}).get(key)
        return None if e is None else self.root / e["path"]


def _entries(data: dict):
    """Every (label, entry-with-path-and-sha256) the manifest lists."""
    for g, per in data.get("graphs", {}).items():
        for prec, e in per.items():
            yield f"{g} ({prec})", e
    for k, e in data.get("files", {}).items():
        yield k, e
    for g, per in (data.get("torch") or {}).get("graphs", {}).items():
        for prec, e in per.items():
            yield f"{g} (torchscript {prec})", e


def _dims_match(recorded, actual) -> bool:
    if len(recorded) != len(actual):
        return False
    for r, a in zip(recorded, actual):
        if isinstance(r, int) and isinstance(a, int) and r != a:
            return False
        if isinstance(r, int) != isinstance(a, int):
            # a symbolic dim where the contract fixes a size (or the reverse) is a mismatch,
            # except the predictor's batch-1 tokens which exporters may leave symbolic
            if isinstance(r, int) and r == 1:
                continue
            return False
    return True


def _onnx_io(path: Path) -> dict:
    import onnx

    m = onnx.load(str(path), load_external_data=False)

    def dims(vi):
        out = []
        for dim in vi.type.tensor_type.shape.dim:
            out.append(int(dim.dim_value) if dim.HasField("dim_value") else (dim.dim_param or "?"))
        return out

    return {"inputs": {i.name: dims(i) for i in m.graph.input},
            "outputs": {o.name: dims(o) for o in m.graph.output}}


def check_contract(data: dict, root: Path, read_graphs: bool = True) -> None:
    """Config vs recorded I/O vs (optionally) the ONNX files' own I/O."""
    cfg = data["config"]
    text_dim = (data.get("text") or {}).get("dim") if "text_encoder" in data["graphs"] else None
    exp = expected_io(cfg, text_dim)
    if cfg["conditioning"] == "film" and text_dim and int(text_dim) != int(cfg["text_dim"]):
        raise ModelDirError(f"{root}: config text_dim {cfg['text_dim']} but the text encoder gives {text_dim}")
    for g, per in data["graphs"].items():
        if g not in exp:
            raise ModelDirError(f"{root}: unknown graph {g!r} in manifest")
        for prec, e in per.items():
            for side in ("inputs", "outputs"):
                want = exp[g][side]
                got = e.get(side, {})
                if set(got) != set(want):
                    raise ModelDirError(f"{root}: {g} ({prec}) {side} {sorted(got)} do not match the contract {sorted(want)}")
                for name, spec in want.items():
                    if not _dims_match(spec["shape"], got[name]["shape"]):
                        raise ModelDirError(
                            f"{root}: config/graph mismatch: {g} ({prec}) {side[:-1]} {name!r} is recorded as "
                            f"{got[name]['shape']}, config {cfg.get('name')!r} (d_model={cfg['d_model']}, "
                            f"n_mels={cfg['n_mels']}, text_dim={cfg['text_dim']}) needs {spec['shape']}")
            if read_graphs:
                try:
                    actual = _onnx_io(root / e["path"])
                except ImportError:
                    return  # no onnx package: the backend checks session I/O instead
                except Exception as ex:
                    raise ModelDirError(f"{root}: {e['path']} is not a readable ONNX model ({ex})") from ex
                for side in ("inputs", "outputs"):
                    for name, spec in exp[g][side].items():
                        if name not in actual[side]:
                            raise ModelDirError(f"{root}: {e['path']} has no {side[:-1]} {name!r} "
                                                f"(has {sorted(actual[side])})")
                        if not _dims_match(spec["shape"], actual[side][name]):
                            raise ModelDirError(
                                f"{root}: config/graph mismatch: {e['path']} {side[:-1]} {name!r} has shape "
                                f"{actual[side][name]}, the manifest's config needs {spec['shape']}")


def check_torch_contract(data: dict, root: Path) -> None:
    """The TorchScript entries' recorded I/O vs the config (the files are not opened: no torch)."""
    exp = expected_io(data["config"])
    for g, per in (data.get("torch") or {}).get("graphs", {}).items():
        if g not in MODEL_GRAPHS:
            raise ModelDirError(f"{root}: unknown TorchScript graph {g!r} in manifest")
        for prec, e in per.items():
            for side in ("inputs", "outputs"):
                for name, spec in exp[g][side].items():
                    got = e.get(side, {}).get(name)
                    if got is None or not _dims_match(spec["shape"], got["shape"]):
                        raise ModelDirError(
                            f"{root}: config/graph mismatch: TorchScript {e['path']} {side[:-1]} {name!r} is recorded "
                            f"as {None if got is None else got['shape']}, the config needs {spec['shape']}")


# ---- packed model directories ------------------------------------------------------------------
# A packed directory ships one form of the weights (``weights.pt``, fp16) beside ``packed.json``,
# the text encoder and the conditioning cache. Its ONNX / TorchScript forms are built once by
# ``python -m export.cache DIR`` into the cache below, keyed by the weights' fingerprint, and
# ``load_manifest(DIR)`` then reads the built directory (docs/model_dir.md, "Packed directories").
PACKED = "packed.json"
PACKED_FORMAT = "stemjepa-packed"
PACKED_VERSION = 1


def cache_root() -> Path:
    """Where built model forms live: ``$STEMJEPA_CACHE`` or ``~/.cache/stemjepa``."""
    import os

    env = os.environ.get("STEMJEPA_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "stemjepa"


def read_packed(model_dir: str | Path) -> dict:
    """``packed.json`` of a packed directory, validated (format, version, fingerprint, weights)."""
    root = Path(model_dir)
    p = root / PACKED
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelDirError(f"{p}: not a readable packed-model description ({e})") from e
    if not isinstance(data, dict) or data.get("format") != PACKED_FORMAT:
        raise ModelDirError(f"{p}: format {data.get('format') if isinstance(data, dict) else None!r}, "
                            f"expected {PACKED_FORMAT!r}")
    if data.get("version") != PACKED_VERSION:
        raise ModelDirError(f"{p}: version {data.get('version')!r}, this code reads {PACKED_VERSION}")
    fp = data.get("fingerprint")
    if not isinstance(fp, str) or len(fp) != 64 or not isinstance(data.get("weights"), dict):
        raise ModelDirError(f"{p}: needs a sha256 'fingerprint' and a 'weights' entry")
    return data


def built_dir(model_dir: str | Path, packed: dict | None = None) -> Path:
    """The cache directory holding the built forms of a packed directory."""
    packed = packed or read_packed(model_dir)
    return cache_root() / "models" / packed["fingerprint"][:24]


#: files a model directory may ship beside the model (name -> key in a full manifest's ``files``)
OPTIONAL_FILES = {"beatnet.npz": "beatnet"}


def write_json(path: Path, doc: dict) -> None:
    """``doc`` as JSON at ``path``, atomically (a reader sees the old file or the new one)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(path)


def sync_optional(root: Path, packed: dict, out: Path) -> None:
    """The packed directory's optional files (:data:`OPTIONAL_FILES`) into the built directory
    ``out``, listed in its manifest's ``files``; one the packed directory no longer lists leaves."""
    mpath = out / MANIFEST
    doc = json.loads(mpath.read_text())
    files = doc.setdefault("files", {})
    changed = False
    for name, key in OPTIONAL_FILES.items():
        e = packed.get("files", {}).get(name)
        if e is None:
            if key in files:
                (out / files.pop(key)["path"]).unlink(missing_ok=True)
                changed = True
            continue
        if files.get(key, {}).get("sha256") == e["sha256"] and (out / name).is_file():
            continue
        src = root / e["path"]
        if not src.is_file() or sha256_file(src) != e["sha256"]:
            raise ModelDirError(f"{root}: {e['path']} is missing or corrupt (sha256 differs from {PACKED})")
        tmp = out / f".{name}.tmp"
        shutil.copyfile(src, tmp)
        tmp.replace(out / name)  # atomic: a loader elsewhere reads the old file or the new one
        files[key] = {"path": name, "sha256": e["sha256"]}
        changed = True
    if changed:
        write_json(mpath, doc)


def resolve_model_dir(model_dir: str | Path) -> Path:
    """``model_dir`` itself (a full model directory) or, for a packed one, its built forms.
    Raises :class:`ModelDirError` naming the command that builds them when they are absent."""
    root = Path(model_dir)
    if (root / MANIFEST).is_file() or not (root / PACKED).is_file():
        return root
    packed = read_packed(root)
    out = built_dir(root, packed)
    m = out / MANIFEST
    try:
        fp = json.loads(m.read_text()).get("fingerprint") if m.is_file() else None
    except (OSError, ValueError):
        fp = None
    if fp != packed["fingerprint"]:
        raise ModelDirError(f"{root}: a packed model whose ONNX/TorchScript forms are not built yet; build them once "
                            f"with `python -m export.cache {root}` (writes {out})")
    try:
        sync_optional(root, packed, out)  # a beat network updated beside the weights: its built copy follows
    except OSError as e:
        raise ModelDirError(f"{out}: its copy of the files beside the model is out of date and cannot be "
                            f"updated ({e}); run `python -m export.cache {root}`") from e
    return out


def load_manifest(model_dir: str | Path, verify: bool = True, read_graphs: bool = True) -> Manifest:
    """Read ``MODEL_DIR/manifest.json`` and validate it (``verify``: file sha256s; ``read_graphs``:
    compare the ONNX files' I/O with the config). A packed directory (``packed.json``) is read
    through its built forms (:func:`resolve_model_dir`)."""
    root = Path(model_dir)
    if not root.is_dir():
        raise ModelDirError(f"{root}: model directory does not exist")
    root = resolve_model_dir(root)
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise ModelDirError(f"{root}: no {MANIFEST} (not a model directory written by `python -m export`)")
    try:
        data = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelDirError(f"{mpath}: not valid JSON ({e})") from e
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ModelDirError(f"{mpath}: format {data.get('format') if isinstance(data, dict) else None!r}, "
                            f"expected {FORMAT!r}")
    if data.get("version") != VERSION:
        raise ModelDirError(f"{mpath}: format version {data.get('version')!r}, this code reads version {VERSION}")
    for key in ("config", "frontend", "norm", "fingerprint", "graphs"):
        if key not in data:
            raise ModelDirError(f"{mpath}: missing field {key!r}")
    for key in ("n_mels", "patch", "d_model", "conditioning", "text_dim", "max_frames", "beat_probes"):
        if key not in data["config"]:
            raise ModelDirError(f"{mpath}: config lacks {key!r}")
    for g in MODEL_GRAPHS:
        if "fp32" not in data["graphs"].get(g, {}):
            raise ModelDirError(f"{mpath}: no fp32 {g} graph listed")
    for label, e in _entries(data):
        p = root / e["path"]
        if not p.is_file():
            raise ModelDirError(f"{root}: {label}: file {e['path']} is missing")
        if verify and sha256_file(p) != e["sha256"]:
            raise ModelDirError(f"{root}: {label}: {e['path']} is corrupt (sha256 differs from the manifest)")
    check_contract(data, root, read_graphs=read_graphs)
    check_torch_contract(data, root)
    return Manifest(root=root, data=data)
