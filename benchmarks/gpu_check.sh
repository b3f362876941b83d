#!/usr/bin/env bash
# One-shot GPU verification: run by hand, the first time a machine with one CUDA GPU is lent. Within about 8
# minutes it installs the pinned stack (constraints.txt, via `make install`) if .venv is missing, then runs four
# parts, each timed and bounded by its own timeout; a part that fails is recorded and the script goes on:
#
#   1. bench      `sift bench --random-init 7b`: all 28 layers, the real vocabulary, bf16, sdpa, 30 s and 60 s of
#                 input, full tokens and every method at 25% and 35%: LLM prefill speedup, TTFT, selection time as
#                 a share of the full prefill, CUDA peak memory, next to Eq. 9's FLOPs ratio.
#   2. selection  `benchmarks/selection_speed.py --device cuda` (60 s input, 7B width; and the Qwen3-Omni input).
#   3. train      DeepSpeed ZeRO-2, bf16: 20 steps of the selector in front of the tiny model (the module's torch
#                 AdamW: nothing to compile), then `python -m train export` and a reload into `sift.compress`.
#   4. train-step `benchmarks/train_step.py` at 7B dims with 4 layers: step time and peak memory per training mode.
#
# Everything goes to OUT (default benchmarks/results/gpu_check/): one log per part, the parts' own result files,
# env.txt (GPU name, driver, torch, transformers, CUDA) and summary.md (status and wall time of every part).
#
#   bash benchmarks/gpu_check.sh                   # on the GPU machine, from the repository root or anywhere
#   bash benchmarks/gpu_check.sh --dry-run         # CPU, tiny sizes: what CI runs so that this script does not rot
#   bash benchmarks/gpu_check.sh --out DIR --only bench,selection
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=benchmarks/results/gpu_check
DRY=0
ONLY=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --out) OUT="$2"; shift ;;
        --only) ONLY="$2"; shift ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
REPO=$(pwd)
SUMMARY="$OUT/summary.md"

if [ ! -x "$PY" ]; then
    echo "== installing the pinned stack (make install)"
    make install || { echo "gpu_check.sh: make install failed" >&2; exit 1; }
fi
PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"  # absolute: part 3 runs in its own folder

# ---------------------------------------------------------------------------------------------- environment
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "mode: $([ $DRY = 1 ] && echo 'dry run (CPU, tiny sizes)' || echo 'GPU')"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | sed 's/^/gpu: /'
    else
        echo "gpu: none (nvidia-smi not found)"
    fi
    "$PY" -c "import torch, transformers; print('torch:', torch.__version__, '| CUDA', torch.version.cuda, '| available', torch.cuda.is_available()); print('transformers:', transformers.__version__)"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
