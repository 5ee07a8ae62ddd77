"""Training recipes: the stages of a model in one file (training/recipes/*.toml; docs/training.md).

    python -m training recipe training/recipes/default.toml data=DIR [--runs DIR] [--only STAGE] [--dry-run]

A recipe holds a ``[base]`` table of training keys and ``[[stage]]`` tables, each a ``name`` and
the keys in which the stage differs from the base. Each stage is one ``python -m training fit``
run: its ``out`` is ``RUNS/<name>`` and its ``init`` the previous stage's ``out/final.pt`` unless
the stage says otherwise. Stage keys besides the training keys:

* ``like = "STAGE"``  -- start from that earlier stage's keys (its ``init`` too, not its ``out``);
* ``config = "FILE"`` -- start from a TOML config file (path relative to the recipe) instead of
  ``[base]``; that file's own ``init`` and ``out`` are ignored (the recipe's chain decides);
* ``init = ""`` (from scratch), ``init = "@STAGE"`` (that stage's ``out/final.pt``) or a path;
* ``out = "PATH"`` in place of ``RUNS/<name>``.

``extends = "FILE"`` at the top takes another recipe's ``[base]`` (this file's ``[base]`` is laid
over it) and lets ``like`` and ``@`` name its stages; only this file's stages are run.

Precedence, lowest first: TrainConfig's defaults, ``[base]`` (or the ``config`` file), the
``like`` stage's keys, the stage's own keys, ``key=value`` on the command line.
"""
from __future__ import annotations

import json
import shlex
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .fit import TrainConfig

RECIPES = Path(__file__).parent / "recipes"
STAGE_KEYS = ("name", "like", "config", "init", "out")  # keys of a [[stage]] that are not training keys
TOP_KEYS = ("extends", "base", "stage")


class RecipeError(ValueError):
    """A recipe that cannot be resolved; the message names the file and the stage."""


@dataclass(frozen=True)
class Stage:
    name: str
    recipe: str  # the file the stage was resolved from
    config: TrainConfig

    def args(self) -> list[str]:
        """``key=value`` arguments of ``python -m training fit``: ``data``, ``out`` and every key that
        differs from TrainConfig's default, in TrainConfig's order."""
        defaults = {f.name: f.default for f in fields(type(self.config))}
        return [f"{k}={_text(v)}" for k, v in asdict(self.config).items() if k in ("data", "out") or v != defaults[k]]

    def command(self) -> str:
        return shlex.join(["python", "-m", "training", "fit", *self.args()])

    def done(self) -> bool:
        """Whether ``fit`` would train nothing more: ``out/final.pt`` is there and the run it ends had at
        least this stage's steps (``out/train_config.json``, written by fit)."""
        out = Path(self.config.out)
        try:
            steps = int(json.loads((out / "train_config.json").read_text())["steps"])
        except (OSError, ValueError, KeyError, TypeError):
            return False
        return (out / "final.pt").is_file() and steps >= self.config.steps


def _text(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return repr(v) if isinstance(v, float) else str(v)


def _read(path: Path) -> dict:
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as e:
        raise RecipeError(f"{path}: cannot read ({e.strerror or e})") from None
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"{path}: not valid TOML ({e})") from None
    unknown = set(raw) - set(TOP_KEYS)
    if unknown:
        raise RecipeError(f"{path}: unknown top-level keys {sorted(unknown)}: a recipe has extends, [base] and "
                          "[[stage]] tables (training keys go in [base] or in a stage)")
    if not isinstance(raw.get("base", {}), dict) or not isinstance(raw.get("stage", []), list):
        raise RecipeError(f"{path}: [base] must be a table and the stages [[stage]] tables")
    for k in ("init", "out"):
        if k in raw.get("base", {}):
            raise RecipeError(f"{path}: {k} in [base]: a recipe derives {k} per stage (set it in a stage)")
    return raw


class _Book:
    """The stages a recipe can refer to (its own and those of the recipes it extends), by name."""

    def __init__(self):
        self.tables: dict[str, tuple[dict, Path]] = {}  # name -> (keys after `like`, file)

    def add(self, table: dict, path: Path) -> tuple[str, dict]:
        name = table.get("name")
        if not isinstance(name, str) or not name or "/" in name:
            raise RecipeError(f"{path}: every [[stage]] needs a name (a folder name under RUNS), got {name!r}")
        if name in self.tables:
            raise RecipeError(f"{path}: stage {name!r} is defined twice (in {self.tables[name][1]})")
        keys = {k: v for k, v in table.items() if k not in ("name", "like")}
        if "config" in keys:  # relative to the file that names it, wherever the stage is used
            keys["config"] = str((path.parent / keys["config"]).resolve())
        like = table.get("like")
        if like is not None:
            if like not in self.tables:
                raise RecipeError(f"{path}, stage {name}: like = {like!r} names no earlier stage "
                                  f"(known: {', '.join(self.tables) or 'none'})")
            keys = {**{k: v for k, v in self.tables[like][0].items() if k != "out"}, **keys}
        self.tables[name] = (keys, path)
        return name, keys


