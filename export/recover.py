"""``python -m export.recover MODEL_DIR OUT.pt``: a training checkpoint rebuilt from a model directory.

A shipped model directory keeps no ``model.pt`` (it would double its size), but its self-contained
TorchScript fp32 files hold every inference weight: encoder, EMA target encoder, predictor and beat
head. This rebuilds a ``training`` checkpoint from them, with the manifest's config, front end,
normalisation, text model and conditioning table, so that training can go on from the shipped
model (``init=OUT.pt``) and evaluation can run on it.

Checks: the rebuilt weights must hash to the manifest's fingerprint (the same hash the export
wrote), so a directory whose files were swapped or edited is refused. The InfoNCE temperature is
not an inference weight; it restarts at its initial value (0.1).
"""
from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from engine.cli import Parser, guarded

# TorchScript file of each part and the prefix its wrapper (export.graphs) puts before the weights
PARTS = {
    "encoder": ("encoder", "encoder."),
    "target_encoder": ("target_encoder", "encoder."),
    "predictor": ("predictor", "p."),
    "beat_head": ("beat_head", "head."),
}


class RecoverError(ValueError):
    pass


def _part_state(ts_path: Path, prefix: str) -> dict[str, torch.Tensor]:
    if not ts_path.is_file():
        raise RecoverError(f"{ts_path}: missing (recovery needs the TorchScript fp32 files of the model directory)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mod = torch.jit.load(str(ts_path), map_location="cpu")
    sd = mod.state_dict()
    out = {k[len(prefix):]: v.detach().clone() for k, v in sd.items() if k.startswith(prefix)}
    if not out:
        raise RecoverError(f"{ts_path}: no weights under {prefix!r}")
    return out


def recover(model_dir: str | Path, out: str | Path | None = None) -> tuple[object, dict]:
    """Rebuild ``(StemJEPA, checkpoint extras)`` from ``model_dir``; write ``out`` if given."""
    from training.checkpoint import save_checkpoint
    from training.config import ModelConfig
    from training.model import StemJEPA

    from .core import fingerprint

    model_dir = Path(model_dir)
    man_path = model_dir / "manifest.json"
    if not man_path.is_file():
        raise RecoverError(f"{model_dir}: no manifest.json (not a model directory)")
    man = json.loads(man_path.read_text())
    try:
        cfg = ModelConfig.from_dict(man["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise RecoverError(f"{man_path}: bad model config ({e})") from e
    model = StemJEPA(cfg)
    for part, (name, prefix) in PARTS.items():
        sd = _part_state(model_dir / f"{name}.ts.pt", prefix)
        sd = {k: v for k, v in sd.items() if k != "pos"}  # fixed sin-cos buffer, not a weight
        try:
            getattr(model, part).load_state_dict(sd)
        except RuntimeError as e:
            raise RecoverError(f"{model_dir}/{name}.ts.pt does not fit config {cfg.name!r}: {e}") from e
    fp = fingerprint(model)
    if fp != man.get("fingerprint"):
        raise RecoverError(f"{model_dir}: rebuilt weights hash to {fp[:12]}, the manifest says "
                           f"{str(man.get('fingerprint'))[:12]}: the directory's files do not belong together")
    model.eval()
    cond: dict = {}
    cpath = model_dir / "conditioning.npz"
    if cpath.is_file():
        z = np.load(cpath)
        cond = {str(n): v.tolist() for n, v in zip(z["names"], z["vectors"])}
    text = {"encoder": man.get("text", {}).get("encoder", "none"), "dim": man.get("text", {}).get("dim", cfg.text_dim)}
    extras = {"norm": man["norm"], "text": text, "phase": man.get("source", {}).get("phase", "jepa"),
              "step": man.get("source", {}).get("step", 0), "labels": list(man.get("labels", [])),
              "conditioning": cond, "recovered_from": {"dir": str(model_dir), "fingerprint": fp}}
    if out is not None:
        save_checkpoint(out, model, **extras)
    return model, extras


@guarded("python -m export.recover")
def main(argv=None) -> int:
    ap = Parser(prog="python -m export.recover", description=__doc__)
    ap.add_argument("model_dir", help="model directory with manifest.json and the TorchScript fp32 files, "
                    "e.g. engine/assets/model")
    ap.add_argument("out", help="checkpoint to write (.pt)")
    a = ap.parse_args(argv)
    _, ex = recover(a.model_dir, a.out)
    print(f"[recover] {a.model_dir} -> {a.out} (fingerprint {ex['recovered_from']['fingerprint'][:12]}, "
          f"phase {ex['phase']}, {len(ex['labels'])} labels)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
