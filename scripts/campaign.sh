#!/usr/bin/env bash
# One session of the long training campaign (campaign/README.md). Every step resumes or is
# deterministic, so the script can be re-run after an interruption and on a fresh machine:
#   render the varied training set and the three validation sets (from their seeds) ->
#   train one stage from campaign/weights.pt for MINUTES -> evaluate it on the validation suite ->
#   log the learning-curve point, replace campaign/weights.pt (bf16), update campaign/state.json.
#   DATA=/work/data MINUTES=90 bash scripts/campaign.sh      (then commit campaign/)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-/work/data}
MIDI=${MIDI:-../shared/data/midi}
MINUTES=${MINUTES:-90}
J=${JOBS:-2}
bash scripts/setup_system.sh render
python -m pip install -q -e '.[cpu,train]'
python -m training.data render-varied train "$DATA/varied" --midi-root "$MIDI" --limit 500,400 --jobs "$J"
python -m training.data render-varied xcorpus "$DATA/xcorpus" --midi-root "$MIDI" --jobs "$J"
python -m training.data render-varied xsf "$DATA/xsf" --midi-root "$MIDI" --jobs "$J"
python -m training.data render-default "$DATA/render-indomain" --midi-root "$MIDI" --jobs "$J" \
    --only-tracks docs/report/validation_125.json
STAGE=$(python -c "from training.campaign import read_state; print(read_state()['stage'] + 1)")
CAUSAL=$(python -c "from training.campaign import read_state; print(str(read_state().get('causal', False)).lower())")
python -m training fit --config training/configs/campaign.toml data="$DATA/varied" out="runs/campaign_$STAGE" \
    seed="$STAGE" causal="$CAUSAL" stop_minutes="$MINUTES"
python -m training.campaign finish "runs/campaign_$STAGE" --data "$DATA"
