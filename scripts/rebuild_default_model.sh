#!/usr/bin/env bash
# Rebuilds the shipped default model from the MIDI corpora: render -> train (JEPA + FiLM text and the
# beat head, training/recipes/default.toml; then the 4-class and contrastive-only baselines) ->
# evaluate (docs/report) -> export (engine/assets/model) -> demo library index.
# Every step resumes where it stopped; re-run the script after an interruption.
#   DATA=/work/data/render RUNS=runs bash scripts/rebuild_default_model.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-/work/data/render}
RUNS=${RUNS:-runs}
MIDI=${MIDI:-../shared/data/midi}
T=${THREADS:-2}
python -m training.data render-default "$DATA" --midi-root "$MIDI" --jobs "$T"
# The stages and their init chain are written once, in the recipes (docs/training.md); each stage's
# out is $RUNS/<stage>; a finished stage is skipped, an interrupted one resumes.
python -m training recipe training/recipes/default.toml --runs "$RUNS" data="$DATA" threads="$T"
python -m training recipe training/recipes/class.toml --runs "$RUNS" data="$DATA" threads="$T"
python -m training fit --config training/configs/contrastive.toml data="$DATA" out="$RUNS/contrastive" threads="$T"
python -m training report --data "$DATA" --default "$RUNS/beats/final.pt" --contrastive "$RUNS/contrastive/final.pt" \
    --class "$RUNS/class_hard/final.pt" --out docs/report --threads "$T" --track-list docs/report/validation_125.json
python -m export "$RUNS/beats/final.pt" engine/assets/model --precision fp32 int8 --overwrite --no-checkpoint-copy
python -m engine.library build engine/assets/demo/library engine/assets/demo/library.npz --model engine/assets/model --no-resume
