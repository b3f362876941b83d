#!/usr/bin/env bash
# Does training the OmniSIFT selector help, and which training signal? For each variant (training mode,
# learning rate, importance-distillation weight) and seed: train CONFIG in front of its frozen model on
# SynthAV, export, and evaluate on a held-out split (generated with a seed never used for training or
# tuning), next to every training-free method and the untrained selector. Writes OUT.{md,json,png} (mean
# and spread over seeds).
#
#   benchmarks/selector_training.sh                 # v1: seeds 0 1 2, variants "mask-3e-4 mask-1e-3 shrink-1e-4"
#   SEEDS="0" VARIANTS="mask-1e-3" benchmarks/selector_training.sh
#   CONFIG=configs/synthav-v2-selector.yaml SYNTHAV_VERSION=2 ROOT=runs/selector-v2 \
#     OUT=benchmarks/results/selector_training_synthav_v2 VARIANTS="mask-3e-4+rank0 mask-3e-4+rank1" \
#     benchmarks/selector_training.sh
#
# A variant is MODE-LR plus optional +flags:
#   +rankW      importance_weight W (without it the config's value holds)
#   +policyW    policy_weight W: the set-level policy-gradient term (train/policy.py)
#   +ptempT     policy_temperature T of its keep-set draws (0: keep sets are not drawn, the greedy top-k)
#   +capP       policy_reward_cap P: a label's probability above P earns the policy no more reward
#   +splitS     a learned budget split (budget_split: learned), its offsets drawn at policy_split_noise S by
#               the policy term (the split's only training signal: give +policyW too)
#   +noguide    selector without visual guidance: audio scored from audio alone
#   +nores      video by the parameter-free base, no learned residual
#   +spatial / +temporal / +mixed   video_base: the residual sits on spatial saliency of every frame, on
#               STVP's temporal rule, or on both standardised and summed
#   +chunk / +clip   audio top-k per 2 s window (the published OmniSIFT's rule) or per clip
# A flag replaces the config's own setting. "untrained" with flags (e.g. untrained+spatial+chunk) evaluates,
# once, a fresh selector: the model's defaults (temporal, clip) plus those flags, not the config's selector
# settings.
# DRY_RUN=1 writes each run's config ($ROOT/<run>.yaml) and the untrained selectors, and prints the commands
# it would run (data, training, export, eval) instead of running them: what the tests check.
# On 2 CPU cores with nothing else running: v1 about 4 min (mask) / 1.5 min (shrink) of training and 1.5 min
# of eval per run, plus 8 min for the training-free methods; v2 about 13 min (shrink, 150 steps) and 3.5 min
# per run, plus 6 min.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
CONFIG=${CONFIG:-configs/synthav-selector.yaml}
SYNTHAV_VERSION=${SYNTHAV_VERSION:-1}
ROOT=${ROOT:-runs/selector}
OUT=${OUT:-benchmarks/results/selector_training_synthav}
SEEDS=${SEEDS:-"0 1 2"}
VARIANTS=${VARIANTS:-"mask-3e-4 mask-1e-3 shrink-1e-4"}
HELDOUT_SEED=${HELDOUT_SEED:-777}
RETENTIONS="0.05 0.10 0.15 0.25 0.35"
MODEL=$(sed -n 's#^  model: ##p' "$CONFIG")
# Heavy steps go through `heavy`, which only prints them under DRY_RUN.
heavy() { if [ -n "${DRY_RUN:-}" ]; then echo "+ $*"; else "$@"; fi; }
EVAL="heavy $PY -m sift eval --manifest $ROOT/heldout/test.jsonl --model $MODEL --max-new-tokens 2 --retentions $RETENTIONS --quiet --overwrite"

mkdir -p "$ROOT"
heavy $PY -m sift synthav "$ROOT/synthav" --train 300 --version "$SYNTHAV_VERSION"
heavy $PY -m sift synthav "$ROOT/heldout" --test 60 --seed "$HELDOUT_SEED" --version "$SYNTHAV_VERSION"
# A fresh selector for MODEL with OmniSIFTConfig keyword arguments $2 (Python, may be empty), saved to $1.
fresh_selector() {
    $PY -c "from transformers import AutoConfig; import sift; sift.OmniSIFTSelector.from_config(AutoConfig.from_pretrained('$MODEL'), $2).save_pretrained('$1')"
}
fresh_selector "$ROOT/untrained" ""

