#!/usr/bin/env bash
# Rebuilds the shipped default model from the MIDI corpora: render -> train (JEPA + FiLM text,
# beat head, then the 4-class and contrastive-only baselines) -> evaluate (docs/report) -> export (engine/assets/model) -> demo
# library index. Every step resumes where it stopped; re-run the script after an interruption.
#   DATA=/work/data/render RUNS=runs bash scripts/rebuild_default_model.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-/work/data/render}
RUNS=${RUNS:-runs}
MIDI=${MIDI:-../shared/data/midi}
T=${THREADS:-2}
python -m training.data render-default "$DATA" --midi-root "$MIDI" --jobs "$T"
python -m training fit --config training/configs/jepa.toml data="$DATA" out="$RUNS/jepa" threads="$T"
python -m training fit --config training/configs/jepa_long.toml data="$DATA" init="$RUNS/jepa/final.pt" out="$RUNS/jepa_long" threads="$T"
python -m training fit --config training/configs/jepa_hard.toml data="$DATA" init="$RUNS/jepa_long/final.pt" out="$RUNS/jepa_hard" threads="$T"
python -m training fit --config training/configs/jepa_queue.toml data="$DATA" init="$RUNS/jepa_hard/final.pt" out="$RUNS/jepa_queue" threads="$T"
python -m training fit --config training/configs/jepa_queue2.toml data="$DATA" init="$RUNS/jepa_queue/final.pt" out="$RUNS/jepa_queue2" threads="$T"
python -m training fit --config training/configs/jepa_queue3.toml data="$DATA" init="$RUNS/jepa_queue2/final.pt" out="$RUNS/jepa_queue3" threads="$T"
python -m training fit --config training/configs/jepa_queue4.toml data="$DATA" init="$RUNS/jepa_queue3/final.pt" out="$RUNS/jepa_queue4" threads="$T"
python -m training fit --config training/configs/beats.toml data="$DATA" init="$RUNS/jepa_queue4/final.pt" out="$RUNS/beats" threads="$T"
python -m training fit --config training/configs/class.toml data="$DATA" out="$RUNS/class" threads="$T"
python -m training fit --config training/configs/class_hard.toml data="$DATA" init="$RUNS/class/final.pt" out="$RUNS/class_hard" threads="$T"
python -m training fit --config training/configs/contrastive.toml data="$DATA" out="$RUNS/contrastive" threads="$T"
python -m training report --data "$DATA" --default "$RUNS/beats/final.pt" --contrastive "$RUNS/contrastive/final.pt" \
    --class "$RUNS/class_hard/final.pt" --out docs/report --threads "$T" --track-list docs/report/validation_125.json
python -m export "$RUNS/beats/final.pt" engine/assets/model --precision fp32 int8 --overwrite --no-checkpoint-copy
python -m engine.library build engine/assets/demo/library engine/assets/demo/library.npz --model engine/assets/model --no-resume
