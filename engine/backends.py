"""Inference backends over a model directory (docs/model_dir.md).

``load_backend(model_dir, device="cpu", kind=None, threads=1)`` returns an
``engine.contract.Backend``: ``name``, ``manifest``, ``encode``, ``encode_target``, ``predict``,
``beats``, ``condition``, and ``stream`` (the manifest's streaming entry, or None); causal models'
backends are also ``engine.contract.StreamingBackend``s: ``encode_step``, ``encode_target_step``,
``predict_code`` and ``predict_tokens`` (engine/stream.py). Every backend checks its inputs with
``engine.contract.InputSpec`` (a bad one raises ``BackendInputError``, a ``BackendError``).

Kinds:

=================  ==========================================================================
``onnx-fp32``      ONNX Runtime CPU, fp32 graphs                         (no torch import)
``onnx-fp16``      ONNX Runtime CPU, fp16 graphs (fp32 I/O)              (no torch import)
``onnx-int8``      ONNX Runtime CPU, dynamic-int8 MatMul graphs          (no torch import)
``torch-fp32``     PyTorch, the directory's TorchScript fp32 files (needs torch only)
``torch-bf16``     PyTorch, TorchScript bf16 files (bf16 weights + autocast casts; AMX / AVX512-BF16)
``onnx-cuda-fp32`` ONNX Runtime CUDA provider (onnxruntime-gpu)
``onnx-cuda-fp16`` ONNX Runtime CUDA provider, fp16 graphs
``trt-fp16``       ONNX Runtime TensorRT provider, FP16, engine cache in ``MODEL_DIR/trt``
``torch-cuda-fp32`` / ``torch-cuda-bf16``  PyTorch on CUDA
=================  ==========================================================================

``kind=None`` takes the first available kind of a static preference order (measured with
``python -m export.bench`` on the 2-core AVX-512/AMX machine, see docs/model_dir.md):

* cpu:  onnx-int8, onnx-fp32, torch-bf16, torch-fp32
* cuda: trt-fp16, onnx-cuda-fp16, onnx-cuda-fp32, torch-cuda-bf16, torch-cuda-fp32

The torch kinds import ``engine.torch_backend`` (and torch) lazily; they load self-contained
TorchScript files and import neither ``training`` nor ``export``. The ONNX kinds import only
numpy, onnxruntime and tokenizers.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Sequence

import numpy as np

from .contract import Backend, BackendError, BackendInputError, Conditioner, InputSpec, StreamingBackend, pool
from .manifest import Manifest, ModelDirError, load_manifest
from .stream import STREAM_GRAPHS, stream_info

CPU_ORDER = ("onnx-int8", "onnx-fp32", "torch-bf16", "torch-fp32")
CUDA_ORDER = ("trt-fp16", "onnx-cuda-fp16", "onnx-cuda-fp32", "torch-cuda-bf16", "torch-cuda-fp32")
ALL_KINDS = ("onnx-fp32", "onnx-fp16", "onnx-int8", "torch-fp32", "torch-bf16") + CUDA_ORDER

#: the contract (engine/contract.py), re-exported: ``from engine.backends import BackendError, pool``
__all__ = ["ALL_KINDS", "CPU_ORDER", "CUDA_ORDER", "Backend", "BackendError", "BackendInputError", "Conditioner",
           "OnnxBackend", "StreamingBackend", "available_kinds", "load_backend", "pool"]


# ---------------------------------------------------------------------------------------------
# ONNX Runtime


def _ort_providers(kind: str, model_dir: Path, cfg: dict):
    if kind.startswith("onnx-cuda"):
        return [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
    if kind == "trt-fp16":
        cache = model_dir / "trt"
        return [("TensorrtExecutionProvider", {"device_id": 0, "trt_fp16_enable": True, "trt_engine_cache_enable": True,
                                               "trt_engine_cache_path": str(cache), "trt_timing_cache_enable": True,
                                               "trt_timing_cache_path": str(cache)}),
                ("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxBackend:
    def __init__(self, manifest: Manifest, kind: str = "onnx-fp32", threads: int = 1):
        import onnxruntime as ort

        self.manifest = manifest
        self.name = kind
        self.threads = threads
        prec = {"onnx-fp32": "fp32", "onnx-fp16": "fp16", "onnx-int8": "int8", "onnx-cuda-fp32": "fp32",
                "onnx-cuda-fp16": "fp16", "trt-fp16": "fp32"}[kind]
        self.precision = prec
        providers = _ort_providers(kind, manifest.root, manifest.config)
        so = ort.SessionOptions()
        so.intra_op_num_threads = max(1, int(threads))
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        if threads <= 1:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.sessions = {}
        for g in ("encoder", "target_encoder", "predictor", "beat_head"):
            p = prec if manifest.has(g, prec) else "fp32"
            self.sessions[g] = ort.InferenceSession(str(manifest.graph_path(g, p)), so, providers=providers)
        self._check_io()
        self.conditioner = Conditioner(manifest, threads=threads)
        self.inputs = InputSpec(manifest)
        self.stream = stream_info(manifest)  # None: no streaming graphs (bidirectional model)
        self.stream_precision = None
        if self.stream is not None:
            sg = self.stream["graphs"]
            self.stream_precision = prec if all(prec in sg.get(g, {}) for g in STREAM_GRAPHS) else "fp32"
            for g in STREAM_GRAPHS:
                self.sessions[g] = ort.InferenceSession(str(manifest.root / sg[g][self.stream_precision]["path"]), so,
                                                        providers=providers)

    def _check_io(self):
        cfg = self.manifest.config
        d = int(cfg["d_model"])
        for g, s in self.sessions.items():
            for o in s.get_outputs():
                last = o.shape[-1]
                if g != "beat_head" and isinstance(last, int) and last != d:
                    raise ModelDirError(f"{self.manifest.root}: {g} graph outputs width {last}, config d_model={d}")

    def encode(self, logmel: np.ndarray) -> np.ndarray:
        return self.sessions["encoder"].run(None, {"logmel": self.inputs.logmel(logmel)})[0]

    def encode_target(self, logmel: np.ndarray) -> np.ndarray:
        return self.sessions["target_encoder"].run(None, {"logmel": self.inputs.logmel(logmel)})[0]

    def predict(self, tokens: np.ndarray, cond: np.ndarray) -> np.ndarray:
        feeds = {"tokens": self.inputs.tokens(tokens, one=True), "cond": self.inputs.cond(cond)}
        return self.sessions["predictor"].run(None, feeds)[0]

    def beats(self, tokens: np.ndarray) -> np.ndarray:
        return self.sessions["beat_head"].run(None, {"tokens": self.inputs.tokens(tokens)})[0]

    def condition(self, names: Sequence[str]) -> np.ndarray:
        return self.conditioner(names)

    # streaming (engine/stream.py): causal models only
    def _need_stream(self):
        if self.stream is None:
            raise BackendError(f"{self.manifest.root}: no streaming graphs (not a causal model, or exported before them)")

    def _step(self, graph, logmel, k_cache, v_cache, past_age):
        self._need_stream()
        feeds = {"logmel": self.inputs.logmel(logmel, "step input"), "past_age": past_age}
        feeds.update({f"k_cache_{i}": k for i, k in enumerate(k_cache)})  # views of the ring: no copy
        feeds.update({f"v_cache_{i}": v for i, v in enumerate(v_cache)})
        return self.sessions[graph].run(None, feeds)

    def encode_step(self, logmel, k_cache, v_cache, past_age):
        """``(B, 80, 16 c)``, caches ``(L, B, H, S, d/H)``, ``(S,)`` -> tokens ``(B, 5 c, d)``,
        ``k_new, v_new (L, B, H, 5 c, d/H)`` (engine/stream.py)."""
        return self._step("encoder_step", logmel, k_cache, v_cache, past_age)

    def encode_target_step(self, logmel, k_cache, v_cache, past_age):
        return self._step("target_encoder_step", logmel, k_cache, v_cache, past_age)

    def predict_code(self, cond: np.ndarray) -> np.ndarray:
        """``(N, C) | (N,)`` -> ``(N, K)``: the conditions' codes (engine/stream.py)."""
        self._need_stream()
        return self.sessions["predictor_code"].run(None, {"cond": self.inputs.cond(cond)})[0]

    def predict_tokens(self, tokens: np.ndarray, code: np.ndarray) -> np.ndarray:
        """``(1, P, d)``, ``(N, K)`` codes -> the predictor per token ``(N, P, d)``."""
        self._need_stream()
        feeds = {"tokens": self.inputs.tokens(tokens, one=True), "code": self.inputs.code(code)}
        return self.sessions["predictor_tokens"].run(None, feeds)[0]

    def __repr__(self):
        return f"<{self.name} backend {self.manifest.root} threads={self.threads}>"


