"""Checkpoints that rebuild their model alone: config + front end + normalisation + weights.

Layout of the file (``torch.save`` of a dict)::

    format: "stemjepa-checkpoint", version: 1
    config: ModelConfig.to_dict()      frontend: FrontEndConfig.to_dict()
    norm: {"mean": float, "std": float}   # log-mel statistics of the training set
    text: {"encoder": str, "dim": int}    # which text model produced the conditioning vectors
    model: state_dict                    # optional: optimizer, step, phase, train_args, rng
"""
from __future__ import annotations

from pathlib import Path

import torch

from engine.frontend import FrontEndConfig

from .config import ModelConfig
from .model import StemJEPA

FORMAT = "stemjepa-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    pass


def save_checkpoint(path: str | Path, model: StemJEPA, *, norm: dict, text: dict,
                    frontend: FrontEndConfig | None = None, **extra) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format": FORMAT,
        "version": VERSION,
        "config": model.cfg.to_dict(),
        "frontend": (frontend or FrontEndConfig()).to_dict(),
        "norm": {"mean": float(norm["mean"]), "std": float(norm["std"])},
        "text": dict(text),
        "model": model.state_dict(),
        **extra,
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # atomic: a crash never leaves half a checkpoint


def read_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({e})") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} file")
    if state.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {state.get('version')}, this code reads {VERSION}")
    return state


def load_model(path: str | Path, expect: ModelConfig | None = None) -> tuple[StemJEPA, dict]:
    """Rebuild the model from the file alone. Returns ``(model in eval mode, checkpoint dict)``.

    ``expect``: refuse a checkpoint whose config differs (clear error naming the fields).
    """
    state = read_checkpoint(path)
    cfg = ModelConfig.from_dict(state["config"])
    if expect is not None and expect != cfg:
        diff = {k: (getattr(expect, k), getattr(cfg, k)) for k in cfg.to_dict() if getattr(expect, k) != getattr(cfg, k)}
        raise CheckpointError(f"{path}: checkpoint config differs from the expected one (expected, found): {diff}")
    model = StemJEPA(cfg)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not match config {cfg.name!r}: {e}") from e
    model.eval()
    return model, state
