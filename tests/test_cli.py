"""Every command line explains itself and fails cleanly (issue 17).

* ``--help`` of every CLI (and subcommand) exits 0;
* every option has a help text, every option that takes a value shows its default (or is
  required), and no default is an absolute path of some machine;
* bad invocations exit 2 with one ``PROG: error: ...`` line and a ``hint:`` line, no traceback;
  ``--debug`` lets the traceback through;
* every user-facing module has an entry point in pyproject.toml.
"""
import argparse
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")

# module -> argv prefixes that reach each parser (a subcommand's own parser is reached through it)
CLIS = {
    "server": [[]],
    "server.listen": [[]],
    "server.keys": [[]],
    "export": [[]],
    "export.bench": [[]],
    "export.recover": [[]],
    "export.cache": [[], ["pack"]],
    "engine.library": [[]],
    "training": [["fit"], ["eval"], ["report"]],
    "training.data": [[]],
    "training.fusion": [[]],
}


def _main_module(module: str) -> str:
    """Where ``python -m MODULE``'s ``main`` lives (a package runs its ``__main__``)."""
    return module + ".__main__" if module in ("server", "export", "training", "training.data") else module


def _main_of(module: str):
    import importlib

    return importlib.import_module(_main_module(module)).main


class _Captured(Exception):
    pass


def _parsers(module: str, prefix: list[str]) -> list[argparse.ArgumentParser]:
    """The parser ``main(prefix + ["--help"])`` would use, and its subcommands' parsers."""
    seen = []

    def grab(self, args=None, namespace=None):
        seen.append(self)
        raise _Captured

    orig = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = grab
    try:
        with pytest.raises(_Captured):
            getattr(_main_of(module), '__wrapped__', _main_of(module))(prefix + ["--help"])
    finally:
        argparse.ArgumentParser.parse_args = orig
    out = []
    for ap in seen:
        out.append(ap)
        for act in ap._actions:
            if isinstance(act, argparse._SubParsersAction):
                out += list(act.choices.values())
    return out


ALL = [(m, p) for m, ps in CLIS.items() for p in ps]