def _chain(path: Path, book: _Book, seen: tuple[Path, ...] = ()) -> tuple[dict, list[tuple[str, dict, Path]]]:
    """``(base, own stages)`` of the recipe at ``path``; the stages of every recipe it extends go
    into ``book`` first."""
    path = path.resolve()
    if path in seen:
        raise RecipeError(f"{path}: extends itself (through {' -> '.join(map(str, seen))})")
    raw = _read(path)
    base: dict = {}
    if "extends" in raw:  # its stages go into the book (for `like` and `@`), not into the run
        if not isinstance(raw["extends"], str):
            raise RecipeError(f"{path}: extends = {raw['extends']!r} must be the path of a recipe")
        base.update(_chain(path.parent / raw["extends"], book, seen + (path,))[0])
    base.update(raw.get("base", {}))
    own = []
    for table in raw.get("stage", []):
        name, keys = book.add(table, path)
        own.append((name, keys, path))
    return base, own


def load(path: str | Path, runs: str = "runs", overrides: list[str] | None = None) -> list[Stage]:
    """Every stage of the recipe at ``path``, resolved and checked (``RecipeError`` otherwise).

    ``runs``: the folder of the stages' outputs (``RUNS/<name>``); ``overrides``: ``key=value``
    training keys laid over every stage (not ``init`` or ``out``, which the recipe decides)."""
    from .fit import TrainConfig

    path = Path(path)
    training_keys = {f.name for f in fields(TrainConfig)}
    try:
        over = TrainConfig.parse_overrides(list(overrides or []))
    except SystemExit as e:
        raise RecipeError(str(e.code)) from None
    for k in ("init", "out"):
        if k in over:
            raise RecipeError(f"{k}= on the command line: a recipe derives each stage's {k} (use --runs DIR, or "
                              f"'python -m training fit' for a single run)")
    book = _Book()
    base, own = _chain(path, book)
    if not own:
        raise RecipeError(f"{path}: no [[stage]] to run")
    unknown = set(base) - training_keys
    if unknown:
        raise RecipeError(f"{path}: unknown training keys in [base]: {sorted(unknown)}")

    def out_of(name: str) -> str:
        keys = book.tables[name][0]
        return str(keys["out"]) if "out" in keys else f"{runs}/{name}"

    stages: list[Stage] = []
    for i, (name, keys, file) in enumerate(own):
        where = f"{file}, stage {name}"
        unknown = set(keys) - training_keys - set(STAGE_KEYS)
        if unknown:
            raise RecipeError(f"{where}: unknown keys {sorted(unknown)} (python -m training fit --help lists the "
                              "training keys)")
        start = dict(base)
        if "config" in keys:
            try:
                start = {k: v for k, v in tomllib.loads(Path(keys["config"]).read_text()).items()
                         if k not in ("init", "out")}
            except OSError as e:
                raise RecipeError(f"{where}: config = {keys['config']}: {e.strerror or e}") from None
            except tomllib.TOMLDecodeError as e:
                raise RecipeError(f"{where}: config = {keys['config']}: not valid TOML ({e})") from None
        init = keys.get("init")
        if init is None:  # the chain: the previous stage's result, the first stage from scratch
            init = f"{out_of(own[i - 1][0])}/final.pt" if i else ""
        elif not isinstance(init, str):
            raise RecipeError(f"{where}: init = {init!r} must be a path, \"@STAGE\" or \"\"")
        elif init.startswith("@"):
            if init[1:] not in book.tables:
                raise RecipeError(f"{where}: init = {init!r} names no stage (known: {', '.join(book.tables)})")
            init = f"{out_of(init[1:])}/final.pt"
        values = {**start, **{k: v for k, v in keys.items() if k not in STAGE_KEYS}, **over,
                  "init": init, "out": out_of(name)}
        try:
            cfg = TrainConfig.from_values(values, where)
        except SystemExit as e:
            msg = str(e.code)
            raise RecipeError(msg if where in msg else f"{where}: {msg}") from None
        stages.append(Stage(name, str(file), cfg))
    return stages


def select(stages: list[Stage], only: list[str]) -> list[Stage]:
    """The stages named in ``only`` (names, or comma-separated lists of names), in recipe order."""
    names = [n for item in only for n in item.split(",") if n]
    unknown = [n for n in names if n not in {s.name for s in stages}]
    if unknown:
        raise RecipeError(f"--only {','.join(unknown)}: no such stage; this recipe has {', '.join(s.name for s in stages)}")
    return [s for s in stages if not names or s.name in names]


def stage_names(recipes: Path = RECIPES) -> dict[str, Path]:
    """Stage name -> recipe file, over the recipes in ``recipes`` (for hints; unreadable files skipped)."""
    found: dict[str, Path] = {}
    for p in sorted(recipes.glob("*.toml")):
        try:
            for t in tomllib.loads(p.read_text()).get("stage", []):
                found.setdefault(str(t.get("name")), p)
        except (OSError, tomllib.TOMLDecodeError, AttributeError):
            continue
    return found


def run(stages: list[Stage], dry_run: bool = False, log=print) -> int:
    """Each stage in order as ``python -m training fit`` (its own process); a finished stage is
    skipped, an unfinished one resumes from its ``out/last.pt``. Stops at the first that fails."""
    import subprocess
    import sys

    for i, st in enumerate(stages, 1):
        done = st.done()
        state = "done, skipped" if done else ("would run" if dry_run else "running")
        log(f"# [{i}/{len(stages)}] {st.name} ({state}; init {st.config.init or 'none: from scratch'})")
        log(st.command())
        if dry_run or done:
            continue
        rc = subprocess.call([sys.executable, "-m", "training", "fit", *st.args()])
        if rc != 0:
            log(f"# stage {st.name} failed (exit status {rc}); fix it and run the recipe again: it resumes")
            return rc
    return 0