# A selector flag as "key yaml-value python-value" (one place for the YAML edit and the untrained selector).
selector_option() {
    case $1 in
        noguide) echo "visual_guidance false False" ;;
        nores) echo "stvp_residual false False" ;;
        spatial) echo "video_base spatial 'spatial'" ;;
        temporal) echo "video_base temporal 'temporal'" ;;
        mixed) echo "video_base mixed 'mixed'" ;;
        chunk) echo "audio_topk chunk 'chunk'" ;;
        clip) echo "audio_topk clip 'clip'" ;;
        *) return 1 ;;
    esac
}

for variant in $VARIANTS; do
    IFS=+ read -r base flags <<< "$variant"
    mode=${base%%-*}
    lr=${base#*-}
    edits=(-e "s#runs/selector/run#$ROOT/$variant-seedSEED#g; s#runs/selector/synthav#$ROOT/synthav#"
           -e "s#^  train_mode: .*#  train_mode: $mode#; s#^  lr: .*#  lr: $lr#")
    lines=""  # selector options, inserted after the config's `init: omnizip` in one edit
    kwargs=""
    for flag in ${flags//+/ }; do
        if [[ $flag == rank* && $base != untrained ]]; then
            edits+=(-e "s#^  importance_weight: .*#  importance_weight: ${flag#rank}#")
        elif [[ $flag == policy* && $base != untrained ]]; then  # after importance_weight, replacing any of its own
            edits+=(-e "/^  policy_weight: /d" -e "/^  importance_weight: /a\\  policy_weight: ${flag#policy}")
        elif [[ $flag == ptemp* && $base != untrained ]]; then
            edits+=(-e "/^  policy_temperature: /d" -e "/^  importance_weight: /a\\  policy_temperature: ${flag#ptemp}")
        elif [[ $flag == cap* && $base != untrained ]]; then
            edits+=(-e "/^  policy_reward_cap: /d" -e "/^  importance_weight: /a\\  policy_reward_cap: ${flag#cap}")
        elif [[ $flag == split* && $base != untrained ]]; then
            edits+=(-e "/^  policy_split_noise: /d" -e "/^  importance_weight: /a\\  policy_split_noise: ${flag#split}")
            lines+="\n    budget_split: learned"
            edits+=(-e "/^    budget_split: /d")
        elif option=$(selector_option "$flag"); then
            read -r key yaml_value py_value <<< "$option"
            lines+="\n    $key: $yaml_value"
            edits+=(-e "/^    $key: /d")  # the config's own setting of it, if any
            kwargs+="$key=$py_value, "
        else
            echo "unknown variant flag '$flag' in $variant (rankW, policyW, ptempT, capP, splitS, noguide, nores, spatial, temporal, mixed, chunk, clip)" >&2; exit 2
        fi
    done
    if [ "$base" = untrained ]; then
        fresh_selector "$ROOT/selectors/$variant" "$kwargs"
        $EVAL --methods omnisift --selector "$ROOT/selectors/$variant" --out "$ROOT/eval/$variant"
        continue
    fi
    [ -n "$lines" ] && edits+=(-e "s#^    init: omnizip\$#&$lines#")
    for seed in $SEEDS; do
        run="$variant-seed$seed"
        sed "${edits[@]}" -e "s#seedSEED#seed$seed#g; s#^seed_everything: .*#seed_everything: $seed#" "$CONFIG" > "$ROOT/$run.yaml"
        rm -rf "${ROOT:?}/$run"
        start=$SECONDS
        heavy $PY -m train fit --config "$ROOT/$run.yaml" > "$ROOT/$run.log" 2>&1
        echo "$run: trained in $((SECONDS - start)) s"
        heavy $PY -m train export "$ROOT/$run/checkpoints/last.ckpt" "$ROOT/selectors/$run" >> "$ROOT/$run.log" 2>&1
        $EVAL --methods omnisift --selector "$ROOT/selectors/$run" --out "$ROOT/eval/$run"
    done
done
if [ ! -f "$ROOT/eval/free/results.json" ]; then
    $EVAL --methods none random omnizip stvp dycoke omniselect omnisift --selector "$ROOT/untrained" --out "$ROOT/eval/free"
fi
heavy $PY benchmarks/selector_training_table.py "$ROOT/eval" "$OUT" --title "Trained selectors on a held-out SynthAV v$SYNTHAV_VERSION split (accuracy %)"
