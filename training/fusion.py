"""Choosing the fused ranking's key/tempo weight: a sweep over saved retrieval embeddings.

The engine ranks a library by ``(1 - a) * cos_model + a * cos_keytempo`` (``engine/keytempo.py``).
``a`` is a property of the model (written into its model directory as ``ranking.keytempo_weight``)
and is chosen here, on a set the validation suite does not contain: the validation split of the
varied training render (``dev``). The sweep reads the embeddings that
``python -m training eval ... --save-embeddings`` wrote for the model and for the heuristic, so
trying a weight costs a matrix product, not an evaluation::

    python -m training eval suite --data /work/data --model heuristic --save-embeddings runs/emb/heuristic
    python -m training eval suite --data /work/data --model M.pt --save-embeddings runs/emb/m
    python -m training eval retrieval --data /work/data/varied --model M.pt --save-embeddings runs/emb/m/dev.npz
    (the same for heuristic -> runs/emb/heuristic/dev.npz)
    python -m training.fusion --model runs/emb/m --keytempo runs/emb/heuristic --json runs/emb/m/fusion.json

It prints, per set and weight, R@1 / R@5 / median normalised rank and marks the weight with the
best ``dev`` R@5 (ties: the better median; :func:`choose`).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from engine.cli import CliError, Parser, guarded

from .evaluate import RetrievalEmbeddings, fuse_embeddings, score_retrieval

DEV = "dev"


def sweep(model_dir: str | Path, keytempo_dir: str | Path, weights: list[float]) -> dict:
    """``{set: {weight: overall metrics}}`` for every set both folders hold (``<set>.npz``)."""
    model_dir, keytempo_dir = Path(model_dir), Path(keytempo_dir)
    out: dict = {}
    for f in sorted(model_dir.glob("*.npz")):
        if f.name.endswith(".keytempo.npz") or not (keytempo_dir / f.name).is_file():
            continue
        m = RetrievalEmbeddings.load(f)
        h = RetrievalEmbeddings.load(keytempo_dir / f.name)
        out[f.stem] = {f"{w:.2f}": score_retrieval(fuse_embeddings(m, h, w))["overall"] | {
            "n_candidates": len(m.C)} for w in weights}
    if not out:
        raise CliError(f"{model_dir} and {keytempo_dir} hold no embeddings of the same set",
                       "write them with python -m training eval ... --save-embeddings")
    return out


def choose(result: dict, on: str = DEV) -> float:
    """The weight with the highest R@5 on ``on`` -- the server's default k is 5: is the stem that
    fits among the five it shows? -- ties: the lower median normalised rank, then the lower weight."""
    if on not in result:
        raise CliError(f"no {on!r} embeddings to choose the weight on", f"save them as {on}.npz in both folders")
    rows = result[on]
    return float(min(rows, key=lambda w: (-rows[w]["R@5"], rows[w]["nrank_median"], float(w))))


@guarded("python -m training.fusion")
def main(argv: list[str] | None = None) -> int:
    ap = Parser(prog="python -m training.fusion", description="Sweep the fused ranking's key/tempo weight over "
                "saved retrieval embeddings and choose it on the dev set.")
    ap.add_argument("--model", required=True, help="folder of the model's embeddings (<set>.npz)")
    ap.add_argument("--keytempo", required=True, help="folder of the heuristic's embeddings of the same sets")
    ap.add_argument("--weights", default="0:1:0.05", help="start:stop:step (inclusive), default %(default)s")
    ap.add_argument("--json", help="write the sweep and the choice here (default: not written)")
    a = ap.parse_args(argv)
    try:
        lo, hi, step = (float(v) for v in a.weights.split(":"))
    except ValueError:
        raise CliError(f"--weights {a.weights!r}: expected start:stop:step", "e.g. 0:1:0.05")
    if not (0 <= lo <= hi <= 1 and step > 0):
        raise CliError(f"--weights {a.weights!r}: out of range", "weights lie in [0, 1], step > 0")
    weights = [round(w, 6) for w in np.arange(lo, hi + step / 2, step)]
    r = sweep(a.model, a.keytempo, weights)
    best = choose(r) if DEV in r else None
    for name, rows in r.items():
        print(f"{name}  ({next(iter(rows.values()))['n_candidates']} candidates)")
        for w, m in rows.items():
            mark = " <- chosen on dev" if best is not None and float(w) == best else ""
            print(f"  a={w}  R@1 {m['R@1']:5.1f}  R@5 {m['R@5']:5.1f}  R@10 {m['R@10']:5.1f}  "
                  f"median {m['nrank_median']:6.2f} %  mean {m['nrank_mean']:6.2f} %{mark}")
    if a.json:
        Path(a.json).write_text(json.dumps({"sweep": r, "chosen": best, "model": a.model, "keytempo": a.keytempo},
                                           indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
