#!/usr/bin/env bash
# Sets up and runs the main job on its embedded default (shipped model, demo library, sound card or demo track).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_system.sh
python -m pip install -q -e '.[cpu,audio,midi]'
python -m export.cache > /dev/null  # a packed model directory: build its forms once (no-op otherwise)
exec python -m server "$@"
