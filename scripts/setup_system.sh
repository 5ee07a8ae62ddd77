#!/usr/bin/env bash
# Debian packages the project uses: FluidSynth + soundfonts (rendering), PortAudio (sound card),
# JACK (dummy audio clock and real MIDI ports without a sound card), libsndfile.
set -euo pipefail
pkgs="fluidsynth fluid-soundfont-gm timgm6mb-soundfont libportaudio2 jackd2 libsndfile1"
missing=""
for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
fi