if [ $DRY = 0 ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check.sh: no CUDA GPU visible to torch (use --dry-run on a CPU machine)" >&2
    exit 1
fi

{
    echo "# GPU check ($([ $DRY = 1 ] && echo 'dry run' || echo "$(grep '^gpu:' "$OUT/env.txt" | head -1 | cut -c6-)"))"
    echo
    echo '```'
    cat "$OUT/env.txt"
    echo '```'
    echo
    echo "| part | status | wall s | limit s | log |"
    echo "|---|---|---|---|---|"
} > "$SUMMARY"

# part NAME LIMIT_S COMMAND...: run it with a timeout, log its output, record status and wall time, go on.
FAILED=0
part() {
    local name=$1 limit=$2
    shift 2
    if [ -n "$ONLY" ] && [[ ",$ONLY," != *",$name,"* ]]; then
        return 0
    fi
    echo "== $name (limit ${limit} s)"
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    local wall=$((SECONDS - start)) status=ok
    if [ $rc = 124 ] || [ $rc = 137 ]; then status="timed out"; elif [ $rc != 0 ]; then status="failed (exit $rc)"; fi
    [ "$status" = ok ] || FAILED=$((FAILED + 1))
    echo "| $name | $status | $wall | $limit | $name.log |" >> "$SUMMARY"
    echo "   $status in ${wall} s (log: $OUT/$name.log)"
    [ "$status" = ok ] || tail -n 15 "$OUT/$name.log"
}

# ---------------------------------------------------------------------------------------------- 1. bench
if [ $DRY = 1 ]; then
    part bench 300 "$PY" -m sift bench --random-init tiny --seconds 2 --methods random stvp --retentions 0.25 \
        --repeats 1 --warmup 0 --new-tokens 2 --patches 8 --device cpu --threads 1 --out "$OUT" --prefix bench_ --quiet
else
    part bench 300 "$PY" -m sift bench --random-init 7b --encoders real --seconds 30 60 --retentions 0.25 0.35 \
        --repeats 3 --warmup 1 --warmup-seconds 4 --new-tokens 16 --dtype bfloat16 --attn sdpa --device cuda \
        --out "$OUT" --prefix bench_cuda_7b_ --quiet
fi

# ---------------------------------------------------------------------------------------------- 2. selection
if [ $DRY = 1 ]; then
    part selection 120 "$PY" benchmarks/selection_speed.py --seconds 4 --repeats 1 --methods random stvp \
        --retentions 0.25 --no-prefill --no-single-thread --device cpu --out "$OUT"
else
    part selection 120 bash -c "'$PY' benchmarks/selection_speed.py --seconds 60 --device cuda --out '$OUT' && \
        '$PY' benchmarks/selection_speed.py --model qwen3-30b-a3b --seconds 60 --device cuda --out '$OUT'"
fi

# ---------------------------------------------------------------------------------------------- 3. train
# The selector in front of the tiny model on a generated SynthAV split, then export and reload. GPU: DeepSpeed
# ZeRO-2 in bf16, 20 steps. Dry run: the same config on CPU (DeepSpeed needs CUDA), 2 steps.
TRAIN="$OUT/train"
RELOAD='
import sys, torch, sift
from sift.testbed.media import synth_clip
from sift.testbed.tiny import omni_inputs, tiny_processor, tiny_thinker, tiny_thinker_config

selector = sift.OmniSIFTSelector.from_pretrained(sys.argv[1]).eval()
processor = tiny_processor()
model = tiny_thinker(tiny_thinker_config(processor.tokenizer))
inputs = omni_inputs(processor, [synth_clip(4.0)], ["What moves?"])
with torch.no_grad(), sift.compress(model, "omnisift", retention=0.35, selector=selector) as session:
    model.generate(**inputs, max_new_tokens=2, do_sample=False)
n = sum(p.numel() for p in selector.parameters())
print(f"reloaded the exported selector ({n} parameters) into sift.compress: retention {session.stats.retention:.3f}")
'
train_part() {
    set -e
    rm -rf "$TRAIN" && mkdir -p "$TRAIN"
    "$PY" -m sift synthav "$TRAIN/data" --version 1 --train 4 --min-seconds 4 --max-seconds 4 --workers 1
    local trainer=(--trainer.accelerator gpu --trainer.devices 1 --trainer.strategy deepspeed_stage_2
                   --trainer.precision bf16-mixed --trainer.max_steps 20)
    if [ "$DRY" = 1 ]; then trainer=(--trainer.accelerator cpu --trainer.max_steps 2); fi
    cd "$TRAIN"
    PYTHONPATH="$REPO" "$PY" -m train fit --config "$REPO/configs/tiny-cpu.yaml" --data.train_manifest data/train.jsonl \
        "${trainer[@]}"
    PYTHONPATH="$REPO" "$PY" -m train export runs/tiny-cpu/checkpoints/last.ckpt selector
    PYTHONPATH="$REPO" "$PY" -c "$RELOAD" selector
}
export -f train_part
export DRY PY REPO TRAIN RELOAD
part train 240 bash -c train_part

# ---------------------------------------------------------------------------------------------- 4. train-step
if [ $DRY = 1 ]; then
    part train-step 180 "$PY" benchmarks/train_step.py --models tiny --seconds 2 --repeats 1 --warmup 0 --device cpu \
        --out "$OUT" --quiet
else
    part train-step 180 "$PY" benchmarks/train_step.py --models 7b --layers 4 --seconds 30 --repeats 3 --warmup 1 \
        --warmup-seconds 4 --device cuda --dtype bfloat16 --out "$OUT"
fi

echo >> "$SUMMARY"
echo "Result files: $(cd "$OUT" && ls | grep -v '\.log$' | tr '\n' ' ')" >> "$SUMMARY"
echo "== gpu_check done: $FAILED part(s) failed; $SUMMARY"
cat "$SUMMARY"
exit $(( FAILED > 0 ))
