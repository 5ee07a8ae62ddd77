"""Checkpoint -> model directory (docs/model_dir.md), with parity checks.

Everything is written to a temporary sibling directory and renamed into place at the end, so a
failed export (parity, text check, anything) never leaves a half-written model directory.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from engine.manifest import FORMAT, MANIFEST, MODEL_GRAPHS, VERSION, ModelDirError, expected_io, graph_filename, load_manifest, sha256_file

PRODUCER = "stemjepa-live 0.1.0"
OPSET = 17
CPU_PRECISIONS = ("fp32", "fp16", "int8")  # what ONNX Runtime's CPU provider runs (bf16: no kernels)

# Parity tolerances per precision, checked on one dummy input per graph against PyTorch fp32.
# "max_abs": largest absolute difference allowed; "min_cos": lowest cosine between the flattened
# output rows (tokens per window, embedding per instrument, activation per window).
TOLERANCES = {
    "fp32": {"max_abs": 2e-3, "min_cos": 0.99999},
    "fp16": {"max_abs": 0.1, "min_cos": 0.999},
    "int8": {"max_abs": None, "min_cos": 0.97},
    "bf16": {"max_abs": None, "min_cos": 0.99},
}
# beat activations are probabilities: bound the absolute error instead of the direction
BEAT_TOLERANCES = {"fp32": 1e-4, "fp16": 5e-3, "int8": 5e-2, "bf16": 2e-2}


class ExportError(RuntimeError):
    """The export failed; nothing was written to the output directory."""


def fingerprint(model) -> str:
    """sha256 over names, dtypes, shapes and bytes of the inference weights (target encoder,
    encoder, predictor, beat head), in a fixed order."""
    h = hashlib.sha256()
    for part in ("target_encoder", "encoder", "predictor", "beat_head"):
        sd = getattr(model, part).state_dict()
        for k in sorted(sd):
            t = sd[k].detach().cpu().contiguous()
            h.update(f"{part}.{k}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.numpy().tobytes())
    return h.hexdigest()


def ort_cpu_supports(precision: str) -> tuple[bool, str]:
    """Whether ONNX Runtime's CPU provider can run a graph of this precision (probed, not assumed)."""
    if precision in ("fp32", "int8"):
        return True, ""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    et = {"fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}[precision]
    g = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"]), helper.make_node("Add", ["c", "a"], ["d"])],
                          "probe", [helper.make_tensor_value_info(n, et, [2, 2]) for n in "ab"],
                          [helper.make_tensor_value_info("d", et, [2, 2])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=9)
    try:
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        return True, ""
    except Exception as e:  # NOT_IMPLEMENTED: no kernel
        return False, f"ONNX Runtime {ort.__version__} CPU has no {precision} kernels ({str(e).splitlines()[0][-120:]})"


def _dummy_inputs(cfg, norm: dict, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    logmel = norm["mean"] + norm["std"] * torch.randn(2, cfg.n_mels, cfg.max_frames, generator=g)
    p = cfg.freq_patches * cfg.max_columns
    tokens = torch.randn(1, p, cfg.d_model, generator=g)
    btokens = torch.randn(2, p, cfg.d_model, generator=g)
    if cfg.conditioning == "film":
        cond = torch.nn.functional.normalize(torch.randn(3, cfg.text_dim, generator=g), dim=-1)
    else:
        cond = torch.tensor([0, 3, 1], dtype=torch.long)
    return {
        "encoder": {"logmel": logmel},
        "target_encoder": {"logmel": logmel},
        "predictor": {"tokens": tokens, "cond": cond},
        "beat_head": {"tokens": btokens},
    }


DYNAMIC_AXES = {
    "encoder": {"logmel": {0: "B", 2: "T"}, "tokens": {0: "B", 1: "P"}},
    "target_encoder": {"logmel": {0: "B", 2: "T"}, "tokens": {0: "B", 1: "P"}},
    "predictor": {"tokens": {1: "P"}, "cond": {0: "N"}, "embedding": {0: "N"}},
    "beat_head": {"tokens": {0: "B", 1: "P"}, "activation": {0: "B", 1: "A"}},
}


def _export_onnx(module, inputs: dict, path: Path, name: str, cfg_dict: dict) -> None:
    import torch

    io = expected_io({"n_mels": 80, "d_model": 1, "text_dim": 1, "conditioning": "film"})[name]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        # no stft in these graphs: the TorchScript-based exporter handles them, fast and with
        # dynamic axes (batch, time) from `dynamic_axes`
        torch.onnx.export(module, tuple(inputs.values()), str(path), dynamo=False, opset_version=OPSET,
                          input_names=list(inputs), output_names=list(io["outputs"]),
                          dynamic_axes=DYNAMIC_AXES[name], do_constant_folding=True)
    _materialise_shared_initializers(path, name, cfg_dict)


def _materialise_shared_initializers(path: Path, name: str, cfg_dict: dict, exp: dict | None = None) -> None:
    """Post-process an exported graph:

    * the exporter deduplicates equal weights (e.g. FiLM layers still at their zero init) into one
      initializer plus Identity nodes; ORT's quantiser mishandles those: give each user its copy;
    * write the contract's shapes on the graph I/O (static sizes the exporter left symbolic).
    """
    import onnx

    m = onnx.load(str(path))
    exp = exp or expected_io(cfg_dict)[name]  # the graph's I/O contract (streaming graphs pass theirs)
    for side, vis in (("inputs", m.graph.input), ("outputs", m.graph.output)):
        for vi in vis:
            want = exp[side].get(vi.name, {}).get("shape")
            dims = vi.type.tensor_type.shape.dim
            if want is None or len(want) != len(dims):
                continue
            for dim, w in zip(dims, want):
                if isinstance(w, int) and not (name == "predictor" and vi.name == "tokens" and w == 1 and not dim.HasField("dim_value")):
                    dim.ClearField("dim_param")
                    dim.dim_value = w
                elif isinstance(w, str):
                    dim.ClearField("dim_value")
                    dim.dim_param = w
    inits = {t.name: t for t in m.graph.initializer}
    keep = []
    changed = False
    for n in m.graph.node:
        if n.op_type == "Identity" and n.input[0] in inits:
            t = onnx.TensorProto()
            t.CopyFrom(inits[n.input[0]])
            t.name = n.output[0]
            m.graph.initializer.append(t)
            changed = True
        else:
            keep.append(n)
    if changed:
        del m.graph.node[:]
        m.graph.node.extend(keep)
    onnx.save(m, str(path))


def _convert(src: Path, dst: Path, precision: str) -> None:
    import onnx

    if precision == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        m = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
        onnx.save(m, str(dst))
    elif precision == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        # MatMul only: the 2-D Gemms (FiLM projections of the (N, C) condition) are negligible work,
        # and ORT 1.31's per-channel Gemm->MatMul rewrite produced an invalid graph for them
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8,
                         per_channel=True, extra_options={"MatMulConstBOnly": True})
    elif precision == "bf16":
        raise ExportError("bf16 ONNX graphs are not produced on this build (no CPU kernels to check them)")
    else:
        raise ExportError(f"unknown precision {precision!r}")


def _io_record(path: Path) -> dict:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    types = {1: "float32", 7: "int64", 10: "float16", 16: "bfloat16"}

    def rec(vi):
        dims = [int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?")
                for d in vi.type.tensor_type.shape.dim]
        return {"shape": dims, "dtype": types.get(vi.type.tensor_type.elem_type, str(vi.type.tensor_type.elem_type))}

    return {"inputs": {i.name: rec(i) for i in m.graph.input}, "outputs": {o.name: rec(o) for o in m.graph.output}}


def _apply_contract_symbols(rec: dict, exp: dict) -> dict:
    """Replace exporter-chosen symbolic dim names in ``rec`` by those of the contract ``exp``."""
    for side in ("inputs", "outputs"):
        for k, spec in rec[side].items():
            want = exp[side].get(k, {}).get("shape")
            if want and len(want) == len(spec["shape"]):
                spec["shape"] = [w if isinstance(s, str) else s for s, w in zip(spec["shape"], want)]
    return rec


def _normalise_symbols(rec: dict, name: str, cfg_dict: dict) -> dict:
    """Replace exporter-chosen symbolic dim names by the contract's letters (B, T, P, N, A)."""
    return _apply_contract_symbols(rec, expected_io(cfg_dict)[name])


def _parity(ref: np.ndarray, got: np.ndarray, precision: str, graph: str) -> dict:
    ref = ref.reshape(ref.shape[0], -1).astype(np.float64)
    got = got.reshape(got.shape[0], -1).astype(np.float64)
    max_abs = float(np.abs(ref - got).max())
    nr, ng = np.linalg.norm(ref, axis=1), np.linalg.norm(got, axis=1)
    cos = np.sum(ref * got, 1) / np.maximum(nr * ng, 1e-12)
    cos[(nr < 1e-12) & (ng < 1e-12)] = 1.0  # two zero rows agree (e.g. FiLM codes at their zero init)
    out = {"max_abs": max_abs, "min_cos": float(cos.min())}
    if graph == "beat_head":
        tol = {"max_abs": BEAT_TOLERANCES[precision], "min_cos": None}
    else:
        tol = dict(TOLERANCES[precision])
    out["tol"] = tol
    ok = (tol["max_abs"] is None or max_abs <= tol["max_abs"]) and (tol["min_cos"] is None or cos.min() >= tol["min_cos"])
    out["ok"] = bool(ok)
    return out


def _run_ort(path: Path, inputs: dict) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    feeds = {k: v.numpy() for k, v in inputs.items()}
    return s.run(None, feeds)[0]


def _worst(parities: list[dict]) -> dict:
    out = dict(parities[0])
    out["max_abs"] = max(p["max_abs"] for p in parities)
    out["min_cos"] = min(p["min_cos"] for p in parities)
    out["ok"] = all(p["ok"] for p in parities)
    return out


def _export_torchscript(name: str, mod, inputs: dict, ref: np.ndarray, tmp: Path, cfg_dict: dict, log) -> dict:
    """TorchScript fp32 + bf16 files of one graph, each loaded back from disk and checked against
    PyTorch eager fp32 on the dummy input and on other shapes (docs/model_dir.md)."""
    import torch

    from . import torchscript as ts
    from .torchscript import TS_PRECISIONS

    io = expected_io(cfg_dict)[name]
    others = ts.extra_shapes(name, inputs)
    with torch.no_grad():
        other_refs = [mod(*x).numpy() for x in others]
    entries = {}
    for prec in TS_PRECISIONS:
        path = tmp / ts.ts_filename(name, prec)
        ts.save(ts.trace(mod, tuple(inputs.values()), prec), path)
        loaded = ts.load(path)
        pars = [_parity(ref, ts.run(loaded, tuple(inputs.values())), prec, name)]
        pars += [_parity(r, ts.run(loaded, x), prec, name) for r, x in zip(other_refs, others)]
        par = _worst(pars)
        par["shapes"] = [[list(t.shape) for t in inputs.values()]] + [[list(t.shape) for t in x] for x in others]
        if not par["ok"]:
            raise ExportError(f"parity check failed: {name} (torchscript {prec}) vs PyTorch eager: max_abs "
                              f"{par['max_abs']:.3g}, min cosine {par['min_cos']:.6f}; tolerance {par['tol']}")
        entries[prec] = {"path": path.name, "sha256": sha256_file(path), **json.loads(json.dumps(io)), "parity": par}
        log(f"export: {name:15s} {prec:5s} torchscript ok  max_abs {par['max_abs']:.2e}  min_cos {par['min_cos']:.6f}")
    return entries


def strip_checkpoint(state: dict) -> dict:
    """Keep what rebuilding the model for inference needs (no optimizer, rng, train args)."""
    keep = ("format", "version", "config", "frontend", "norm", "text", "labels", "ranking")
    out = {k: state[k] for k in keep if k in state}
    out["model"] = {k: v.detach().clone() for k, v in state["model"].items()}
    out["stripped"] = True
    return out


def _ranking(state: dict, keytempo_weight: float | None) -> dict:
    """The model directory's ``ranking`` entry: the weight given, else the checkpoint's, else the default."""
    from engine.keytempo import DEFAULT_WEIGHT

    own = state.get("ranking") if isinstance(state.get("ranking"), dict) else {}
    w = keytempo_weight if keytempo_weight is not None else own.get("keytempo_weight", DEFAULT_WEIGHT)
    if not 0.0 <= float(w) <= 1.0:
        raise ExportError(f"keytempo_weight must be in [0, 1], got {w}")
    src = "given" if keytempo_weight is not None else ("checkpoint" if "keytempo_weight" in own else "default")
    return {"keytempo_weight": float(w), "source": src}


def publish_dir(tmp: Path, out_dir: Path) -> None:
    """Put the finished directory ``tmp`` at ``out_dir`` by renames, replacing any old one; the
    old one is removed only after the new one is in place."""
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out_dir)


