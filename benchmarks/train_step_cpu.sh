#!/usr/bin/env bash
# benchmarks/train_step.py on a small CPU (the project's 2-vCPU, 24 GB CI-class machine): the exact command
# behind benchmarks/results/train_step_cpu.md and .json. One training step (forward with labels + backward) of
# the OmniSIFT selector in front of the frozen thinker, in sift.compress's "shrink" and "mask" modes, each also
# with importance distillation ("+rank"), next to the frozen model's own full-token forward + backward ("full"),
# at retention 0.25:
#
# 1. the tiny test model on a 10 s synthetic clip (1 torch thread: thousands of tiny ops);
# 2. Qwen2.5-Omni-7B's LLM dims (hidden 3584, 28 heads, 4 kv heads, FFN 18944, the real 152k vocabulary) with
#    2 of its 28 decoder layers built, random weights, sift.testbed.tiny's encoders, on 10 s of synthetic 2 fps video
#    + audio at the papers' rates (288 video + 50 audio tokens per 2 s window: 1690 media tokens), float32.
#
# Median of 2 steps per mode, modes interleaved, after one warm-up round on a 2 s clip. About 20 minutes on a
# shared 2-vCPU machine (a full-token 7B-dims step with the real vocabulary takes ~2 minutes there; lm_head and
# the loss over all positions are a large part of it). Times and memory are for the 2 layers built, NOT scaled
# to 28. On a GPU node:
#   python benchmarks/train_step.py --device cuda --layers 28 --seconds 30 --out benchmarks/results
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}

$PY benchmarks/train_step.py --models tiny 7b --seconds 10 --layers 2 --retention 0.25 --repeats 2 --warmup 1 \
    --warmup-seconds 2 --device cpu --dtype float32 --out benchmarks/results "$@"
