"""Self-contained TorchScript artefacts of the four inference graphs (the torch backends' files).

``engine`` loads these with ``torch.jit.load`` alone: no ``training`` model classes, no
``export`` code. One set per precision:

* ``fp32``: :func:`torch.jit.trace` of the ``export.graphs`` wrappers (exact same arithmetic as
  PyTorch eager);
* ``bf16``: the same wrappers with every ``nn.Linear`` cast to bfloat16, traced under CPU autocast
  bfloat16, so the casts autocast would insert (activations to bf16 before a matmul, back to fp32
  for layer norms and the residual adds) are recorded in the graph; the output is cast to float32.
  Callers pass float32 and get float32. The weights are stored in bf16 (cast once, not per call).

Why TorchScript and not ``torch.export``: with ``T = 16 * cols`` as a derived dynamic dim,
``torch.export`` (torch 2.13) refines ``cols`` to >= 2 (0/1 specialisation), so a one-column
window (T = 16) would be refused; traced TorchScript keeps batch, time, patches and instrument
count dynamic (size ops are recorded), and ran 5-20 % faster than eager here. ``torch.jit`` is
deprecated upstream; its warnings are not silenced (engine/torch_backend.py says why TorchScript
stays); when it goes, these files need another format.

Every artefact is saved, loaded back and checked against PyTorch eager fp32 at export time on the
dummy inputs (tolerances of ``export.core``) and on other shapes (B = 1, T = 16 and 160, N = 1,
one column for the beat head) so a trace that baked in a size fails the export.
"""
from __future__ import annotations

import contextlib
import copy
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

TS_PRECISIONS = ("fp32", "bf16")
EXPORTER = "torch.jit.trace"


def ts_filename(name: str, precision: str) -> str:
    return f"{name}.ts.pt" if precision == "fp32" else f"{name}.{precision}.ts.pt"


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings():
        # the tracer's notes on the graphs' own shape checks (Python conditions it records as
        # constants; the multi-shape parity check catches a trace that baked a size in); torch.jit's
        # deprecation warning is not silenced (engine/torch_backend.py: why TorchScript stays)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        yield


class _Float32Out(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, *args):
        out = self.inner(*args)
        if isinstance(out, tuple):  # the streaming step: tokens and the new keys / values
            return tuple(o.float() for o in out)
        return out.float()


def _bf16_module(mod: nn.Module) -> nn.Module:
    m = copy.deepcopy(mod)
    for sub in m.modules():
        if isinstance(sub, nn.Linear):
            sub.to(torch.bfloat16)
    return _Float32Out(m).eval()


def trace(mod: nn.Module, inputs: tuple, precision: str):
    """Trace ``mod`` (an ``export.graphs`` wrapper) on ``inputs`` for ``precision``."""
    if precision == "fp32":
        target, ctx = mod, contextlib.nullcontext()
    elif precision == "bf16":
        target, ctx = _bf16_module(mod), torch.autocast("cpu", dtype=torch.bfloat16)
    else:
        raise ValueError(f"no TorchScript precision {precision!r}")
    with _quiet(), torch.no_grad(), ctx:
        return torch.jit.trace(target, inputs, check_trace=False)


def save(ts, path: Path) -> None:
    with _quiet():
        torch.jit.save(ts, str(path))


def load(path: Path, device: str = "cpu"):
    with _quiet():
        return torch.jit.load(str(path), map_location=device).eval()


def run(ts, inputs: tuple) -> np.ndarray:
    with torch.jit.optimized_execution(False), torch.inference_mode():
        return ts(*inputs).float().numpy()


def run_all(ts, inputs: tuple) -> list[np.ndarray]:
    """Every output of a graph (one tensor or a tuple), as float32 arrays."""
    with torch.jit.optimized_execution(False), torch.inference_mode():
        out = ts(*inputs)
    return [o.float().numpy() for o in (out if isinstance(out, tuple) else (out,))]


def extra_shapes(name: str, inputs: dict) -> list[tuple]:
    """Other shapes than the dummy's to check a trace did not bake a size in."""
    if name in ("encoder", "target_encoder"):
        x = inputs["logmel"]
        return [(x[:1, :, :16].contiguous(),), (x[:1, :, -160:].contiguous(),)]
    if name == "predictor":
        t, c = inputs["tokens"], inputs["cond"]
        return [(t[:, :50].contiguous(), c[:1].contiguous())]
    if name == "beat_head":
        t = inputs["tokens"]
        return [(t[:1, -5:].contiguous(),)]
    return []
