#!/usr/bin/env bash
# Debian packages the project uses: FluidSynth + soundfonts (rendering), PortAudio (sound card),
# JACK (dummy audio clock and real MIDI ports without a sound card), libsndfile.
set -euo pipefail
#   bash scripts/setup_system.sh          what the server and the tests need
#   bash scripts/setup_system.sh render   also every sound source of the varied training renders
pkgs="fluidsynth fluid-soundfont-gm timgm6mb-soundfont libportaudio2 jackd2 libsndfile1"
if [ "${1:-}" = "render" ]; then
  pkgs="$pkgs csound-soundfont opl3-soundfont avldrums.lv2-soundfont hydrogen-drumkits"
fi
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
updated=""
apt_update() { [ -n "$updated" ] || { $SUDO apt-get update -qq && updated=1; }; }
missing=""
for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  apt_update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
fi

# Node.js (for the Max/MSP example subscriber, examples/max) and its npm `zeromq` package.
# Node is taken from Debian only when none is installed; failure here only disables that example's test.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  apt_update || true
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nodejs npm \
    || echo "setup: could not install Node.js; the Node subscriber test will be skipped" >&2
fi
if command -v npm >/dev/null 2>&1 && { [ ! -d "$(dirname "$0")/../examples/max/node_modules/zeromq" ] \
    || [ ! -d "$(dirname "$0")/../examples/max/node_modules/ajv" ]; }; then
  (cd "$(dirname "$0")/../examples/max" && npm install --no-audit --no-fund --loglevel=error) \
    || echo "setup: npm install in examples/max failed; the Node subscriber test will be skipped" >&2
fi
# Chromium, headless, for the live page's test (tests/test_web.py); failure here only disables that test.
if ! command -v chromium >/dev/null 2>&1; then
  apt_update || true
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium \
    || echo "setup: could not install Chromium; the live page test will be skipped" >&2
fi