def _text_source_ok(d: Path) -> bool:
    return (d / "text_encoder.onnx").is_file() and (d / "tokenizer.json").is_file()


def export_model(checkpoint: str | Path, out_dir: str | Path, precisions=("fp32",), *, text: bool = True,
                 text_from: str | Path | None = None, overwrite: bool = False, checkpoint_copy: bool = True,
                 conditioning_from: str | Path | None = None, text_info_extra: dict | None = None,
                 keytempo_weight: float | None = None, log=print) -> dict:
    """Export ``checkpoint`` to ``out_dir``; returns the manifest dict. Raises :class:`ExportError`.

    ``precisions``: any of fp32, fp16, int8, bf16 (fp32 is always written). A precision the CPU
    provider cannot run (bf16 here) is skipped and recorded under ``manifest["skipped"]``.
    ``text_from``: a directory holding ``text_encoder.onnx`` + ``tokenizer.json`` already exported
    (e.g. another model directory) to copy instead of exporting MiniLM again.
    ``checkpoint_copy``: also write ``model.pt`` (the stripped checkpoint; only the torch-tensorrt
    route of ``--trt`` reads it). Off for the shipped model, to keep the repository small.
    ``keytempo_weight``: the fused ranking's weight written as ``ranking.keytempo_weight``
    (engine/keytempo.py; None: the checkpoint's own ``ranking``, else the engine default).
    ``conditioning_from``: a ``conditioning.npz`` to copy instead of encoding the labels again
    (building a packed model: export.cache). ``text_info_extra``: fields added to ``text``.
    """
    import torch

    from training.checkpoint import CheckpointError, load_model

    from .graphs import build_graphs
    from .torchscript import EXPORTER as TS_EXPORTER, TS_PRECISIONS

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    t_start = time.time()
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise ExportError(f"{out_dir} exists; pass --overwrite to replace it")
    try:
        model, state = load_model(checkpoint)
    except CheckpointError as e:
        raise ExportError(str(e)) from e
    cfg = model.cfg
    norm = state["norm"]
    text_info = dict(state.get("text") or {"encoder": "all-MiniLM-L6-v2", "dim": cfg.text_dim})
    text_info.update(text_info_extra or {})
    labels = [str(x) for x in (state.get("labels") or [])]
    wanted = ["fp32"] + [p for p in dict.fromkeys(precisions) if p != "fp32"]
    skipped = {}
    for p in list(wanted):
        ok, why = ort_cpu_supports(p)
        if not ok:
            skipped[p] = why
            wanted.remove(p)
            log(f"export: skipping {p}: {why}")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        graphs = build_graphs(model, norm)
        dummies = _dummy_inputs(cfg, norm)
        graph_entries: dict[str, dict] = {}
        torch_entries: dict[str, dict] = {}
        for name in MODEL_GRAPHS:
            mod, inputs = graphs[name], dummies[name]
            with torch.no_grad():
                ref = mod(*inputs.values()).numpy()
            fp32_path = tmp / graph_filename(name, "fp32")
            _export_onnx(mod, inputs, fp32_path, name, cfg.to_dict())
            graph_entries[name] = {}
            for prec in wanted:
                path = tmp / graph_filename(name, prec)
                if prec == "int8" and name == "beat_head":
                    # one (5d x 8) matmul per column: int8 saves nothing, and ONNX Runtime 1.32's
                    # dynamic quantisation moved its activations by up to 0.053 (tolerance 0.05)
                    shutil.copyfile(fp32_path, path)
                elif prec != "fp32":
                    _convert(fp32_path, path, prec)
                got = _run_ort(path, inputs)
                par = _parity(ref, got, prec, name)
                if not par["ok"]:
                    raise ExportError(f"parity check failed: {name} ({prec}) vs PyTorch: max_abs {par['max_abs']:.3g}, "
                                      f"min cosine {par['min_cos']:.6f}; tolerance {par['tol']}")
                rec = _normalise_symbols(_io_record(path), name, cfg.to_dict())
                graph_entries[name][prec] = {"path": path.name, "sha256": sha256_file(path), **rec, "parity": par}
                log(f"export: {name:15s} {prec:5s} ok  max_abs {par['max_abs']:.2e}  min_cos {par['min_cos']:.6f}")
            torch_entries[name] = _export_torchscript(name, mod, inputs, ref, tmp, cfg.to_dict(), log)
        stream_entry = None
        if cfg.causal:  # the streaming graphs of engine/stream.py, checked the same way
            from .stream import export_stream_graphs

            stream_entry = export_stream_graphs(model, norm, tmp, wanted, log)

        files: dict[str, dict] = {}
        if cfg.conditioning == "film" and text:
            if text_info.get("encoder") != "all-MiniLM-L6-v2" or int(text_info.get("dim", 0)) != cfg.text_dim:
                log(f"export: the checkpoint's text encoder is {text_info}; only all-MiniLM-L6-v2 is exported to ONNX "
                    f"-> no text_encoder.onnx (conditioning limited to the cache)")
            elif text_from is not None and _text_source_ok(Path(text_from)):
                for f in ("text_encoder.onnx", "tokenizer.json"):
                    shutil.copyfile(Path(text_from) / f, tmp / f)
                src_manifest = Path(text_from) / MANIFEST
                if src_manifest.is_file():
                    prev = json.loads(src_manifest.read_text()).get("text", {})
                    text_info.update({k: v for k, v in prev.items() if k not in ("encoder", "dim")})
                log(f"export: text encoder copied from {text_from}")
            else:
                from .text import TextExportError, export_minilm

                try:
                    info = export_minilm(tmp)
                except TextExportError as e:
                    raise ExportError(str(e)) from e
                text_info.update(info)
                log(f"export: text encoder ok  min cosine vs sentence-transformers {info['min_cosine']:.4f} "
                    f"on {info['names']} names")
            if (tmp / "text_encoder.onnx").is_file():
                p = tmp / "text_encoder.onnx"
                rec = _normalise_symbols_text(_io_record(p), cfg.text_dim)
                graph_entries["text_encoder"] = {"int8": {"path": p.name, "sha256": sha256_file(p), **rec,
                                                          "parity": {"min_cos": text_info.get("min_cosine"),
                                                                     "tol": {"min_cos": 0.99}}}}
                files["tokenizer"] = {"path": "tokenizer.json", "sha256": sha256_file(tmp / "tokenizer.json")}

        if cfg.conditioning == "film" and conditioning_from is not None:
            shutil.copyfile(conditioning_from, tmp / "conditioning.npz")
            with np.load(tmp / "conditioning.npz") as z:
                count = int(len(z["names"]))
            files["conditioning"] = {"path": "conditioning.npz", "sha256": sha256_file(tmp / "conditioning.npz"),
                                     "count": count}
        elif cfg.conditioning == "film":
            names, vecs = _conditioning_cache(labels, text_info, cfg.text_dim, log)
            np.savez(tmp / "conditioning.npz", names=np.array(names, dtype=str),
                     vectors=vecs.astype(np.float32).reshape(len(names), cfg.text_dim))
            files["conditioning"] = {"path": "conditioning.npz", "sha256": sha256_file(tmp / "conditioning.npz"),
                                     "count": len(names)}
        if checkpoint_copy:
            torch.save(strip_checkpoint(state), tmp / "model.pt")
            files["model_pt"] = {"path": "model.pt", "sha256": sha256_file(tmp / "model.pt")}

        from training.config import CLASSES

        manifest = {
            "format": FORMAT, "version": VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "producer": PRODUCER,
            "source": {"checkpoint": str(Path(checkpoint).name), "step": state.get("step"), "phase": state.get("phase")},
            "config": cfg.to_dict(),
            "frontend": dict(state["frontend"]),
            "norm": {"mean": float(norm["mean"]), "std": float(norm["std"])},
            "text": text_info,
            "classes": list(CLASSES),
            "labels": labels,
            "fingerprint": fingerprint(model),
            "precisions": wanted,
            "skipped": skipped,
            "tolerances": {"default": TOLERANCES, "beat_head_max_abs": BEAT_TOLERANCES},
            "graphs": graph_entries,
            "files": files,
            "onnx": {"opset": OPSET, "exporter": "torch.onnx.export(dynamo=False)", "torch": torch.__version__},
            "torch": {"format": "torchscript", "exporter": TS_EXPORTER, "torch": torch.__version__,
                      "precisions": list(TS_PRECISIONS), "graphs": torch_entries},
        }
        if stream_entry is not None:
            manifest["stream"] = stream_entry
        manifest["ranking"] = _ranking(state, keytempo_weight)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, default=_jsonable))
        try:  # the directory must pass its own validation before it is published
            load_manifest(tmp)
        except ModelDirError as e:
            raise ExportError(f"the exported directory fails validation: {e}") from e
        publish_dir(tmp, out_dir)
        log(f"export: wrote {out_dir} ({', '.join(wanted)}) in {time.time() - t_start:.1f} s")
        return manifest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _jsonable(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return str(o)


def _normalise_symbols_text(rec: dict, dim: int) -> dict:
    exp = expected_io({"n_mels": 80, "d_model": 1, "text_dim": dim, "conditioning": "film"}, dim)["text_encoder"]
    return _apply_contract_symbols(rec, exp)


def _conditioning_cache(labels: list[str], text_info: dict, dim: int, log) -> tuple[list[str], np.ndarray]:
    """Vectors of the checkpoint's training labels, from the text model the checkpoint was trained
    with (sentence-transformers, fp32), so cached names condition exactly as in training."""
    from engine.text import normalise_name

    names = sorted({normalise_name(x) for x in labels})
    if not names:
        log("export: the checkpoint carries no 'labels' -> empty conditioning cache (names go through the text encoder)")
        return [], np.zeros((0, dim), np.float32)
    if text_info.get("encoder") != "all-MiniLM-L6-v2":
        log(f"export: cannot encode labels with {text_info.get('encoder')!r} here -> empty conditioning cache")
        return [], np.zeros((0, dim), np.float32)
    from engine.text import MiniLMText

    return names, MiniLMText().encode(names)
