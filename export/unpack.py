"""``python -m export.unpack MODEL_DIR OUT.pt``: a training checkpoint rebuilt from a full model
directory (one with ``manifest.json`` and the fp32 TorchScript graphs).

Why: an older default model may survive only as an exported directory (in git history, or on a
rig), while evaluation and fine-tuning read checkpoints (``training.checkpoint``). The fp32
TorchScript graphs hold every inference weight under the model's own module names, the manifest
holds the config, front end, normalisation and text metadata, and ``conditioning.npz`` the labels
the model was trained with. The rebuilt weights are checked against the manifest's fingerprint
(the same sha256 over the inference weights that export writes), so what comes out is exactly the
model that was exported -- or an error.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from engine.frontend import FrontEndConfig
from engine.manifest import ModelDirError

from .core import fingerprint

# graph name -> (attribute of StemJEPA, key prefix inside the exported wrapper)
_PARTS = {"encoder": ("encoder", "encoder."), "target_encoder": ("target_encoder", "encoder."),
          "predictor": ("predictor", "p."), "beat_head": ("beat_head", "head.")}


def unpack(model_dir: str | Path, out: str | Path) -> dict:
    """Write ``out`` (a checkpoint ``training.checkpoint.load_model`` reads); returns its state."""
    import torch

    from training.checkpoint import save_checkpoint
    from training.config import ModelConfig
    from training.model import StemJEPA

    root = Path(model_dir)
    man_path = root / "manifest.json"
    if not man_path.is_file():
        raise ModelDirError(f"{root}: no manifest.json (a packed directory is a checkpoint already: its weights.pt)")
    man = json.loads(man_path.read_text())
    graphs = (man.get("torch") or {}).get("graphs") or {}
    model = StemJEPA(ModelConfig.from_dict(man["config"]))
    for name, (attr, prefix) in _PARTS.items():
        entry = (graphs.get(name) or {}).get("fp32")
        if entry is None:
            raise ModelDirError(f"{root}: the manifest lists no fp32 TorchScript graph for {name!r}")
        sd = torch.jit.load(str(root / entry["path"]), map_location="cpu").state_dict()
        part = getattr(model, attr)
        persistent = part.state_dict().keys()  # fixed buffers (position tables) are rebuilt, not loaded
        own = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix) and k[len(prefix):] in persistent}
        missing, unexpected = part.load_state_dict(own, strict=False)
        unexpected += [k for k in sd if not k.startswith(prefix)]
        if missing or unexpected:
            raise ModelDirError(f"{root}: {entry['path']} does not hold the {attr} of this config "
                                f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    fp = fingerprint(model)
    if fp != man.get("fingerprint"):
        raise ModelDirError(f"{root}: rebuilt weights have fingerprint {fp[:12]}, the manifest says "
                            f"{str(man.get('fingerprint'))[:12]}")
    labels = list(man.get("labels") or [])
    extra: dict = {"labels": labels, "phase": (man.get("source") or {}).get("phase", "jepa"),
                   "step": (man.get("source") or {}).get("step"), "unpacked_from": str(root)}
    cond = root / "conditioning.npz"
    if cond.is_file():
        z = np.load(cond)
        extra["conditioning"] = {str(n): z["vectors"][i].astype(np.float32) for i, n in enumerate(z["names"])}
    if man.get("ranking"):
        extra["ranking"] = {"keytempo_weight": float(man["ranking"]["keytempo_weight"])}
    save_checkpoint(out, model, norm=man["norm"], text=man.get("text") or {},
                    frontend=FrontEndConfig.from_dict(man.get("frontend") or {}), **extra)
    return {"fingerprint": fp, "labels": len(labels), "out": str(out)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m export.unpack", description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir", help="a full model directory (manifest.json + TorchScript graphs)")
    ap.add_argument("out", help="checkpoint file to write (.pt)")
    a = ap.parse_args(argv)
    try:
        r = unpack(a.model_dir, a.out)
    except ModelDirError as e:
        print(f"export.unpack: {e}", file=sys.stderr)
        return 2
    print(f"unpack: wrote {r['out']} (fingerprint {r['fingerprint'][:12]}, {r['labels']} labels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
