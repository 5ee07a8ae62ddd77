"""``python -m training.alignment``: how a pooled encoder embedding of a context mix relates to its
own target stem, against other songs' stems (the diagnosis of phase 1, docs/report/generalisation.md).

One fixed sample of ``(context = mix without the target, target)`` crops of a dataset (4 s, the
phase-1 crop), encoded by each model and pooled as retrieval pools (mean, layer norm, L2). For
the pairs context-target and full mix-target, plain and batch-centred, it reports the mean cosine
of a query to its own stem and to the others, the median normalised rank of the own stem among
all stems of the sample, and the mean rank among the stems of the same category only (the
category cannot help there). Chance is 0.5 for both ranks.

    python -m training.alignment --data /work/data/varied random campaign/weights.pt runs/c4/final.pt
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from engine.cli import Parser, guarded

RANDOM = "random"  # a model name: the causal tiny model at initialisation (seed 0)


def _ranks(S, cats: np.ndarray) -> dict:
    import torch

    n = len(S)
    own = S.diag()
    off = S[~torch.eye(n, dtype=torch.bool)]
    rank = (S > own[None, :]).sum(0).float() / (n - 1)  # per column: candidates above the own one
    same = torch.from_numpy(cats[:, None] == cats[None, :])
    nc = same.sum(0).float() - 1
    rank_c = ((S.masked_fill(~same, float("-inf")) > own[None, :]).sum(0).float() / nc.clamp(min=1))[nc > 0]
    return {"own_cos": round(float(own.mean()), 4), "others_cos": round(float(off.mean()), 4),
            "median_rank": round(float(rank.median()), 3), "mean_rank_in_category": round(float(rank_c.mean()), 3)}


def alignment(models: list[str], data: str | Path, n: int = 96, seed: int = 0, max_tracks: int = 200) -> dict:
    import torch
    import torch.nn.functional as F

    from engine.frontend import FrontEndConfig

    from .checkpoint import load_model
    from .config import get_config
    from .data.sampler import StemSampler
    from .fit import PhaseStep, estimate_norm
    from .model import StemJEPA, retrieval_normalise

    frames = 400
    seconds = FrontEndConfig().n_samples(frames) / FrontEndConfig().sample_rate
    sampler = StemSampler(data, split="train", seconds=seconds, label_mode="mixed", seed=seed, max_tracks=max_tracks)
    norm = estimate_norm(sampler, 32, seed)
    rng = np.random.default_rng(seed)
    items = [sampler.sample(rng) for _ in range(n)]
    cats = np.array([it["category"] for it in items])
    mix = torch.from_numpy(np.stack([it["mix"] for it in items]))
    tgt = torch.from_numpy(np.stack([it["target"] for it in items]))
    out = {"data": str(data), "n": n, "seed": seed, "models": {}}
    for name in models:
        if name == RANDOM:
            torch.manual_seed(0)
            model = StemJEPA(get_config("tiny", causal=True))
        else:
            model, _ = load_model(name)
        model.eval()
        st = PhaseStep(model, "contrastive", norm["mean"], norm["std"], 0.0, 5.0)
        st.set_frames(frames)
        with torch.no_grad():
            e = {k: retrieval_normalise(model.encoder(st.features(x)).float().mean(1))
                 for k, x in (("context", mix), ("target", tgt), ("full mix", mix + tgt))}
        r = {}
        for a in ("context", "full mix"):
            for centred in (False, True):
                A, B = e[a], e["target"]
                if centred:
                    A, B = A - A.mean(0), B - B.mean(0)
                S = F.normalize(A, dim=-1) @ F.normalize(B, dim=-1).t()
                r[f"{a} vs target{', centred' if centred else ''}"] = _ranks(S, cats)
        out["models"][name] = r
    return out


@guarded("training.alignment")
def main(argv=None) -> int:
    ap = Parser(prog="python -m training.alignment", description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", help=f"checkpoints (.pt), or {RANDOM!r} for the model at initialisation")
    ap.add_argument("--data", required=True, help="a rendered dataset (its train split is sampled)")
    ap.add_argument("--n", type=int, default=96, help="pairs in the sample")
    ap.add_argument("--json", help="write the result here too")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    r = alignment(a.models, a.data, a.n)
    for name, rows in r["models"].items():
        print(name)
        for k, v in rows.items():
            print(f"  {k:28s} own {v['own_cos']:+.3f}  others {v['others_cos']:+.3f}  median rank "
                  f"{v['median_rank']:.3f}  in-category rank {v['mean_rank_in_category']:.3f}")
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
