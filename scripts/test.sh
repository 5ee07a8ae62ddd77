#!/usr/bin/env bash
# Sets up everything the test suite needs on a fresh machine, then runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_system.sh
python -m pip install -q -e '.[cpu,audio,midi,osc,link,web,train,dev]'
python -m export.cache > /dev/null  # a packed model directory: build its forms once (no-op otherwise)
python -m pytest -q "$@"
