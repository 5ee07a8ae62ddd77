#!/usr/bin/env bash
# Ship a stage of the training campaign as the default model (campaign/README.md, "Shipping"):
#   beat head on its frozen encoder -> the fused ranking's weight chosen on the dev set ->
#   packed model directory (fp16 weights; the other forms are built into the cache on first use) ->
#   the demo library index rebuilt with it.
#   STAGE_RUN=runs/campaign_2 DATA=/work/data bash scripts/ship_campaign.sh
# Needs the stage's suite embeddings (STAGE_RUN/emb, written by training.campaign finish, plus
# emb/dev.npz) and the heuristic's (HEUR_EMB, see docs/keytempo.md).
set -euo pipefail
cd "$(dirname "$0")/.."
STAGE_RUN=${STAGE_RUN:?set STAGE_RUN=runs/campaign_N}
DATA=${DATA:-/work/data}
HEUR_EMB=${HEUR_EMB:-runs/emb/heuristic}
T=${THREADS:-1}
CK="$STAGE_RUN/last.pt"
[ -f "$STAGE_RUN/emb/dev.npz" ] || python -m training eval retrieval --data "$DATA/varied" --model "$CK" \
    --threads "$T" --save-embeddings "$STAGE_RUN/emb/dev.npz"
python -m training fit --config training/configs/beats.toml init="$CK" out="${STAGE_RUN}_beats" data="$DATA/varied" \
    steps=300 causal=true amp=false threads="$T"
python -m training.fusion --model "$STAGE_RUN/emb" --keytempo "$HEUR_EMB" --json "$STAGE_RUN/emb/fusion.json"
W=$(python -c "import json; print(json.load(open('$STAGE_RUN/emb/fusion.json'))['chosen'])")
python -m export.cache pack "${STAGE_RUN}_beats/final.pt" runs/ship_model --text-from engine/assets/model \
    --keytempo-weight "$W" --overwrite
git rm -q -r --cached engine/assets/model > /dev/null
rm -rf engine/assets/model && cp -r runs/ship_model engine/assets/model
python -m export.cache engine/assets/model
python -m engine.library build engine/assets/demo/library engine/assets/demo/library.npz --model engine/assets/model \
    --no-resume --threads "$T"
git add engine/assets/model engine/assets/demo/library.npz engine/assets/demo/library.json
echo "shipped $CK (+ beat head) with keytempo_weight $W; commit engine/assets and update the figures"
