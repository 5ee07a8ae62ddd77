"""Command line of the training package.

    python -m training fit [--config FILE] [key=value ...]
    python -m training eval retrieval --data DIR --model CKPT [--conditioning label|category] [--json OUT] [--plot PNG]
    python -m training eval beats --data DIR --model CKPT [--json OUT]
    python -m training report --data DIR --default CKPT --contrastive CKPT --class CKPT [--out docs/report]
"""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "fit":
        ap = argparse.ArgumentParser(prog="python -m training fit")
        ap.add_argument("--config", help="TOML file of TrainConfig values (training/configs/*.toml)")
        ap.add_argument("overrides", nargs="*", help="key=value overrides, e.g. steps=100 out=runs/x")
        a = ap.parse_args(rest)
        from .fit import TrainConfig, fit

        fit(TrainConfig.load(a.config, a.overrides))
        return 0
    if cmd == "eval":
        ap = argparse.ArgumentParser(prog="python -m training eval")
        ap.add_argument("what", choices=["retrieval", "beats", "suite"],
                        help="suite: retrieval on the three validation sets under --data (in-domain, cross-corpus, "
                        "cross-soundfont)")
        ap.add_argument("--data", required=True, help="dataset in the layout of DESIGN.md (suite: the folder holding the sets)")
        ap.add_argument("--model", required=True, help="checkpoint (.pt), or 'heuristic' for the tempo + key baseline")
        ap.add_argument("--split", default="validation", help="split in DATA/splits.json ('all' for every track)")
        ap.add_argument("--conditioning", choices=["label", "category"], default="label")
        ap.add_argument("--max-tracks", type=int, default=None)
        ap.add_argument("--track-list", help="JSON list of the split's track ids to evaluate (exactly those)")
        ap.add_argument("--max-chunks", type=int, default=4)
        ap.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: with the other core busy, 2 threads ran 12x slower)")
        ap.add_argument("--json", help="write the results here")
        ap.add_argument("--plot", help="recall-at-k plot (PNG), retrieval only")
        a = ap.parse_args(rest)
        from . import evaluate as ev

        split = None if a.split == "all" else a.split
        tracks = None
        if a.track_list and a.what != "suite":
            tracks = ev.read_tracks(a.data, split, None, None, only=ev.read_track_list(a.track_list))
        if a.what == "suite":
            r = ev.evaluate_suite(a.model, a.data, None, a.conditioning, a.max_chunks, a.threads, a.max_tracks)
            ev.print_suite(r)
        elif a.what == "retrieval":
            r = ev.evaluate_retrieval(a.model, a.data, split, a.conditioning, a.max_chunks, a.max_tracks, a.threads,
                                      tracks=tracks)
            ev.print_retrieval(r)
            if a.plot:
                ev.plot_recall({f"{r['phase']}/{r['model_conditioning']} ({a.conditioning})": r}, a.plot)
        else:
            r = ev.evaluate_beats(a.model, a.data, split, a.max_tracks, a.threads, tracks=tracks)
            ev.print_beats(r)
        ev.write_json(r, a.json)
        return 0
    if cmd == "report":
        from .report import main as report_main

        return report_main(rest)
    print(f"unknown command {cmd!r}\n{__doc__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
