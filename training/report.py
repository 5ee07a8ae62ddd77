"""``python -m training report``: evaluate the default model and both baselines the same way and
write a markdown report with tables and plots (docs/report/).

    python -m training report --data DIR --default CKPT --contrastive CKPT --class CKPT [--out docs/report]
        [--track-list JSON] [--reuse class contrastive] [--note-file MD]

``--reuse KEY ...`` takes that model's retrieval results from the JSON files already in ``--out``
instead of evaluating again (a baseline whose checkpoint is not at hand, or to save the time). They
are used only if they were made on the same data: the same conditioning, ``--max-chunks``, number of
tracks and candidates, the same stems per category as the default's fresh evaluation, and the same
track ids where the file records them; otherwise the report stops with the reason.
"""
from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

from . import evaluate as ev

MODELS = (("default", "Stem-JEPA + FiLM text (default)"),
          ("class", "Stem-JEPA, 4 learned classes (baseline)"),
          ("contrastive", "contrastive only (baseline)"))


def _cmd(*parts) -> str:
    return " ".join(shlex.quote(str(p)) for p in parts)


def main(argv=None) -> int:
    from engine.cli import Parser

    ap = Parser(prog="python -m training report",
                description="Evaluate the default model and the two baselines on one split and write the report "
                "(markdown, JSON, plots) into --out.")
    ap.add_argument("--data", required=True, help="dataset folder in the layout of the README")
    ap.add_argument("--default", required=True, help="default model checkpoint (with beat head)")
    ap.add_argument("--contrastive", required=True, help="contrastive-only baseline checkpoint")
    ap.add_argument("--class", dest="klass", required=True, help="4-class Stem-JEPA baseline checkpoint")
    ap.add_argument("--split", default="validation", help="split in DATA/splits.json")
    ap.add_argument("--out", default="docs/report", help="report folder")
    ap.add_argument("--max-chunks", type=int, default=4, help="8-s chunks per stem")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--train-times", help="JSON {run: seconds} to include (default: none)")
    ap.add_argument("--beat-tracks", type=int, default=40,
                    help="validation tracks for the beat evaluation (the causal one runs the encoder every hop)")
    ap.add_argument("--note", default="", help="a paragraph added under the title, e.g. how the data was made "
                    "(default: none)")
    ap.add_argument("--note-file", help="markdown file added under the title, after --note (default: none)")
    ap.add_argument("--track-list", help="JSON list of the split's track ids to evaluate, exactly those (default: all)")
    ap.add_argument("--reuse", nargs="*", default=[], choices=[k for k, _ in MODELS if k != "default"],
                    help="models whose retrieval JSON files in --out are reused, checked against the data "
                    "(default: none)")
    a = ap.parse_args(argv)
    if a.note_file:
        a.note = "\n\n".join(x for x in (a.note, Path(a.note_file).read_text().strip()) if x)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpts = {"default": a.default, "class": a.klass, "contrastive": a.contrastive}
    only = ev.read_track_list(a.track_list) if a.track_list else None
    tracks = ev.read_tracks(a.data, a.split, only=only)
    subset = ("--track-list", a.track_list) if a.track_list else ()
    results: dict = {}
    for key, _ in MODELS:  # the default first: reused results are checked against it
        for cond in ("label", "category"):
            path = out / f"retrieval_{key}_{cond}.json"
            if key in a.reuse:
                if not path.is_file():
                    raise SystemExit(f"--reuse {key}: {path} does not exist")
                r = json.loads(path.read_text())
                check_reusable(r, results[("default", cond)], cond, a.max_chunks, path)
                print(f"[report] reusing {path}")
            else:
                t0 = time.time()
                r = ev.evaluate_retrieval(ckpts[key], a.data, a.split, cond, a.max_chunks, threads=a.threads,
                                          tracks=tracks)
                r["seconds"] = time.time() - t0
                r["command"] = _cmd("python", "-m", "training", "eval", "retrieval", "--data", a.data, "--model",
                                    ckpts[key], "--split", a.split, *subset, "--conditioning", cond,
                                    "--max-chunks", a.max_chunks, "--json", path)
                ev.write_json(r, path)
            ev.print_retrieval(r)
            results[(key, cond)] = r
    beat_tracks = ev.read_tracks(a.data, a.split, a.beat_tracks) if only else tracks[: a.beat_tracks]
    beats = ev.evaluate_beats(a.default, a.data, a.split, threads=a.threads, tracks=beat_tracks)
    beats["command"] = _cmd("python", "-m", "training", "eval", "beats", "--data", a.data, "--model", a.default,
                            "--split", a.split, "--max-tracks", a.beat_tracks, "--json", out / "beats_default.json")
    ev.print_beats(beats)
    ev.write_json(beats, out / "beats_default.json")
    for cond in ("label", "category"):
        ev.plot_recall({name: results[(key, cond)] for key, name in MODELS}, out / f"recall_{cond}.png")
    train_times = json.loads(Path(a.train_times).read_text()) if a.train_times else {}
    (out / "README.md").write_text(render_markdown(results, beats, train_times, a))
    print(f"[report] wrote {out / 'README.md'}")
    return 0


