#!/usr/bin/env bash
# `sift bench` on a small CPU (the project's 2-vCPU CI-class machine): the exact commands behind
# benchmarks/results/bench_cpu_*. Random weights (timing only), synthetic 2 fps video + audio at the papers'
# token rates (288 video + 50 audio tokens per 2 s window), every method at 25% and 35% retention, all in one
# process per model, interleaved runs, median of 3 after a warm-up round. About 1.5 + 14 minutes on a shared 2-vCPU machine.
#
# 1. The tiny test model (hidden 64, 2 layers) on 30 s and 60 s inputs: 1 torch thread, because this model is
#    thousands of tiny ops and a shared 2-core machine makes 2-thread timings of such ops erratic.
# 2. Qwen2.5-Omni-7B's LLM dims with ONE of its 28 decoder layers built (--layers 1; LLM prefill scaled x28,
#    time to first token and decode get 27 more copies of the measured LLM time), 30 s input, default threads.
#    A full 7B prefill of 5k tokens would take ~15 min per run on this CPU. Encoders are sift.testbed.tiny's
#    (projecting to 3584): their time is not representative on CPU. --vocab-size 4096 shrinks embedding and
#    lm_head: the stock thinker computes logits at EVERY prompt position (no logits_to_keep), which with the
#    real 152k vocabulary costs more than a decoder layer; TTFT here therefore leaves most of that out.
#    The warm-up round runs on a 4 s input (the timed runs take 10-40 s each).
#
# On a GPU node, the same with everything real (bf16, real encoder dims, all 28 layers, real vocabulary):
#   python -m sift bench --random-init 7b --seconds 30 60 120 --out benchmarks/results --prefix bench_cuda_7b_
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}

$PY -m sift bench --random-init tiny --seconds 30 60 --retentions 0.25 0.35 --repeats 3 --warmup 1 \
    --new-tokens 16 --threads 1 --out benchmarks/results --prefix bench_cpu_tiny_

$PY -m sift bench --random-init 7b --layers 1 --vocab-size 4096 --seconds 30 --retentions 0.25 0.35 \
    --repeats 3 --warmup 1 --warmup-seconds 4 --new-tokens 8 --out benchmarks/results --prefix bench_cpu_7b_layers1_

# 3. Qwen3-Omni-30B-A3B's decoder dims (48 MoE layers, 128 experts, 8 active), ONE layer built (LLM prefill
#    scaled x48), tiny encoders, 60 s input at Qwen3-Omni's rates (144 video tokens per 1 s grid, 13 audio
#    tokens per second), every method at 25%: the full-token prefill the selection times of
#    results/selection_speed_qwen3_cpu.md compare against. Median of 3 rounds (a few minutes).
$PY -m sift bench --random-init qwen3-30b-a3b --layers 1 --vocab-size 4096 --seconds 60 --retentions 0.25 \
    --repeats 3 --warmup 1 --warmup-seconds 4 --new-tokens 2 --out benchmarks/results --prefix bench_cpu_qwen3_30b_a3b_layers1_
