#!/usr/bin/env bash
# Sets up and runs the main job on its embedded default (shipped model, demo library, sound card or demo track).
# Installs only when something changed: a stamp in the Python environment records the hash of
# pyproject.toml, the extras and this checkout; the same stamp means no pip run (STEMJEPA_REINSTALL=1 forces one;
# STEMJEPA_STAMP_DIR puts the stamp elsewhere than the environment's prefix).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_system.sh
EXTRAS="cpu,audio,midi"
want="$( (sha256sum pyproject.toml | cut -d' ' -f1; echo "$EXTRAS"; pwd) | sha256sum | cut -d' ' -f1)"
stamp="${STEMJEPA_STAMP_DIR:-$(python -c 'import sys; print(sys.prefix)')}/.stemjepa-install-$EXTRAS"
have="$(cat "$stamp" 2>/dev/null || true)"
if [ "${STEMJEPA_REINSTALL:-0}" = 1 ] || [ "$have" != "$want" ] \
   || ! python -c 'import importlib.metadata as m; m.version("stemjepa-live")' 2>/dev/null; then
  echo "run.sh: installing the project ('.[$EXTRAS]'): pyproject.toml or the environment changed" >&2
  python -m pip install -q -e ".[$EXTRAS]"
  echo "$want" > "$stamp" 2>/dev/null || echo "run.sh: cannot write $stamp; the next run installs again" >&2
fi
# a packed model directory (fp16 weights only): build its forms once (the server would too, at start-up)
m=engine/assets/model
if [ -f "$m/packed.json" ] && [ ! -f "$m/manifest.json" ]; then python -m export.cache > /dev/null; fi
exec python -m server "$@"