@pytest.mark.parametrize("module,prefix", ALL, ids=[f"{m} {' '.join(p)}".strip() for m, p in ALL])
def test_every_option_has_help_and_a_shown_default(module, prefix):
    from engine.cli import HelpFormatter

    parsers = _parsers(module, prefix)
    assert parsers
    for ap in parsers:
        assert ap.description, f"{ap.prog}: no description"
        fmt = HelpFormatter(ap.prog)
        for act in ap._actions:
            if isinstance(act, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            name = "/".join(act.option_strings) or act.dest
            assert act.help and act.help.strip(), f"{ap.prog} {name}: no help text"
            if isinstance(act.default, str):
                assert not os.path.isabs(act.default), f"{ap.prog} {name}: default is a machine path {act.default}"
            takes_value = act.nargs != 0 and not isinstance(act, (argparse._StoreTrueAction,
                                                                 argparse._StoreFalseAction))
            if act.option_strings and takes_value and not act.required:
                shown = fmt._get_help_string(act) % {"default": act.default, "prog": ap.prog}
                assert "default" in shown.lower(), f"{ap.prog} {name}: help shows no default: {shown!r}"
        help_text = ap.format_help()
        assert str(ROOT) not in help_text and "/work/" not in help_text, f"{ap.prog}: a machine path in --help"


def run(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


HELPS = [["server"], ["server.listen"], ["server.keys"], ["export"], ["export.bench"], ["export.recover"],
         ["export.cache"], ["export.cache", "pack"], ["engine.library"], ["engine.library", "build"],
         ["training"], ["training", "fit"], ["training", "eval"], ["training", "report"], ["training.data"],
         ["training.data", "render"], ["training.data", "render-default"], ["training.data", "stats"]]


@pytest.mark.parametrize("args", HELPS, ids=[" ".join(a) for a in HELPS])
def test_help_exits_0(args, capsys):
    module, rest = args[0], args[1:]
    with pytest.raises(SystemExit) as e:
        r = _main_of(module)(rest + ["--help"])
        raise SystemExit(r)
    assert e.value.code in (0, None)
    out = capsys.readouterr().out
    assert "usage" in out.lower() or "python -m training" in out
    if args == ["training", "fit"]:
        assert "batch_size" in out and "steps" in out and "(required)" in out  # the config keys are listed


BAD = [
    (["server", "--log-level", "loud"], "invalid choice"),
    (["server", "--pub", "5555"], "tcp://127.0.0.1:5555"),
    (["server", "--hop", "5"], "--hop"),
    (["server", "--k", "0"], "--k"),
    (["server", "--input", "no/such/file.wav"], "no such file"),
    (["server", "--model", "/nonexistent/model"], "missing"),
    (["server.listen", "tcp://127.0.0.1:notaport", "--count", "1"], "not a ZeroMQ address"),
    (["server.listen", "--topics", "nope"], "unknown topic"),
    (["server.keys"], "required"),
    (["export", "/nonexistent.pt", "OUT_NOT_WRITTEN"], "no such checkpoint"),
    (["export.bench", "--backends", "nope"], "unknown nope"),
    (["export.bench", "--hops", "0"], "--hops"),
    (["export.recover", "/nonexistent", "x.pt"], "not a model directory"),
    (["engine.library", "info", "/nonexistent.npz"], "no such"),
    (["engine.library", "build", "/nonexistent", "x.npz"], "not a folder"),
    (["training", "bogus"], "unknown command"),
    (["training", "fit", "steps=abc", "data=."], "whole number"),
    (["training", "fit", "--config", "/nonexistent.toml", "data=."], "no such file"),
    (["training", "fit", "steps=3"], "data=DIR"),
    (["training", "fit", "stepz=3", "data=."], "unknown training option"),
    (["training", "eval", "beats", "--data", ".", "--model", "/nonexistent.pt"], "no such checkpoint"),
    (["training.data", "stats", "."], "not a dataset"),
    (["training.data", "render", ".", "x", "--corpus", "nope"], "unknown corpus"),
    (["training.data", "render", "/nonexistent", "/nonexistent_out"], "no such folder"),
    (["training.data", "render-default", "x"], "--midi-root"),
]


# the cases whose process imports torch (about 3 s each here): the slow tier; every CLI keeps cheap fast cases
SLOW_BAD = {"server --input no/such/file.wav", "export.recover /nonexistent x.pt", "engine.library build /nonexistent x.npz",
            "training fit steps=abc data=.", "training fit --config /nonexistent.toml data=.", "training fit steps=3",
            "training fit stepz=3 data=."}


@pytest.mark.parametrize("args,needle", [
    pytest.param(a, n, id=" ".join(a), marks=pytest.mark.slow if " ".join(a) in SLOW_BAD else ()) for a, n in BAD])
def test_bad_invocations_fail_cleanly(args, needle, tmp_path):
    r = run(*args)
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr + r.stdout, r.stderr[-3000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    err = [ln for ln in lines if ": error: " in ln]
    assert len(err) == 1, r.stderr
    assert needle in err[0], (needle, r.stderr)
    assert any(ln.strip().startswith("hint:") for ln in lines), r.stderr
    assert not (ROOT / "OUT_NOT_WRITTEN").exists()


def test_debug_shows_the_traceback():
    r = run("export.recover", "/nonexistent", "x.pt", "--debug")
    assert r.returncode != 0 and "Traceback" in r.stderr and "RecoverError" in r.stderr


def test_every_user_facing_module_has_an_entry_point():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    targets = {v.split(":")[0] for v in scripts.values()}
    for module in CLIS:
        assert _main_module(module) in targets, f"no entry point for {module}"
    for target in scripts.values():
        mod, fn = target.split(":")
        assert callable(getattr(__import__(mod, fromlist=[fn]), fn))