# ---------------------------------------------------------------------------------------------
# availability and selection


def _ort_providers_available() -> list[str]:
    if importlib.util.find_spec("onnxruntime") is None:
        return []
    import onnxruntime as ort

    return list(ort.get_available_providers())


def _torch_cuda() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


def available_kinds(manifest: Manifest, device: str = "cpu") -> list[str]:
    """Kinds that can run ``manifest``'s directory on ``device`` here, in preference order."""
    out = []
    provs = _ort_providers_available()
    if device == "cpu":
        for k in CPU_ORDER + ("onnx-fp16",):
            if k.startswith("onnx-"):
                if "CPUExecutionProvider" in provs and manifest.has("encoder", k.split("-")[1]):
                    out.append(k)
            elif k.startswith("torch-") and _torch_backend_possible(manifest, k):
                out.append(k)
    else:
        for k in CUDA_ORDER:
            if k == "trt-fp16" and "TensorrtExecutionProvider" in provs:
                out.append(k)
            elif k.startswith("onnx-cuda") and "CUDAExecutionProvider" in provs and manifest.has("encoder", k.split("-")[-1]):
                out.append(k)
            elif k.startswith("torch-cuda") and _torch_backend_possible(manifest, k) and _torch_cuda():
                out.append(k)
    return out


