"""Command line: ``python -m training.data {render,render-default,convert,demo,stats} ...``."""
from __future__ import annotations

import argparse
import json
import sys

DEFAULT_SF2 = "/usr/share/sounds/sf2/FluidR3_GM.sf2"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.data")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("render", help="render MIDI folders into the dataset layout")
    r.add_argument("midi_dir", nargs="+", help="one or more MIDI folders (searched recursively)")
    r.add_argument("out_dir")
    r.add_argument("--soundfont", default=DEFAULT_SF2)
    r.add_argument("--jobs", type=int, default=1)
    r.add_argument("--excerpt", type=float, default=None, help="seconds per song (a busy region)")
    r.add_argument("--limit", type=_limits, default=None,
                   help="at most N songs per MIDI folder (seeded choice); N1,N2,... gives one per folder")
    r.add_argument("--val-fraction", type=float, default=0.08)
    r.add_argument("--seed", type=int, default=0)
    d = sub.add_parser("render-default", help="rebuild the default training set")
    d.add_argument("out_dir", nargs="?", default="/work/data/render")
    d.add_argument("--midi-root", default="/work/shared/data/midi")
    d.add_argument("--soundfont", default=DEFAULT_SF2)
    d.add_argument("--jobs", type=int, default=2)
    d.add_argument("--only-tracks", help="JSON list of track ids: render just these (e.g. the in-domain validation "
                   "list docs/report/validation_125.json)")
    v = sub.add_parser("render-varied", help="render a varied set (random key/tempo/instruments/soundfonts/room)",
                       description="Varied renders (training/data/vary.py). Sets: 'train' (touhou + nottingham, "
                       "training soundfonts, every song), 'xcorpus' (POP909, never trained on: cross-corpus "
                       "validation), 'xsf' (validation songs of the training corpora with the held-out soundfont "
                       "TimGM6mb and room sound: cross-soundfont validation).")
    v.add_argument("set", choices=sorted(VARIED_SETS), help="which set")
    v.add_argument("out_dir", help="output folder (resumable)")
    v.add_argument("--midi-root", default="../shared/data/midi", help="folder holding the corpora (default: %(default)s)")
    v.add_argument("--variants", type=_limits, default=None,
                   help="variant indices to render, e.g. 0 or 0,1 (default: the set's own)")
    v.add_argument("--limit", type=_limits, default=None,
                   help="at most N songs per corpus (seeded choice, a growing N keeps the smaller choice); "
                   "N1,N2 gives one per corpus (default: the set's)")
    v.add_argument("--jobs", type=int, default=2, help="worker processes (default: %(default)s)")
    v.add_argument("--seed", type=int, default=0, help="render seed (default: %(default)s)")
    c = sub.add_parser("convert", help="convert MUSDB18(-HQ) or MoisesDB folders to the layout")
    c.add_argument("kind", choices=("musdb", "moisesdb"))
    c.add_argument("src")
    c.add_argument("out")
    c.add_argument("--sr", type=int, default=16000)
    m = sub.add_parser("demo", help="build the demo stem library (POP909 + Groove)")
    m.add_argument("out_dir", nargs="?", default="engine/assets/demo/library")
    m.add_argument("--midi-root", default="/work/shared/data/midi")
    m.add_argument("--soundfont", default=DEFAULT_SF2)
    m.add_argument("--songs", type=int, default=6)
    m.add_argument("--seconds", type=float, default=30.0)
    m.add_argument("--demo-track", default="engine/assets/demo/demo_track.flac")
    s = sub.add_parser("stats", help="size of a dataset folder")
    s.add_argument("root")
    a = ap.parse_args(argv)

    if a.cmd == "render":
        from .render import render_corpus

        if isinstance(a.limit, list) and len(a.limit) != len(a.midi_dir):
            ap.error(f"--limit gives {len(a.limit)} values for {len(a.midi_dir)} folders")
        rep = render_corpus(a.midi_dir, a.out_dir, a.soundfont, a.jobs, a.excerpt, a.limit, a.val_fraction, a.seed)
        _summary(rep)
    elif a.cmd == "render-default":
        from .render import render_default

        only = None
        if a.only_tracks:
            from training.evaluate import read_track_list

            only = read_track_list(a.only_tracks)
        rep = render_default(a.out_dir, a.midi_root, a.soundfont, a.jobs, only_ids=only)
        _summary(rep)
    elif a.cmd == "render-varied":
        from pathlib import Path

        from .render import render_varied

        spec = VARIED_SETS[a.set]
        variants = a.variants if a.variants is not None else spec["variants"]
        variants = [variants] if isinstance(variants, int) else list(variants)
        limit = a.limit if a.limit is not None else spec.get("limit")
        rep = render_varied([Path(a.midi_root) / c for c in spec["corpora"]], a.out_dir, spec["recipe"](),
                            variants=variants, jobs=a.jobs, limit=limit, seed=a.seed,
                            only_split=spec.get("only_split"), force_split=spec.get("force_split"))
        print("render summary: " + ", ".join(f"{k}={rep[k]}" for k in (
            "found", "already_done", "rendered", "skipped", "elapsed_s", "train", "validation")))
        print("size: " + ", ".join(f"{k}={rep['size'][k]}" for k in ("tracks", "stems", "hours", "stem_hours")))
    elif a.cmd == "convert":
        from .convert import convert_moisesdb, convert_musdb

        fn = convert_musdb if a.kind == "musdb" else convert_moisesdb
        rep = fn(a.src, a.out, sr=a.sr)
        print(json.dumps(rep, indent=1))
    elif a.cmd == "demo":
        from .demo import build_demo

        rep = build_demo(a.out_dir, a.midi_root, a.soundfont, a.songs, a.seconds, a.demo_track)
        print(json.dumps(rep, indent=1))
    elif a.cmd == "stats":
        from .layout import dataset_stats

        print(json.dumps(dataset_stats(a.root), indent=1))
    return 0


def _train_recipe():
    from .vary import TRAIN_RECIPE
    return TRAIN_RECIPE


def _xsf_recipe():
    from .vary import HELD_OUT_RECIPE
    return HELD_OUT_RECIPE


# The varied sets: corpora, recipe, variants, and which songs (training/data/README.md)
VARIED_SETS = {
    "train": {"corpora": ("touhou", "nottingham"), "recipe": _train_recipe, "variants": (0,)},
    "xcorpus": {"corpora": ("pop909",), "recipe": _train_recipe, "variants": (0,), "limit": 130,
                "force_split": "validation"},
    "xsf": {"corpora": ("touhou", "nottingham"), "recipe": _xsf_recipe, "variants": (0,),
            "only_split": "validation", "force_split": "validation"},
}


def _limits(text: str):
    vals = [int(v) for v in text.split(",")]
    return vals[0] if len(vals) == 1 else vals


def _summary(rep: dict) -> None:
    keys = ("found", "already_done", "rendered", "skipped", "elapsed_s", "speed_x_realtime", "songs_per_s",
            "tracks_total", "train", "validation")
    print("render summary: " + ", ".join(f"{k}={rep[k]}" for k in keys))
    for s in rep["skipped_tracks"][:20]:
        print(f"  skipped {s['source']}: {s['reason']}")
    if len(rep["skipped_tracks"]) > 20:
        print(f"  ... and {len(rep['skipped_tracks']) - 20} more (see render_report.json)")


if __name__ == "__main__":
    sys.exit(main())
