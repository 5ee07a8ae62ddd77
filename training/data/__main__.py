"""``python -m training.data {render,render-default,render-varied,convert,demo,stats}``: make and inspect datasets.

Every command writes the dataset layout of the README (ROOT/<track_id>/<stem_id>.wav + track.json,
ROOT/splits.json). Rendering is resumable: finished tracks are kept, a killed run goes on.
"""
from __future__ import annotations

import argparse
import json
import sys

from engine.cli import CliError, Parser, guarded

SF2_NAME = "FluidR3_GM.sf2"  # Debian's fluid-soundfont-gm (scripts/setup_system.sh installs it)
SF2_HELP = (f"SoundFont (.sf2) to render with (default: {SF2_NAME} from the fluid-soundfont-gm package, looked up "
            "in $STEMJEPA_SF2_DIR or the system soundfont folder)")


def default_soundfont() -> str:
    from .vary import SF2_DIR

    return str(SF2_DIR / SF2_NAME)


@guarded("python -m training.data")
def main(argv=None) -> int:
    from .render import CORPORA, MANIFEST, PLAIN

    ap = Parser(prog="python -m training.data", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    r = sub.add_parser("render", help="render MIDI folders into the dataset layout",
                       description="Render every MIDI file under each folder (recursively): one stem per GM "
                       "family, drums on channel 10, beats from the tempo map. A folder is one of the known corpora "
                       f"({', '.join(CORPORA)}) only when declared, by --corpus or by a {MANIFEST} in the folder "
                       '({"corpus": "pop909"}); otherwise its files are plain MIDI, whatever their names. Every '
                       "file left out is listed with the reason; the exit status is 2 when nothing was rendered.")
    r.add_argument("midi_dir", nargs="+", help="one or more MIDI folders (searched recursively)")
    r.add_argument("out_dir", help="output dataset folder (resumable)")
    r.add_argument("--corpus", type=_names, default=None, metavar="NAME[,NAME...]",
                   help=f"declare the corpus of the folders: one name for all or one per folder, from "
                   f"{', '.join(CORPORA + (PLAIN,))} (default: each folder's {MANIFEST}, else {PLAIN})")
    r.add_argument("--soundfont", default=None, help=SF2_HELP)
    r.add_argument("--jobs", type=int, default=1, help="worker processes")
    r.add_argument("--excerpt", type=float, default=None,
                   help="seconds per song, a busy region (default: the whole song)")
    r.add_argument("--limit", type=_limits, default=None,
                   help="at most N songs per MIDI folder (seeded choice); N1,N2,... gives one per folder "
                   "(default: every song)")
    r.add_argument("--val-fraction", type=float, default=0.08, help="share of song groups in the validation split")
    r.add_argument("--seed", type=int, default=0, help="seed of the song choice and the split")
    d = sub.add_parser("render-default", help="rebuild the default training set",
                       description="The default training set: 1000 Touhou, 500 POP909 and 400 Nottingham songs "
                       "(MIDI_ROOT/touhou, MIDI_ROOT/pop909, MIDI_ROOT/nottingham, each declared as its corpus), "
                       "30-s excerpts, FluidR3_GM, 8 % validation by song (training/data/README.md).")
    d.add_argument("out_dir", help="output dataset folder (resumable)")
    d.add_argument("--midi-root", required=True, help="folder holding touhou/, pop909/ and nottingham/")
    d.add_argument("--soundfont", default=None, help=SF2_HELP)
    d.add_argument("--jobs", type=int, default=2, help="worker processes")
    d.add_argument("--only-tracks", help="JSON list of track ids: render just these (e.g. the in-domain validation "
                   "list docs/report/validation_125.json) (default: all)")
    v = sub.add_parser("render-varied", help="render a varied set (random key/tempo/instruments/soundfonts/room)",
                       description="Varied renders (training/data/vary.py). Sets: 'train' (touhou + nottingham, "
                       "training soundfonts, every song), 'train-slow' (the same songs as variant 1, slowed to 45-100 BPM: "
                       "ballad tempi for the beat network), 'xcorpus' (POP909, never trained on: cross-corpus "
                       "validation), 'xsf' (validation songs of the training corpora with the held-out soundfont "
                       "TimGM6mb and room sound: cross-soundfont validation); 'abl-*' (the 125 in-domain "
                       "validation songs, 60 s each, plain as the default render, or with one factor varied: "
                       "soundfont, instruments, keytempo, room). MIDI_ROOT/<corpus> folders are "
                       "declared as their corpus.")
    v.add_argument("set", choices=sorted(VARIED_SETS), help="which set")
    v.add_argument("out_dir", help="output folder (resumable)")
    v.add_argument("--midi-root", required=True, help="folder holding the corpora (touhou/, nottingham/, pop909/)")
    v.add_argument("--variants", type=_limits, default=None,
                   help="variant indices to render, e.g. 0 or 0,1 (default: the set's own)")
    v.add_argument("--limit", type=_limits, default=None,
                   help="at most N songs per corpus (seeded choice, a growing N keeps the smaller choice); "
                   "N1,N2 gives one per corpus (default: the set's)")
    v.add_argument("--jobs", type=int, default=2, help="worker processes (default: %(default)s)")
    v.add_argument("--seed", type=int, default=0, help="render seed (default: %(default)s)")
    c = sub.add_parser("convert", help="convert MUSDB18(-HQ) or MoisesDB folders to the layout",
                       description="Convert a stem dataset you have to the layout (stems resampled to --sr).")
    c.add_argument("kind", choices=("musdb", "moisesdb"), help="the source dataset's format")
    c.add_argument("src", help="the source dataset folder")
    c.add_argument("out", help="output dataset folder")
    c.add_argument("--sr", type=int, default=16000, help="sample rate of the written stems (Hz)")
    m = sub.add_parser("demo", help="build the demo stem library (POP909 + Groove)",
                       description="Render the shipped demo material: a few POP909 songs with Groove drums as "
                       "the demo stem library, plus the demo track the server replays without a sound card.")
    m.add_argument("out_dir", nargs="?", default="engine/assets/demo/library", help="library folder to write")
    m.add_argument("--midi-root", required=True, help="folder holding pop909/ and groove/")
    m.add_argument("--soundfont", default=None, help=SF2_HELP)
    m.add_argument("--songs", type=int, default=6, help="songs in the library")
    m.add_argument("--seconds", type=float, default=30.0, help="seconds per song")
    m.add_argument("--demo-track", default="engine/assets/demo/demo_track.flac", help="demo track to write")
    rp = sub.add_parser("rephase-downbeats", help="move a rendered set's downbeats onto the drummer's bars",
                        description="For datasets rendered before the downbeats followed the crash cymbals "
                        "(training.data.midi.drum_bar_shift): each track without a downbeat_shift gets the "
                        "shift its source MIDI gives; its old downbeats stay as downbeats_grid. Idempotent.")
    rp.add_argument("roots", nargs="+", help="dataset folders (ROOT/<track_id>/track.json ...)")
    rp.add_argument("--midi-root", required=True, help="folder holding the corpora the tracks were rendered from")
    s = sub.add_parser("stats", help="size of a dataset folder",
                       description="Tracks, stems, hours and per-category counts of a dataset folder, as JSON.")
    s.add_argument("root", help="dataset folder (ROOT/<track_id>/track.json ...)")
    a = ap.parse_args(argv)
    for name in ("jobs", "songs", "sr"):
        if getattr(a, name, 1) is not None and getattr(a, name, 1) < 1:
            ap.error(f"--{name} must be >= 1")
    if getattr(a, "soundfont", "") is None:
        a.soundfont = default_soundfont()

    if a.cmd == "render":
        from .render import render_corpus

        if isinstance(a.limit, list) and len(a.limit) != len(a.midi_dir):
            ap.error(f"--limit gives {len(a.limit)} values for {len(a.midi_dir)} folders")
        corpora = a.corpus
        if corpora is not None and len(corpora) not in (1, len(a.midi_dir)):
            ap.error(f"--corpus gives {len(corpora)} names for {len(a.midi_dir)} folders (give one, or one per folder)")
        if corpora is not None and len(corpora) == 1:
            corpora = corpora[0]
        rep = render_corpus(a.midi_dir, a.out_dir, a.soundfont, a.jobs, a.excerpt, a.limit, a.val_fraction, a.seed,
                            corpora=corpora)
        return _summary(rep)
    elif a.cmd == "render-default":
        from .render import render_default

        only = None
        if a.only_tracks:
            from training.evaluate import read_track_list

            only = read_track_list(a.only_tracks)
        rep = render_default(a.out_dir, a.midi_root, a.soundfont, a.jobs, only_ids=only)
        return _summary(rep)
    elif a.cmd == "render-varied":
        from pathlib import Path

        from .render import render_varied

        spec = VARIED_SETS[a.set]
        variants = a.variants if a.variants is not None else spec["variants"]
        variants = [variants] if isinstance(variants, int) else list(variants)
        limit = a.limit if a.limit is not None else spec.get("limit")
        only = None
        if spec.get("only_tracks"):
            from training.evaluate import read_track_list

            only = read_track_list(Path(__file__).resolve().parents[2] / spec["only_tracks"])
        rep = render_varied([Path(a.midi_root) / c for c in spec["corpora"]], a.out_dir, spec["recipe"](),
                            variants=variants, jobs=a.jobs, limit=limit, seed=a.seed,
                            only_split=spec.get("only_split"), force_split=spec.get("force_split"),
                            corpora=list(spec["corpora"]), only_tracks=only)
        print("size: " + ", ".join(f"{k}={rep['size'][k]}" for k in ("tracks", "stems", "hours", "stem_hours")))
        return _summary(rep, ("found", "already_done", "rendered", "skipped", "elapsed_s", "train", "validation"))
    elif a.cmd == "convert":
        from .convert import convert_moisesdb, convert_musdb

        fn = convert_musdb if a.kind == "musdb" else convert_moisesdb
        rep = fn(a.src, a.out, sr=a.sr)
        print(json.dumps(rep, indent=1))
    elif a.cmd == "demo":
        from .demo import build_demo

        rep = build_demo(a.out_dir, a.midi_root, a.soundfont, a.songs, a.seconds, a.demo_track)
        print(json.dumps(rep, indent=1))
    elif a.cmd == "rephase-downbeats":
        from pathlib import Path

        from .render import rephase_downbeats

        for root in a.roots:
            if not Path(root).is_dir():
                raise CliError(f"{root}: no such folder", "give a dataset folder (ROOT/<track_id>/track.json ...)")
            print(json.dumps({"root": root, **rephase_downbeats(root, a.midi_root)}))
    elif a.cmd == "stats":
        from pathlib import Path

        from .layout import dataset_stats

        if not Path(a.root).is_dir():
            raise CliError(f"{a.root}: no such folder", "give a dataset folder (ROOT/<track_id>/track.json ...)")
        if not any(Path(a.root).glob("*/track.json")):
            raise CliError(f"{a.root}: not a dataset (no <track_id>/track.json in it)",
                           "render one (python -m training.data render ...) or convert one (... convert ...)")
        print(json.dumps(dataset_stats(a.root), indent=1))
    return 0


def _train_recipe():
    from .vary import TRAIN_RECIPE
    return TRAIN_RECIPE


def _train_slow_recipe():
    from .vary import TRAIN_SLOW_RECIPE
    return TRAIN_SLOW_RECIPE


def _xsf_recipe():
    from .vary import HELD_OUT_RECIPE
    return HELD_OUT_RECIPE


# The varied sets: corpora, recipe, variants, and which songs (training/data/README.md)
VARIED_SETS = {
    "train": {"corpora": ("touhou", "nottingham"), "recipe": _train_recipe, "variants": (0,)},
    "train-slow": {"corpora": ("touhou", "nottingham"), "recipe": _train_slow_recipe, "variants": (1,)},
    "xcorpus": {"corpora": ("pop909",), "recipe": _train_recipe, "variants": (0,), "limit": 130,
                "force_split": "validation"},
    "xsf": {"corpora": ("touhou", "nottingham"), "recipe": _xsf_recipe, "variants": (0,),
            "only_split": "validation", "force_split": "validation"},
}


def _ablation_recipe(name):
    def get():
        from .vary import ABLATION_RECIPES
        return ABLATION_RECIPES[name]
    return get


# one-factor ablation sets: the in-domain validation songs, one factor varied at a time
ABLATION_SETS = ("abl-base", "abl-soundfont", "abl-instruments", "abl-keytempo", "abl-room")
for _n in ABLATION_SETS:
    VARIED_SETS[_n] = {"corpora": ("touhou", "pop909", "nottingham"), "recipe": _ablation_recipe(_n),
                       "variants": (0,), "force_split": "validation", "only_tracks": "docs/report/validation_125.json"}


def _limits(text: str):
    try:
        vals = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected N or N1,N2,... (whole numbers)") from None
    if any(v < 0 for v in vals):
        raise argparse.ArgumentTypeError(f"{text!r}: numbers must be >= 0")
    return vals[0] if len(vals) == 1 else vals


def _names(text: str) -> list[str]:
    from .render import CORPORA, PLAIN

    names = [t.strip().lower() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in CORPORA + (PLAIN,)]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown corpus {', '.join(bad) or '(none)'}; choose from "
                                         f"{', '.join(CORPORA + (PLAIN,))}")
    return names


SUMMARY_KEYS = ("found", "already_done", "rendered", "skipped", "elapsed_s", "speed_x_realtime", "songs_per_s",
                "tracks_total", "train", "validation")


def _summary(rep: dict, keys=SUMMARY_KEYS) -> int:
    """Print the figures and every file left out with its reason; 2 when nothing was rendered."""
    print("render summary: " + ", ".join(f"{k}={rep[k]}" for k in keys if k in rep))
    for s in rep["skipped_tracks"]:
        print(f"  skipped {s['source']}: {s['reason']}")
    if rep["rendered"] == 0 and rep["already_done"] == 0:
        where = ", ".join(rep.get("midi_dirs", [])) or "the MIDI folders"
        why = (f"no MIDI files (.mid, .midi) under {where}" if rep["found"] == 0
               else f"all {rep['found']} MIDI files were skipped (reasons above)")
        raise CliError(f"nothing to render: {why}",
                       "check the folder, or the corpus it is declared as (--corpus, corpus.json); "
                       "plain MIDI needs no declaration")
    return 0


if __name__ == "__main__":
    sys.exit(main())