def _torch_precision(kind: str) -> str:
    return "bf16" if kind.endswith("bf16") else "fp32"


def _torch_backend_possible(manifest: Manifest, kind: str = "torch-fp32") -> bool:
    return manifest.has_torch(_torch_precision(kind)) and importlib.util.find_spec("torch") is not None


def load_backend(model_dir, device: str = "cpu", kind: str | None = None, threads: int = 1, verify: bool = True):
    """Open ``model_dir`` with the backend ``kind`` (None: the first available of the preference
    order for ``device``). ``device``: "cpu" or "cuda"/"cuda:0"."""
    manifest = model_dir if isinstance(model_dir, Manifest) else load_manifest(model_dir, verify=verify)
    dev = "cpu" if device == "cpu" else "cuda"
    if kind is None:
        kinds = available_kinds(manifest, dev)
        if not kinds:
            raise BackendError(f"no backend can run {manifest.root} on {device} here "
                               f"(ONNX Runtime providers: {_ort_providers_available()})")
        kind = kinds[0]
    if kind not in ALL_KINDS:
        raise BackendError(f"unknown backend kind {kind!r}; choose from {', '.join(ALL_KINDS)}")
    if kind.startswith("torch"):
        if not _torch_backend_possible(manifest, kind):
            raise BackendError(f"{kind} needs torch and the {_torch_precision(kind)} TorchScript files in "
                               f"{manifest.root} (written by this version of `python -m export`)")
        from .torch_backend import TorchBackend

        return TorchBackend(manifest, kind=kind, threads=threads)
    if kind.startswith("onnx-cuda") or kind == "trt-fp16":
        need = "TensorrtExecutionProvider" if kind == "trt-fp16" else "CUDAExecutionProvider"
        if need not in _ort_providers_available():
            raise BackendError(f"{kind} needs ONNX Runtime's {need} (onnxruntime-gpu on a CUDA machine); "
                               f"available: {_ort_providers_available()}")
    prec = kind.split("-")[-1]
    if prec in ("fp16", "int8") and not manifest.has("encoder", prec):
        raise BackendError(f"{manifest.root} has no {prec} graphs (exported: {', '.join(manifest.precisions())})")
    return OnnxBackend(manifest, kind=kind, threads=threads)
