#!/usr/bin/env bash
# One-factor ablation (docs/report/generalisation.md, "What the model relies on"): render the 125
# in-domain validation songs plain (as the default render: FluidR3, own programs, own key and
# tempo, dry) and with one factor varied at a time, then rank each set with a model and with the
# tempo + key heuristic. Deterministic; finished renders and evaluations are kept.
#   MODEL=runs/old_default/model.pt NAME=previous DATA=/work/data bash scripts/ablation.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-/work/data}
MIDI=${MIDI:-../shared/data/midi}
MODEL=${MODEL:?a checkpoint (.pt), or heuristic}
NAME=${NAME:?a short name for the model, used in the output file names}
J=${JOBS:-1}
OUT=${OUT:-docs/report/suite/ablation}
mkdir -p "$OUT"
for SET in abl-base abl-soundfont abl-instruments abl-keytempo abl-room; do
    python -m training.data render-varied "$SET" "$DATA/$SET" --midi-root "$MIDI" --jobs "$J"
    if [ ! -s "$OUT/${NAME}_${SET}.json" ]; then
        OMP_NUM_THREADS=1 python -m training eval retrieval --data "$DATA/$SET" --model "$MODEL" --split all \
            --threads 1 --json "$OUT/${NAME}_${SET}.json"
    fi
done
python - "$OUT" "$NAME" <<'PY'
import json, sys
from pathlib import Path
out, name = Path(sys.argv[1]), sys.argv[2]
print(f"| set ({name}) | tracks, candidates | R@1 | R@5 | median | mean |")
print("|---|---|---:|---:|---:|---:|")
for s in ("abl-base", "abl-soundfont", "abl-instruments", "abl-keytempo", "abl-room"):
    r = json.loads((out / f"{name}_{s}.json").read_text())
    o = r["overall"]
    print(f"| {s} | {r['n_tracks']}, {r['n_candidates']} | {o['R@1']:.1f} | {o['R@5']:.1f} | "
          f"{o['nrank_median']:.2f} % | {o['nrank_mean']:.2f} % |")
PY
