"""Export of the streaming graphs of a causal model (engine/stream.py, docs/model_dir.md).

``encoder_step`` / ``target_encoder_step`` (new columns + key/value cache in; tokens + the new
keys/values out), ``predictor_code`` (a condition's code) and ``predictor_tokens`` (the predictor
per token) go to ONNX at every exported
precision and to TorchScript fp32 / bf16, each checked against PyTorch eager fp32 on a dummy step
(2 streams, 2 new columns, a ring of 250 tokens per layer in shuffled slot order with empty slots) and, for
the TorchScript files, on other shapes (one stream, 1 and 50 new columns; 1 and 250 tokens
through the predictor), with the tolerances of ``export.core``. The manifest's ``"stream"`` entry
lists them; a failed check fails the export.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from engine.stream import STREAM_VERSION, stream_io

def dynamic_axes(layers: int) -> dict:
    step = {"logmel": {0: "B", 2: "T"}, "past_age": {0: "S"}, "tokens": {0: "B", 1: "P"},
            "k_new": {1: "B", 3: "P"}, "v_new": {1: "B", 3: "P"},
            **{f"{kv}_cache_{i}": {0: "B", 2: "S"} for kv in ("k", "v") for i in range(layers)}}
    return {"encoder_step": step, "target_encoder_step": step,
            "predictor_code": {"cond": {0: "N"}, "code": {0: "N"}},
            "predictor_tokens": {"tokens": {1: "P"}, "code": {0: "N"}, "out": {0: "N", 1: "P"}}}


def ring_ages(cfg, filled_columns: int, seed: int = 0):
    """``(S,)`` float32 ages of a ring holding ``filled_columns`` columns in shuffled slot order
    (ages 1..filled), the other slots empty (age ``max_columns``)."""
    import torch

    rng = np.random.default_rng(seed)
    cols = cfg.max_columns
    age = np.full(cols, float(cols), np.float32)
    slots = rng.permutation(cols)[:filled_columns]
    age[slots] = np.arange(1, filled_columns + 1, dtype=np.float32)
    return torch.from_numpy(np.repeat(age, cfg.freq_patches))


def dummy_inputs(cfg, norm: dict, batch: int = 2, columns: int = 2, filled: int = 40, seed: int = 0,
                 code_graph=None) -> dict:
    import torch

    g = torch.Generator().manual_seed(seed)
    s = cfg.max_columns * cfg.freq_patches
    shape = (batch, cfg.heads, s, cfg.d_model // cfg.heads)
    step = {"logmel": norm["mean"] + norm["std"] * torch.randn(batch, cfg.n_mels, columns * cfg.patch, generator=g),
            "past_age": ring_ages(cfg, filled, seed),
            **{f"{kv}_cache_{i}": torch.randn(shape, generator=g) for kv in ("k", "v") for i in range(cfg.depth)}}
    if cfg.conditioning == "film":
        cond = torch.nn.functional.normalize(torch.randn(3, cfg.text_dim, generator=g), dim=-1)
    else:
        cond = torch.tensor([0, 3, 1], dtype=torch.long)
    out = {"encoder_step": step, "target_encoder_step": step, "predictor_code": {"cond": cond}}
    if code_graph is not None:
        with torch.no_grad():
            code = code_graph(cond)
        out["predictor_tokens"] = {"tokens": torch.randn(1, 2 * cfg.freq_patches, cfg.d_model, generator=g), "code": code}
    return out


def _other_inputs(name: str, cfg, norm: dict, inputs: dict) -> list[tuple]:
    if name == "predictor_tokens":
        t, c = inputs["tokens"], inputs["code"]
        import torch

        full = torch.randn(1, cfg.max_columns * cfg.freq_patches, cfg.d_model, generator=torch.Generator().manual_seed(3))
        return [(t[:, :1].contiguous(), c[:1].contiguous()), (full, c)]
    if name == "predictor_code":
        return [(inputs["cond"][:1].contiguous(),)]
    return [tuple(dummy_inputs(cfg, norm, batch=1, columns=c, filled=f, seed=5)[name].values())
            for c, f in ((1, 49), (cfg.max_columns, 0))]


def _parities(refs, gots, precision: str) -> dict:
    from .core import _parity, _worst

    return _worst([_parity(r, g, precision, "encoder") for r, g in zip(refs, gots)])


def export_stream_graphs(model, norm: dict, tmp: Path, precisions, log) -> dict:
    """Write the streaming graphs of ``model`` (causal) into ``tmp``; returns the manifest's
    ``"stream"`` entry. Raises ``export.core.ExportError`` on a failed check."""
    import onnxruntime as ort
    import torch

    from engine.manifest import sha256_file

    from . import torchscript as ts
    from .core import ExportError, _apply_contract_symbols, _convert, _io_record, _materialise_shared_initializers
    from .graphs import build_stream_graphs

    cfg = model.cfg
    io = stream_io(cfg.to_dict())
    graphs = build_stream_graphs(model, norm)
    dummies = dummy_inputs(cfg, norm, code_graph=graphs["predictor_code"])
    onnx_entries: dict[str, dict] = {}
    torch_entries: dict[str, dict] = {}
    for name, mod in graphs.items():
        inputs = dummies[name]
        outs = list(io[name]["outputs"])
        with torch.no_grad():
            r = mod(*inputs.values())
        refs = [t.numpy() for t in (r if isinstance(r, tuple) else (r,))]
        fp32_path = tmp / f"{name}.onnx"
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(mod, tuple(inputs.values()), str(fp32_path), dynamo=False, opset_version=17,
                              input_names=list(inputs), output_names=outs, dynamic_axes=dynamic_axes(cfg.depth)[name],
                              do_constant_folding=True)
        _materialise_shared_initializers(fp32_path, name, cfg.to_dict(), exp=io[name])
        onnx_entries[name] = {}
        for prec in precisions:
            path = fp32_path if prec == "fp32" else tmp / f"{name}.{prec}.onnx"
            if prec != "fp32":
                _convert(fp32_path, path, prec)
            so = ort.SessionOptions()
            so.intra_op_num_threads = 1
            so.log_severity_level = 3
            sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            got = sess.run(None, {k: v.numpy() for k, v in inputs.items()})
            par = _parities(refs, got, prec)
            if not par["ok"]:
                raise ExportError(f"parity check failed: {name} ({prec}) vs PyTorch: max_abs {par['max_abs']:.3g}, "
                                  f"min cosine {par['min_cos']:.6f}; tolerance {par['tol']}")
            rec = _apply_contract_symbols(_io_record(path), io[name])
            onnx_entries[name][prec] = {"path": path.name, "sha256": sha256_file(path), **rec, "parity": par}
            log(f"export: {name:19s} {prec:5s} ok  max_abs {par['max_abs']:.2e}  min_cos {par['min_cos']:.6f}")
        others = _other_inputs(name, cfg, norm, inputs)
        with torch.no_grad():
            other_refs = []
            for x in others:
                o = mod(*x)
                other_refs.append([t.numpy() for t in (o if isinstance(o, tuple) else (o,))])
        torch_entries[name] = {}
        for prec in ts.TS_PRECISIONS:
            path = tmp / ts.ts_filename(name, prec)
            ts.save(ts.trace(mod, tuple(inputs.values()), prec), path)
            loaded = ts.load(path)
            pars = [_parities(refs, ts.run_all(loaded, tuple(inputs.values())), prec)]
            pars += [_parities(rr, ts.run_all(loaded, x), prec) for rr, x in zip(other_refs, others)]
            from .core import _worst

            par = _worst(pars)
            par["shapes"] = [[list(t.shape) for t in inputs.values()]] + [[list(t.shape) for t in x] for x in others]
            if not par["ok"]:
                raise ExportError(f"parity check failed: {name} (torchscript {prec}) vs PyTorch eager: max_abs "
                                  f"{par['max_abs']:.3g}, min cosine {par['min_cos']:.6f}; tolerance {par['tol']}")
            torch_entries[name][prec] = {"path": path.name, "sha256": sha256_file(path),
                                         **json.loads(json.dumps(io[name])), "parity": par}
            log(f"export: {name:19s} {prec:5s} torchscript ok  max_abs {par['max_abs']:.2e}  min_cos {par['min_cos']:.6f}")
    return {"version": STREAM_VERSION, "ring_columns": cfg.max_columns,
            "ring_tokens": cfg.max_columns * cfg.freq_patches, "layers": cfg.depth, "heads": cfg.heads,
            "head_dim": cfg.d_model // cfg.heads, "graphs": onnx_entries, "torch": torch_entries}
