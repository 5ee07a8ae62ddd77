"""The long training campaign: state that survives sessions and machines, and its learning curve.

A campaign is a chain of stages, one or more per session, each resuming from the weights the
last one committed. What git holds (``campaign/``):

* ``weights.pt``   the latest weights, stripped, float tensors in bf16 (about 17 MB for tiny);
                   one file, replaced each session (``save-weights``);
* ``curve.jsonl``  one line per evaluation: training hours so far, steps, checkpoint, and the
                   validation suite's figures per set (``log``);
* ``curve.png``    cross-corpus and cross-soundfont median normalised rank and R@5 against
                   training hours (``plot``);
* ``README.md``    where the campaign stands and how to continue it.

A stage starts from ``init=campaign/weights.pt`` (training.fit reads bf16 weights as fp32), on the
varied render rebuilt from its seed (``python -m training.data render-varied train ...``).

CLI::

    python -m training.campaign save-weights CKPT [campaign/weights.pt]
    python -m training.campaign log SUITE_JSON --hours H --steps N [--note TEXT]
    python -m training.campaign plot [campaign/curve.png]
    python -m training.campaign table NAME=SUITE_JSON ... [--per-category]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "campaign"
WEIGHTS = ROOT / "weights.pt"
CURVE = ROOT / "curve.jsonl"
STATE = ROOT / "state.json"  # {"stage": n, "hours": training hours so far, "steps": steps so far, "causal": bool}
KEEP = ("format", "version", "config", "frontend", "norm", "text", "labels", "phase", "step", "conditioning")


def save_weights(checkpoint: str | Path, out: str | Path = WEIGHTS) -> dict:
    """The checkpoint's weights in bf16 (no optimizer, no queue), loadable by ``load_model``."""
    import torch

    from .checkpoint import read_checkpoint

    st = read_checkpoint(checkpoint)
    out = Path(out)
    doc = {k: st[k] for k in KEEP if k in st}
    doc["model"] = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in st["model"].items()}
    doc["weights_dtype"] = "bfloat16"
    doc["campaign_source"] = {"checkpoint": str(checkpoint), "step": st.get("step")}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    torch.save(doc, tmp)
    tmp.replace(out)
    return {"path": str(out), "bytes": out.stat().st_size, "step": st.get("step")}


def log_eval(suite: dict, hours: float, steps: int, note: str = "", path: str | Path = CURVE) -> dict:
    rec = {"hours": round(float(hours), 3), "steps": int(steps), "checkpoint": suite.get("checkpoint"), "note": note,
           "sets": {name: {**r["overall"], "n_tracks": r["n_tracks"], "n_candidates": r["n_candidates"]}
                    for name, r in suite["sets"].items()}}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")
    return rec


def read_curve(path: str | Path = CURVE) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def plot_curve(out: str | Path = ROOT / "curve.png", path: str | Path = CURVE,
               sets=("cross-corpus", "cross-soundfont", "in-domain")) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = read_curve(path)
    if not recs:
        raise SystemExit(f"{path}: no evaluations logged yet")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name in sets:
        pts = [(r["hours"], r["sets"][name]) for r in recs if name in r["sets"]]
        if not pts:
            continue
        h = [p[0] for p in pts]
        axes[0].plot(h, [p[1]["nrank_median"] for p in pts], "o-", label=name)
        axes[1].plot(h, [p[1]["R@5"] for p in pts], "o-", label=name)
    axes[0].axhline(2.0, color="k", ls="--", lw=0.8, label="target 2 %")
    axes[1].axhline(40.0, color="k", ls="--", lw=0.8, label="target 40 %")
    axes[0].set_ylabel("median normalised rank (%)")
    axes[1].set_ylabel("R@5 (%)")
    for ax in axes:
        ax.set_xlabel("training hours (campaign)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)


def read_state(path: str | Path = STATE) -> dict:
    p = Path(path)
    return json.loads(p.read_text()) if p.is_file() else {"stage": 0, "hours": 0.0, "steps": 0}


def finish_stage(run_dir: str | Path, data_root: str | Path, note: str = "", threads: int = 1) -> dict:
    """After a stage: evaluate its last checkpoint on the suite, add its hours and steps to the
    campaign, log the curve point, replace ``campaign/weights.pt``, update state and plot."""
    from .evaluate import evaluate_suite

    run_dir = Path(run_dir)
    ckpt = run_dir / "last.pt" if (run_dir / "last.pt").is_file() else run_dir / "final.pt"
    log = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines() if x.strip()]
    st = read_state()
    hours = float((run_dir / "elapsed_s").read_text()) / 3600 if (run_dir / "elapsed_s").is_file() else None
    if hours is None:  # from the log's own pace is not recorded: count steps at the stage's rate
        raise SystemExit(f"{run_dir}: no elapsed_s (written by training.fit); cannot count training hours")
    steps = len(log)
    # the embeddings stay in the run folder, for the fused ranking's sweep (training/fusion.py)
    suite = evaluate_suite(ckpt, data_root, threads=threads, save_dir=run_dir / "emb")
    st = {**st, "stage": st["stage"] + 1, "hours": round(st["hours"] + hours, 3), "steps": st["steps"] + steps}
    st["source"] = f"{ckpt} (stage {st['stage']}: {steps} steps from stage {st['stage'] - 1}'s weights)"
    st["next"] = f"scripts/campaign.sh: stage {st['stage'] + 1} from campaign/weights.pt"
    log_eval(suite, st["hours"], st["steps"], note or f"stage {st['stage']} ({run_dir.name})")
    save_weights(ckpt)
    STATE.write_text(json.dumps(st, indent=1))
    plot_curve()
    return st


