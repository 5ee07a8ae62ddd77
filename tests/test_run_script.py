"""``scripts/run.sh`` installs only when something changed: a stamp of pyproject.toml's hash, the
extras and the checkout. Run with a ``python`` on PATH that records ``-m pip`` calls (and runs
nothing for them) and otherwise is the real interpreter; the server is asked for ``--help`` only."""
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("sha256sum") is None, reason="needs bash, sha256sum")
def test_run_sh_installs_only_when_pyproject_or_extras_change(tmp_path):
    shim = tmp_path / "bin"
    shim.mkdir()
    log = tmp_path / "pip.log"
    (shim / "python").write_text(f"""#!/usr/bin/env bash
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then echo "$@" >> {log}; exit 0; fi
exec {sys.executable} "$@"
""")
    (shim / "python").chmod((shim / "python").stat().st_mode | stat.S_IEXEC)
    stamps = tmp_path / "stamps"
    stamps.mkdir()
    env = dict(os.environ, PATH=f"{shim}:{os.environ['PATH']}", STEMJEPA_STAMP_DIR=str(stamps),
               PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")

    def run():
        r = subprocess.run(["bash", "scripts/run.sh", "--help"], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        assert "usage: python -m server" in r.stdout
        return log.read_text().splitlines() if log.exists() else []

    assert len(run()) == 1  # no stamp yet: one install
    stamp = next(stamps.iterdir())
    assert "cpu,audio,midi" in stamp.name and len(stamp.read_text().strip()) == 64
    assert len(run()) == 1  # same pyproject, same extras: no install
    stamp.write_text("0" * 64 + "\n")  # as if pyproject.toml had changed
    calls = run()
    assert len(calls) == 2 and "install" in calls[-1] and ".[cpu,audio,midi]" in calls[-1]
    assert len(run()) == 2
    env["STEMJEPA_REINSTALL"] = "1"
    assert len(run()) == 3
