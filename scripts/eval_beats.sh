#!/usr/bin/env bash
# Beat and downbeat tracking on the three validation sets (docs/report/beats.md): the shipped
# model's ViT beat head, the beat network, and madmom's online tracker as the reference
# (pip install -e '.[bench]'), on the same tracks (the first MAX_TRACKS of each set, the first
# MAX_SECONDS of each track), one thread each, one after the other.
#   DATA=/work/data OUT=docs/report/beats bash scripts/eval_beats.sh [SOURCES...]
# SOURCES: any of head net madmom (default: all three).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-/work/data}
OUT=${OUT:-docs/report/beats}
MODEL=${MODEL:-engine/assets/model}
MAX_TRACKS=${MAX_TRACKS:-40}
MAX_SECONDS=${MAX_SECONDS:-60}
SOURCES=${*:-head net madmom}
mkdir -p "$OUT"
for set in render-indomain xcorpus xsf; do
    [ -f "$DATA/$set/splits.json" ] || { echo "skipping $set: $DATA/$set is not rendered"; continue; }
    list=()
    [ "$set" = render-indomain ] && list=(--track-list docs/report/validation_125.json)
    for src in $SOURCES; do
        case $src in
            head) args=(--model "$MODEL" --beats-source head) ;;
            net) args=(--model "$MODEL" --beats-source net) ;;
            madmom) args=(--model madmom) ;;
            *) echo "unknown source $src" >&2; exit 2 ;;
        esac
        OMP_NUM_THREADS=1 nice -n 10 python -m training eval beats --data "$DATA/$set" "${args[@]}" "${list[@]}" \
            --max-tracks "$MAX_TRACKS" --max-seconds "$MAX_SECONDS" --threads 1 --json "$OUT/$set.$src.json"
    done
done
python -m training.beat_eval table "$OUT"/*.json
