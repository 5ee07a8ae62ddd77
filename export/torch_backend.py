"""PyTorch backends (``torch-fp32``, ``torch-bf16``, ``torch-cuda-*``) over a model directory.

Export-time / tooling only (``export.trt``, comparisons against eager): rebuilds the model from
``model.pt`` with ``training.checkpoint.load_model`` and runs the same wrapper modules the ONNX
graphs were exported from (``export.graphs``), in eager mode. The engine's torch kinds do NOT use
this module: ``engine.torch_backend`` loads the model directory's self-contained TorchScript files
and imports neither ``training`` nor ``export`` (docs/architecture.md).
"""
from __future__ import annotations

import contextlib
from typing import Sequence

import numpy as np
import torch

from engine.contract import Conditioner, InputSpec
from engine.manifest import Manifest, ModelDirError, load_manifest

from .graphs import build_graphs


class TorchModel:
    def __init__(self, model_dir, device: str = "cpu"):
        from training.checkpoint import load_model

        self.manifest = model_dir if isinstance(model_dir, Manifest) else load_manifest(model_dir)
        path = self.manifest.file("model_pt")
        if path is None:
            raise ModelDirError(f"{self.manifest.root}: no model.pt listed")
        model, state = load_model(path)
        if model.cfg.to_dict() != self.manifest.config:
            raise ModelDirError(f"{self.manifest.root}: model.pt config differs from the manifest's")
        self.model = model.to(device)
        self.graphs = build_graphs(self.model, self.manifest.norm)
        self.device = device


class TorchBackend:
    """Eager twin of ``engine.torch_backend.TorchBackend`` (same interface), for comparisons."""

    def __init__(self, manifest: Manifest, kind: str = "torch-fp32", threads: int = 1):
        self.name = kind
        self.manifest = manifest
        self.threads = threads
        self.device = "cuda" if "cuda" in kind else "cpu"
        if self.device == "cpu" and threads:
            torch.set_num_threads(max(1, int(threads)))
        self.tm = TorchModel(manifest, device=self.device)
        self.g = self.tm.graphs
        self.bf16 = kind.endswith("bf16")
        self.conditioner = Conditioner(manifest, threads=threads)
        self.inputs = InputSpec(manifest)

    def _ctx(self):
        if self.bf16:
            return torch.autocast(self.device, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _run(self, graph: str, *arrays) -> np.ndarray:
        ts = [torch.from_numpy(np.ascontiguousarray(a)).to(self.device) for a in arrays]
        with torch.inference_mode(), self._ctx():
            out = self.g[graph](*ts)
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

    def __repr__(self):
        return f"<{self.name} backend {self.manifest.root} threads={self.threads}>"
