"""Training recipes (training/recipes/*.toml, docs/training.md): every recipe and config in the repo
resolves to valid TrainConfigs, the init chain is derived as documented, a dry run prints the fit
commands and trains nothing, and every config or recipe a document names exists."""
import json
import re
import shlex
from dataclasses import asdict
from pathlib import Path

import pytest

from tests.conftest import ROOT

RECIPES = sorted((ROOT / "training" / "recipes").glob("*.toml"))
CONFIGS = sorted((ROOT / "training" / "configs").glob("*.toml"))
DEFAULT = ROOT / "training" / "recipes" / "default.toml"
DEFAULT_STAGES = ["jepa", "jepa_long", "jepa_hard", "jepa_queue", "jepa_queue2", "jepa_queue3", "jepa_queue4", "beats"]


def load(path, runs="R", *overrides):
    from training import recipe

    return recipe.load(path, runs, ["data=D", *overrides])


def write(tmp_path, text, name="r.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_every_recipe_resolves_to_valid_configs(path):
    from training.fit import TrainConfig

    stages = load(path)
    assert stages and len({s.name for s in stages}) == len(stages)
    for st in stages:
        assert isinstance(st.config, TrainConfig)
        assert st.config.out == f"R/{st.name}" and st.config.data == "D"
        # the printed command is the stage: parsed back by fit's own loader it gives the same config
        argv = shlex.split(st.command())
        assert argv[:4] == ["python", "-m", "training", "fit"]
        assert TrainConfig.load(None, argv[4:]) == st.config


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_config_loads(path):
    from training.fit import TrainConfig

    cfg = TrainConfig.load(str(path), ["data=D"])
    assert cfg.data == "D"


def test_the_campaign_config_keeps_its_meaning():
    from training.fit import TrainConfig

    # scripts/campaign.sh's command line
    cfg = TrainConfig.load(str(ROOT / "training/configs/campaign.toml"),
                           ["data=/d/varied", "out=runs/campaign_5", "seed=5", "causal=true", "stop_minutes=90"])
    assert (cfg.init, cfg.out, cfg.seed, cfg.causal, cfg.stop_minutes) == ("campaign/weights.pt", "runs/campaign_5", 5, True, 90.0)
    assert (cfg.lr, cfg.min_lr, cfg.queue_size, cfg.group_by, cfg.steps) == (1.2e-4, 1.2e-4, 8192, "mixed", 100000)


def test_the_default_init_chain():
    stages = load(DEFAULT)
    assert [s.name for s in stages] == DEFAULT_STAGES
    inits = [s.config.init for s in stages]
    assert inits == [""] + [f"R/{n}/final.pt" for n in DEFAULT_STAGES[:-1]]
    assert [s.config.phase for s in stages] == ["jepa"] * 7 + ["beats"]
    beats = stages[-1].config
    assert (beats.batch_size, beats.frames, beats.out) == (16, 800, "R/beats")  # configs/beats.toml, out from the chain
    # like: stage 6 is stage 5 with a lower lr, stage 5 stage 4 with a longer queue
    q2, q3, q4 = (s.config for s in stages[4:7])
    assert (q2.steps, q2.group_by, q2.queue_size, q2.lr) == (2000, "mixed", 4096, 1.5e-4)
    assert (q3.queue_size, q3.lr, q3.ema_end) == (4096, 1e-4, 0.9995)
    assert (q4.queue_size, q4.lr, q4.ema_end) == (8192, 1.5e-4, 0.9995)


def test_only_keeps_the_chain():
    from training import recipe

    (st,) = recipe.select(load(DEFAULT), ["jepa_queue4"])
    assert st.config.init == "R/jepa_queue3/final.pt"
    assert [s.name for s in recipe.select(load(DEFAULT), ["beats,jepa"])] == ["jepa", "beats"]
    with pytest.raises(recipe.RecipeError, match="no such stage"):
        recipe.select(load(DEFAULT), ["nope"])


def test_the_baselines_and_variants():
    class_ = load(ROOT / "training/recipes/class.toml")
    assert [(s.name, s.config.init, s.config.conditioning) for s in class_] == [
        ("class", "", "class"), ("class_hard", "R/class/final.pt", "class")]
    jepa, _, hard = (s.config for s in load(DEFAULT)[:3])
    for mine, theirs in zip((s.config for s in class_), (jepa, hard)):  # the default's stages 1 and 3 but for
        assert {k: v for k, v in asdict(mine).items() if k not in ("conditioning", "init", "out")} == \
            {k: v for k, v in asdict(theirs).items() if k not in ("conditioning", "init", "out")}
    ab = load(ROOT / "training/recipes/ab.toml")
    assert [(s.name, s.config.init, s.config.causal) for s in ab] == [
        ("ab_causal", "runs/shipped/final.pt", True), ("ab_bidir", "runs/shipped/final.pt", False)]
    (tail,) = load(ROOT / "training/recipes/jepa_tail.toml")
    assert (tail.config.init, tail.config.frames, tail.config.queue_size) == ("R/jepa_queue2/final.pt", 800, 4096)


def test_precedence_of_keys(tmp_path):
    write(tmp_path, 'phase = "beats"\nsteps = 7\nlr = 0.5\ninit = "ignored.pt"\nout = "ignored"\n', "c.toml")
    p = write(tmp_path, """
[base]
steps = 10
lr = 0.1
warmup = 3
[[stage]]
name = "a"
steps = 20
[[stage]]
name = "b"
like = "a"
lr = 0.2
[[stage]]
name = "c"
config = "c.toml"
[[stage]]
name = "d"
init = ""
out = "elsewhere/d"
[[stage]]
name = "e"
init = "@b"
""")
    a, b, c, d, e = (s.config for s in load(p, "R", "warmup=9"))
    assert (a.steps, a.lr, a.warmup, a.init) == (20, 0.1, 9, "")
    assert (b.steps, b.lr, b.init) == (20, 0.2, "R/a/final.pt")
    assert (c.phase, c.steps, c.lr, c.init, c.out) == ("beats", 7, 0.5, "R/b/final.pt", "R/c")
    assert (d.steps, d.init, d.out) == (10, "", "elsewhere/d")
    assert e.init == "R/b/final.pt"


BAD = {
    "unknown key in a stage": ('[[stage]]\nname = "a"\nstepz = 3\n', "stepz"),
    "unknown key in base": ('[base]\nstepz = 3\n[[stage]]\nname = "a"\n', "stepz"),
    "wrong type": ('[[stage]]\nname = "a"\nsteps = "800"\n', "steps"),
    "bool for an int": ('[[stage]]\nname = "a"\nsteps = true\n', "steps"),
    "unknown phase": ('[[stage]]\nname = "a"\nphase = "pretrain"\n', "phase"),
    "unknown like": ('[[stage]]\nname = "a"\nlike = "z"\n', "like"),
    "like a later stage": ('[[stage]]\nname = "a"\nlike = "b"\n[[stage]]\nname = "b"\n', "like"),
    "unknown @": ('[[stage]]\nname = "a"\ninit = "@z"\n', "@z"),
    "twice": ('[[stage]]\nname = "a"\n[[stage]]\nname = "a"\n', "twice"),
    "no name": ('[[stage]]\nsteps = 3\n', "name"),
    "init in base": ('[base]\ninit = "x.pt"\n[[stage]]\nname = "a"\n', "init"),
    "top-level typo": ('[[stages]]\nname = "a"\n', "stages"),
    "no stages": ('[base]\nsteps = 3\n', "no [[stage]]"),
    "extends itself": ('extends = "r.toml"\n[[stage]]\nname = "a"\n', "extends itself"),
    "missing config": ('[[stage]]\nname = "a"\nconfig = "nope.toml"\n', "nope.toml"),
    "not TOML": ('[[stage]\n', "TOML"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_recipes_are_refused(tmp_path, case):
    from training import recipe

    text, needle = BAD[case]
    p = write(tmp_path, text)
    with pytest.raises(recipe.RecipeError) as e:
        load(p)
    assert needle in str(e.value) and str(p) in str(e.value), str(e.value)


def test_init_and_out_on_the_command_line_are_refused():
    from training import recipe

    for ov in ("out=x", "init=y.pt"):
        with pytest.raises(recipe.RecipeError, match="derives"):
            load(DEFAULT, "R", ov)


def run_cli(capsys, *argv):
    """``python -m training ARGV`` in this process: (exit status, stdout, stderr)."""
    from training.__main__ import main

    try:
        rc = main(list(argv))
    except SystemExit as e:  # a usage error of argparse
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_dry_run_prints_the_commands_and_trains_nothing(tmp_path, capsys):
    runs = tmp_path / "runs"
    rc, out, _ = run_cli(capsys, "recipe", str(DEFAULT), "--dry-run", "--runs", str(runs), f"data={tmp_path}", "threads=1")
    assert rc == 0
    commands = [ln for ln in out.splitlines() if ln.startswith("python -m training fit ")]
    headers = [ln for ln in out.splitlines() if ln.startswith("# [")]
    assert len(commands) == len(headers) == len(DEFAULT_STAGES)
    assert all("would run" in h for h in headers)
    assert f"init={runs}/jepa_queue4/final.pt" in commands[-1] and "phase=beats" in commands[-1]
    assert all("threads=1" in c for c in commands)
    assert not runs.exists() and list(tmp_path.iterdir()) == []


def test_a_finished_stage_is_skipped(tmp_path, capsys):
    runs = tmp_path / "runs"
    (runs / "jepa").mkdir(parents=True)
    (runs / "jepa" / "final.pt").write_bytes(b"")
    (runs / "jepa" / "train_config.json").write_text(json.dumps({"steps": 800}))
    (runs / "jepa_long").mkdir()
    (runs / "jepa_long" / "final.pt").write_bytes(b"")
    (runs / "jepa_long" / "train_config.json").write_text(json.dumps({"steps": 100}))  # a shorter run: not done
    rc, out, _ = run_cli(capsys, "recipe", str(DEFAULT), "--dry-run", "--runs", str(runs), f"data={tmp_path}",
                         "--only", "jepa,jepa_long")
    assert rc == 0
    headers = [ln for ln in out.splitlines() if ln.startswith("# [")]
    assert "done, skipped" in headers[0] and "would run" in headers[1], out


@pytest.mark.parametrize("argv,needle", [
    (["recipe", "training/recipes/default.toml", "--dry-run"], "data=DIR"),
    (["recipe", "training/recipes/nope.toml", "data=."], "no such recipe"),
    (["recipe", "training/recipes/default.toml", "data=.", "--only", "nope"], "no such stage"),
    (["recipe", "training/recipes/default.toml", "data=.", "steps=abc"], "whole number"),
    (["fit", "--config", "training/configs/jepa_queue4.toml", "data=."], "no such file"),
])
def test_cli_errors(capsys, monkeypatch, argv, needle):
    monkeypatch.chdir(ROOT)
    rc, _, err = run_cli(capsys, *argv)
    assert rc == 2 and needle in err, err
    if argv[0] == "fit":
        assert "training/recipes/default.toml --only jepa_queue4" in err  # where the removed config went


def test_documents_name_only_configs_and_recipes_that_exist():
    names = {p.name for p in CONFIGS + RECIPES} | {"pyproject.toml"}
    files = [ROOT / "README.md", ROOT / "campaign" / "README.md", *(ROOT / "docs").rglob("*.md"),
             *(ROOT / "scripts").glob("*.sh"), *(ROOT / "training").rglob("*.py"), *CONFIGS, *RECIPES]
    missing = []
    for f in files:
        for m in re.finditer(r"([\w./-]*?)(\w+\.toml)\b", f.read_text()):
            if not m.group(1).startswith("/") and m.group(2) not in names:
                missing.append(f"{f.relative_to(ROOT)}: {m.group(0)}")
    assert not missing, missing


def test_the_rebuild_script_reads_the_recipes():
    script = (ROOT / "scripts" / "rebuild_default_model.sh").read_text()
    assert "python -m training recipe training/recipes/default.toml" in script
    assert "python -m training recipe training/recipes/class.toml" in script
    assert "init=" not in script  # the chain is the recipes'


@pytest.mark.slow
def test_a_recipe_trains_its_chain_and_resumes(tmp_path):
    """Two tiny stages on the rendered fixture: the second starts from the first's final.pt, and a
    second run of the recipe skips both."""
    import subprocess
    import sys

    sf2 = Path("/usr/share/sounds/sf2/TimGM6mb.sf2")
    if not sf2.is_file():
        pytest.skip("needs Debian timgm6mb-soundfont (scripts/setup_system.sh)")
    from tests.test_training import _song
    from training.data.render import render_corpus

    midi = tmp_path / "midi"
    midi.mkdir()
    for i in range(2):
        _song(midi / f"song{i}.mid", seed=i)
    data = tmp_path / "data"
    render_corpus([midi], data, str(sf2), jobs=1, excerpt=None, val_fraction=0.0, seed=0, progress=False)
    p = write(tmp_path, """
[base]
model = "micro"
frames = 160
batch_size = 4
warmup = 1
threads = 1
norm_samples = 4
ckpt_every = 1000
[[stage]]
name = "one"
steps = 2
[[stage]]
name = "two"
like = "one"
steps = 3
""")
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "training", "recipe", str(p), "--runs", str(runs), f"data={data}"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    two = json.loads((runs / "two" / "train_config.json").read_text())
    assert two["init"] == f"{runs}/one/final.pt" and two["steps"] == 3
    assert (runs / "one" / "final.pt").is_file() and (runs / "two" / "final.pt").is_file()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.count("done, skipped") == 2, r.stdout