def suite_table(named: dict[str, dict], sets=("in-domain", "cross-corpus", "cross-soundfont"),
                per_category: bool = False) -> str:
    """Markdown table of validation-suite results ``{system name: suite dict}``."""
    lines = ["| set | system | tracks, candidates | R@1 | R@5 | R@10 | median norm. rank | mean norm. rank |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for st in sets:
        for name, suite in named.items():
            r = suite["sets"].get(st)
            if r is None:
                continue
            m = r["overall"]
            lines.append(f"| {st} | {name} | {r['n_tracks']}, {r['n_candidates']} | {m['R@1']:.1f} | {m['R@5']:.1f} | "
                         f"{m['R@10']:.1f} | {m['nrank_median']:.2f} % | {m['nrank_mean']:.2f} % |")
            if per_category:
                for cat, c in r["per_category"].items():
                    lines.append(f"| | &nbsp;&nbsp;{cat} ({c['n']}) | | {c['R@1']:.1f} | {c['R@5']:.1f} | {c['R@10']:.1f} | "
                                 f"{c['nrank_median']:.2f} % | {c['nrank_mean']:.2f} % |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.campaign", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("save-weights", help="commit-sized bf16 weights of a checkpoint")
    s.add_argument("checkpoint")
    s.add_argument("out", nargs="?", default=str(WEIGHTS))
    lg = sub.add_parser("log", help="append a validation-suite result to the learning curve")
    lg.add_argument("suite_json", help="output of `python -m training eval suite --json`")
    lg.add_argument("--hours", type=float, required=True, help="campaign training hours so far")
    lg.add_argument("--steps", type=int, required=True, help="campaign training steps so far")
    lg.add_argument("--note", default="")
    f = sub.add_parser("finish", help="after a stage: evaluate, log the curve, replace campaign/weights.pt")
    f.add_argument("run_dir")
    f.add_argument("--data", required=True, help="folder holding the validation sets")
    f.add_argument("--note", default="")
    t = sub.add_parser("table", help="markdown table of validation-suite results")
    t.add_argument("results", nargs="+", help="NAME=SUITE_JSON ...")
    t.add_argument("--per-category", action="store_true")
    p = sub.add_parser("plot", help="the learning-curve plot")
    p.add_argument("out", nargs="?", default=str(ROOT / "curve.png"))
    a = ap.parse_args(argv)
    if a.cmd == "save-weights":
        print(json.dumps(save_weights(a.checkpoint, a.out)))
    elif a.cmd == "log":
        try:
            suite = json.loads(Path(a.suite_json).read_text())
        except (OSError, ValueError) as e:
            print(f"training.campaign: {a.suite_json}: {e}", file=sys.stderr)
            return 2
        print(json.dumps(log_eval(suite, a.hours, a.steps, a.note)))
    elif a.cmd == "finish":
        print(json.dumps(finish_stage(a.run_dir, a.data, a.note)))
    elif a.cmd == "table":
        named = {}
        for item in a.results:
            name, _, path = item.partition("=")
            named[name] = json.loads(Path(path).read_text())
        print(suite_table(named, per_category=a.per_category))
    else:
        print(plot_curve(a.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
