"""PyTorch backends (``torch-fp32``, ``torch-bf16``, ``torch-cuda-fp32``, ``torch-cuda-bf16``).

Runs the self-contained TorchScript files a model directory lists under ``manifest["torch"]``
(docs/model_dir.md) with ``torch.jit.load`` alone: neither the ``training`` package (model
classes) nor ``export`` is imported. Imported lazily by ``engine.backends.load_backend`` for the
torch kinds only, so the ONNX path never imports torch.

The bf16 files hold bfloat16 Linear weights and the autocast casts recorded at export; callers
pass float32 and get float32, as with every other backend. Graphs run with TorchScript's
optimising executor off (``torch.jit.optimized_execution(False)``): same speed here, and no
profiling runs (100+ ms) on the first calls of each new input shape.

Why TorchScript stays although ``torch.jit`` is deprecated upstream (torch 2.13 warns on
``torch.jit.load``; the warning is not silenced here): the graphs must take any window from one
160-ms column (T = 16 frames) to 50, and the streaming step one new column per hop. ``torch.export``
specialises a dynamic size of 1: with ``T = 16 * cols``, ``cols >= 1``, it refines ``cols`` to
>= 2, and with ``backed_size_oblivious`` the export fails its guard ``16 * max(1, T // 16) != 16``
(checked with 2.13). A file per window length would be 50 exported programs per graph. The
ONNX kinds, the default on every device, do not use torch at all; the torch kinds move to
``torch.export`` when it keeps a size-1 dynamic dimension.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .contract import BackendError, Conditioner, InputSpec
from .manifest import MODEL_GRAPHS, Manifest, ModelDirError
from .stream import STREAM_GRAPHS, stream_info


class TorchBackend:
    def __init__(self, manifest: Manifest, kind: str = "torch-fp32", threads: int = 1):
        self.name = kind
        self.manifest = manifest
        self.threads = threads
        self.device = "cuda" if "cuda" in kind else "cpu"
        self.precision = "bf16" if kind.endswith("bf16") else "fp32"
        if self.device == "cpu" and threads:
            torch.set_num_threads(max(1, int(threads)))
        if not manifest.has_torch(self.precision):
            raise BackendError(f"{kind}: {manifest.root} lists no {self.precision} TorchScript graphs "
                               f"(re-export with this version of `python -m export`)")
        self.modules = {}
        for g in MODEL_GRAPHS:
            self.modules[g] = self._load(manifest.torch_path(g, self.precision))
        self.stream = stream_info(manifest)  # None: no streaming graphs (bidirectional model)
        if self.stream is not None:
            for g in STREAM_GRAPHS:
                e = self.stream.get("torch", {}).get(g, {}).get(self.precision)
                if e is None:
                    raise ModelDirError(f"{manifest.root}: no {self.precision} TorchScript {g} (re-export)")
                self.modules[g] = self._load(manifest.root / e["path"])
        self.conditioner = Conditioner(manifest, threads=threads)
        self.inputs = InputSpec(manifest)

    def _load(self, path):
        try:  # torch.jit.load's deprecation warning is left alone (module docstring: why TorchScript stays)
            return torch.jit.load(str(path), map_location=self.device).eval()
        except Exception as e:  # noqa: BLE001 - report which file, whatever torch raised
            raise ModelDirError(f"{self.manifest.root}: {path.name} is not a loadable TorchScript file ({e})") from e

    def _run(self, graph: str, *arrays):
        ts = [torch.from_numpy(np.ascontiguousarray(a)).to(self.device) for a in arrays]
        with torch.jit.optimized_execution(False), torch.inference_mode():
            out = self.modules[graph](*ts)
        if isinstance(out, tuple):
            return [o.float().cpu().numpy() for o in out]
        return out.float().cpu().numpy()

    def encode(self, logmel):
        return self._run("encoder", self.inputs.logmel(logmel))

    def encode_target(self, logmel):
        return self._run("target_encoder", self.inputs.logmel(logmel))

    def predict(self, tokens, cond):
        return self._run("predictor", self.inputs.tokens(tokens, one=True), self.inputs.cond(cond))

    def beats(self, tokens):
        return self._run("beat_head", self.inputs.tokens(tokens))

    def condition(self, names: Sequence[str]) -> np.ndarray:
        return self.conditioner(names)

    # streaming (engine/stream.py): causal models only; same contract as engine.backends.OnnxBackend
    def _need_stream(self):
        if self.stream is None:
            raise BackendError(f"{self.manifest.root}: no streaming graphs (not a causal model, or exported before them)")

    def encode_step(self, logmel, k_cache, v_cache, past_age):
        self._need_stream()
        return self._run("encoder_step", self.inputs.logmel(logmel, "step input"), past_age, *k_cache, *v_cache)

    def encode_target_step(self, logmel, k_cache, v_cache, past_age):
        self._need_stream()
        return self._run("target_encoder_step", self.inputs.logmel(logmel, "step input"), past_age, *k_cache, *v_cache)

    def predict_code(self, cond):
        self._need_stream()
        return self._run("predictor_code", self.inputs.cond(cond))

    def predict_tokens(self, tokens, code):
        self._need_stream()
        return self._run("predictor_tokens", self.inputs.tokens(tokens, one=True), self.inputs.code(code))

    def __repr__(self):
        return f"<{self.name} backend {self.manifest.root} threads={self.threads}>"
