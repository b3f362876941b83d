#!/usr/bin/env bash
# Does training the OmniSIFT selector help, and which training signal? For each variant (training mode and
# learning rate) and seed: train configs/synthav-selector.yaml in front of the frozen tiny-omni on SynthAV,
# export, and evaluate on a held-out split (generated with a seed never used for training or tuning), next
# to every training-free method and the untrained selector. Writes
# benchmarks/results/selector_training_synthav.{md,json,png} (mean and spread over seeds).
#
#   benchmarks/selector_training.sh                 # seeds 0 1 2, variants "mask-3e-4 mask-1e-3 shrink-1e-4"
#   SEEDS="0" VARIANTS="mask-1e-3" benchmarks/selector_training.sh
#
# About 4 min (mask) / 1.5 min (shrink) of training and 1.5 min of eval per run, plus 8 min for the
# training-free methods, on 2 CPU cores with nothing else running.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
ROOT=${ROOT:-runs/selector}
SEEDS=${SEEDS:-"0 1 2"}
VARIANTS=${VARIANTS:-"mask-3e-4 mask-1e-3 shrink-1e-4"}
HELDOUT_SEED=${HELDOUT_SEED:-777}
RETENTIONS="0.05 0.10 0.15 0.25 0.35"
EVAL="$PY -m sift eval --manifest $ROOT/heldout/test.jsonl --model checkpoints/tiny-omni --max-new-tokens 2 --retentions $RETENTIONS --quiet --overwrite"

$PY -m sift synthav "$ROOT/synthav" --train 300
$PY -m sift synthav "$ROOT/heldout" --test 60 --seed "$HELDOUT_SEED"
$PY -c "from transformers import AutoConfig; import sift; sift.OmniSIFTSelector.from_config(AutoConfig.from_pretrained('checkpoints/tiny-omni')).save_pretrained('$ROOT/untrained')"

for variant in $VARIANTS; do
    mode=${variant%%-*}
    lr=${variant#*-}
    for seed in $SEEDS; do
        run="$variant-seed$seed"
        sed -e "s#runs/selector/run#$ROOT/$run#g; s#runs/selector/synthav#$ROOT/synthav#; s#^seed_everything: .*#seed_everything: $seed#" \
            -e "s#^  train_mode: .*#  train_mode: $mode#; s#^  lr: .*#  lr: $lr#" configs/synthav-selector.yaml > "$ROOT/$run.yaml"
        rm -rf "${ROOT:?}/$run"
        start=$SECONDS
        $PY -m train fit --config "$ROOT/$run.yaml" > "$ROOT/$run.log" 2>&1
        echo "$run: trained in $((SECONDS - start)) s"
        $PY -m train export "$ROOT/$run/checkpoints/last.ckpt" "$ROOT/selectors/$run" >> "$ROOT/$run.log" 2>&1
        $EVAL --methods omnisift --selector "$ROOT/selectors/$run" --out "$ROOT/eval/$run"
    done
done
if [ ! -f "$ROOT/eval/free/results.json" ]; then
    $EVAL --methods none random omnizip stvp dycoke omniselect omnisift --selector "$ROOT/untrained" --out "$ROOT/eval/free"
fi
$PY benchmarks/selector_training_table.py "$ROOT/eval" benchmarks/results/selector_training_synthav