def check_reusable(r: dict, fresh: dict, cond: str, max_chunks: int, path) -> None:
    """Refuse (SystemExit) earlier results ``r`` that were not made on the data of ``fresh``."""
    def per_cat_n(x):
        return {c: m["n"] for c, m in x.get("per_category", {}).items()}

    chunks = r.get("max_chunks")
    words = str(r.get("command", "")).split()
    if chunks is None and "--max-chunks" in words:
        chunks = int(words[words.index("--max-chunks") + 1])
    problems = []
    if r.get("conditioning") != cond:
        problems.append(f"conditioning {r.get('conditioning')!r}, not {cond!r}")
    if chunks != max_chunks:
        problems.append(f"--max-chunks {chunks}, not {max_chunks}")
    for k in ("n_tracks", "n_candidates"):
        if r.get(k) != fresh[k]:
            problems.append(f"{k} {r.get(k)}, the default's evaluation has {fresh[k]}")
    if per_cat_n(r) != per_cat_n(fresh):
        problems.append("other stems per category than the default's evaluation")
    if "track_ids" in r and sorted(r["track_ids"]) != sorted(fresh["track_ids"]):
        problems.append("other track ids")
    if problems:
        raise SystemExit(f"--reuse: {path} was made on other data: " + "; ".join(problems))


def render_markdown(results: dict, beats: dict, train_times: dict, a) -> str:
    any_r = next(iter(results.values()))
    lines = [
        "# Evaluation report",
        "",
        *([a.note, ""] if a.note else []),
        f"Validation split (by song) of `{a.data}`"
        + (f", the tracks listed in `{a.track_list}`" if a.track_list else "")
        + f": {any_r['n_tracks']} tracks, {any_r['n_candidates']} candidate "
        "stems. Protocol: per track, embeddings averaged over up to "
        f"{a.max_chunks} 8-s chunks; query = predictor(encoder(mix without the stem), name); candidates = "
        "target-encoder embeddings of every stem of every track; layer norm + L2, Euclidean distance. "
        "Normalised rank = (rank - 1) / candidates. All figures in %.",
        "",
        "Conditioning `label` uses the fine label (e.g. \"fretless bass\"), `category` its family (\"bass\"). "
        "The 4-class baseline maps both to its class (bass, drums, vocals, other); the contrastive-only "
        "model has no conditioning (the context embedding itself is the query).",
        "",
    ]
    for cond in ("label", "category"):
        r0 = results[("default", cond)]
        lines += [f"## Retrieval, conditioning on `{cond}`", "",
                  "| model | R@1 | R@5 | R@10 | norm. rank mean | norm. rank median |",
                  "|---|---:|---:|---:|---:|---:|"]
        for key, name in MODELS:
            m = results[(key, cond)]["overall"]
            lines.append(f"| {name} | {m['R@1']:.1f} | {m['R@5']:.1f} | {m['R@10']:.1f} | "
                         f"{m['nrank_mean']:.2f} | {m['nrank_median']:.2f} |")
        rnd = r0["random"]
        lines.append(f"| random ranking | {rnd['R@1']:.1f} | {rnd['R@5']:.1f} | {rnd['R@10']:.1f} | "
                     f"{rnd['nrank_mean']:.2f} | {rnd['nrank_median']:.2f} |")
        lines += ["", f"![recall at k, {cond}](recall_{cond}.png)", "",
                  "Per category (default model):", "",
                  "| category | n | R@1 | R@5 | R@10 | norm. rank median |", "|---|---:|---:|---:|---:|---:|"]
        for cat, m in r0["per_category"].items():
            lines.append(f"| {cat} | {m['n']} | {m['R@1']:.1f} | {m['R@5']:.1f} | {m['R@10']:.1f} | {m['nrank_median']:.2f} |")
        lines += ["", "Commands:", ""]
        for key, _ in MODELS:
            lines.append(f"    {results[(key, cond)]['command']}")
        lines.append("")
    lines += ["## Beat tracking (default model's beat head)", "",
              f"{beats['n_tracks']} validation tracks with beat annotations (from the MIDI tempo maps); "
              "mir_eval, first 5 s trimmed.", "",
              "| decoder | F-measure | CMLt | AMLt |", "|---|---:|---:|---:|"]
    for mode, name in (("offline", "offline (Viterbi over tempo x phase)"), ("causal", "causal (live tracker)")):
        m = beats[mode]
        lines.append(f"| {name} | {m['F']:.3f} | {m['CMLt']:.3f} | {m['AMLt']:.3f} |")
    lines += ["", "Command:", "", f"    {beats['command']}", ""]
    if train_times:
        lines += ["## Training time (this 2-core CPU)", "", "| run | minutes |", "|---|---:|"]
        for k, v in train_times.items():
            lines.append(f"| {k} | {float(v) / 60:.1f} |")
        lines.append("")
    lines += ["Rebuild everything (render, train, evaluate, export): `bash scripts/rebuild_default_model.sh`.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
