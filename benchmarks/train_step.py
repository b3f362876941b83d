"""Training-step cost of the learned OmniSIFT selector in front of a frozen Qwen2.5-Omni thinker.

Why it exists: ``sift.compress(..., mode="mask")`` (:mod:`sift.masked_attention`) gives every media token a
gradient, dropped ones included, by running the FULL sequence through the language model with every attention
key weighted by its straight-through keep gate; ``mode="shrink"`` (the published method, and inference) drops
the tokens and so trains on the kept ones only. This benchmark puts numbers on what each costs per training
step, next to the frozen model's own forward + backward on all tokens, so that the choice of training mode
(and of clip length / GPU) is made on measurements. It is a benchmark, not a test: nothing here asserts.

One step, per mode, on the same inputs (labels on the last 8 input positions, ``use_cache=False``; the
thinker is frozen with ``requires_grad_(False)`` and in eval mode; the selector is in ``.train()``):

* ``shrink``: ``sift.compress(model, OmniSIFT(retention=r, selector=selector), mode="shrink")``, forward with
  labels, ``loss.backward()``. The gradient reaches only the selector, through the gates on the kept
  embeddings; the LLM runs and back-propagates on the kept sequence (about r of the media + the text).
* ``mask``: the same with ``mode="mask"``: the LLM runs on all L tokens and every attention layer uses sift's
  eager-style masked attention in float32, whatever ``--attn`` says: (heads, L, L) float32 weights per layer,
  several of them kept for the backward, so expect memory ~ L^2 per layer (and per layer built: x 28 / K
  for the real depth).
* ``shrink+rank`` / ``mask+rank``: the mode plus importance distillation (:mod:`train.importance`): first the
  teacher, the frozen model on all tokens through masked attention with every gate at 1, forward + backward to
  the gates (counted in the forward time), then the mode's step with the listwise ranking loss added.
  ``shrink+rank`` is what ``configs/synthav-v2-selector.yaml`` trains with.
* ``shrink+policy``: shrink plus the set-level policy gradient (:mod:`train.policy`): after the step's forward,
  ``--policy-samples`` keep sets drawn from the selector's scores, each a compressed forward of the frozen
  model without gradient (counted in the forward time), and the REINFORCE term added to the loss. It is what
  ``configs/synthav-v2-selector-policy.yaml`` trains with.
* ``full``: no sift. The frozen model on all tokens, forward with labels + backward, with the gradient flowing
  to the input-embedding output only (a forward hook on ``get_input_embeddings()`` turns its output into a leaf
  that requires grad), so the backward runs through the whole LLM as in the other two: the reference cost of
  a full-token forward + backward.

What the numbers mean:

* step s: wall time of forward (encoders, selection, LLM, lm_head, loss) + backward; median of ``--repeats``
  steps after ``--warmup`` untimed rounds (on a ``--warmup-seconds`` clip if given), the modes
  interleaved in every round so that slow drifts of a shared machine hit each mode alike. Forward and backward
  medians are given too. ``tiny`` runs on ``--tiny-threads`` (1) torch threads: it is thousands of tiny ops,
  and with more threads than free cores (a shared 2-core machine) their timings jump tenfold.
* peak memory: how much memory the step needed on top of what was in use before it (weights, inputs), the
  largest over the repeats. CPU: the process's peak resident set during the step (``VmHWM`` of
  /proc/self/status, reset to the current RSS through /proc/self/clear_refs just before) minus the resident
  set before it (taken after ``gc.collect()`` and glibc ``malloc_trim(0)``, so freed memory the allocator still
  held is not counted as in use). It counts everything the step touched: activations, logits, gradients,
  temporaries, allocator slack. CUDA: ``torch.cuda.max_memory_allocated`` (peak stats reset before the
  step) minus ``torch.cuda.memory_allocated`` before it.
* saved for backward: bytes of the distinct tensor storages autograd keeps from the forward for the backward
  (``torch.autograd.graph.saved_tensors_hooks``), parameters and buffers left out. Exact and machine
  independent: the activation part of the peak, where the modes differ most.
* time / full and memory / full: the mode's step time and peak memory over ``full``'s.

Models (``--models``): ``tiny`` is :func:`sift.testbed.tiny.tiny_thinker` on :func:`sift.testbed.tiny.omni_inputs` of a
:func:`sift.testbed.media.synth_clip` of ``--seconds`` (112x112 at 2 fps: 16 video tokens per temporal grid + 25
audio tokens per second); its numbers are per-op overhead, not GEMMs. ``7b`` has Qwen2.5-Omni-7B's LLM dims
(hidden 3584, 28 heads, 4 kv heads, FFN 18944, the real 152,064-token vocabulary unless ``--vocab-size``)
with only ``--layers`` decoder layers (times and memory are NOT scaled to 28 layers), random weights and
``sift.testbed.tiny``'s encoders projecting to 3584 (the step is about the LLM; the encoders cost next to nothing),
on :func:`sift.apps.bench.synthetic_inputs`: ``--seconds`` of 2 fps video with its audio at the papers' rates,
288 video + 50 audio tokens per 2 s window, the processor's own interleaving, random pixels and mel features
through the real encoder / scatter / 3D-rope code path. The thinker computes logits at every position (it has
no ``logits_to_keep``), so with the real vocabulary lm_head and the loss are a large part of full and mask.

Run:  .venv/bin/python benchmarks/train_step.py [--models tiny 7b] [--seconds 10] [--layers 2] [--device cpu]
Writes ``<out>/train_step_<device>.md`` and ``.json`` (default out: benchmarks/results); see train_step_cpu.sh.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # run as a script from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sift  # noqa: E402
from sift.apps.bench import synthetic_inputs  # noqa: E402
from sift.apps.runtime import PeakMemory, machine_info  # noqa: E402
from sift.compressors.omnisift import OmniSIFT  # noqa: E402
from sift.flops import QWEN25_OMNI_7B  # noqa: E402
from sift.models import adapter_for  # noqa: E402
from sift.testbed.media import synth_clip  # noqa: E402
from sift.testbed.random_models import omni_thinker_config, random_thinker  # noqa: E402
from sift.testbed.tiny import omni_inputs, tiny_processor, tiny_thinker, tiny_thinker_config, tiny_tokenizer  # noqa: E402
from train.importance import gate_importance, ranking_loss, selection_groups  # noqa: E402
from train.policy import POLICY_TEMPERATURE, step_policy_loss  # noqa: E402

MODES = ("full", "shrink", "shrink+rank", "shrink+policy", "mask", "mask+rank")
MODELS = ("tiny", "7b")
LABELED_TOKENS = 8  # labels on the last positions of the input; logits (and lm_head) cover every position anyway
QUESTION = "What is the person saying while the dog jumps?"
MiB = 2**20


# ----------------------------------------------------------------------------------------------- models
@dataclass
class Case:
    """A frozen model, its timed (and warm-up) inputs with labels, and the selector every sift mode trains."""

    name: str
    model: torch.nn.Module
    batch: tuple[dict[str, Any], torch.Tensor]  # (inputs, labels) of the timed steps
    warm_batch: tuple[dict[str, Any], torch.Tensor]  # of the warm-up steps (the timed ones unless --warmup-seconds)
    selector: sift.OmniSIFTSelector
    info: dict[str, Any]


def model_batch(inputs: dict[str, Any], device: torch.device, dtype: torch.dtype) -> tuple[dict[str, Any], torch.Tensor]:
    """(inputs on the device, floating ones in the model's dtype; labels on the last LABELED_TOKENS positions)."""
    out = {}
    for key, value in dict(inputs).items():
        if torch.is_tensor(value):
            value = value.to(device, dtype) if value.is_floating_point() else value.to(device)
        out[key] = value
    labels = out["input_ids"].clone()
    labels[:, :-LABELED_TOKENS] = -100
    return out, labels


def clip_inputs(name: str, processor: Any, seconds: int, seed: int, dtype: torch.dtype) -> dict[str, Any]:
    """``tiny``: the processor on a synthetic clip; ``7b``: 7B-rate synthetic inputs without media decoding."""
    if name == "tiny":
        return dict(omni_inputs(processor, [synth_clip(float(seconds), seed=seed)], [QUESTION]))
    return synthetic_inputs(processor, seconds, seed=seed, dtype=dtype)


def build_model(name: str, tok: Any, args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> tuple[Any, dict[str, Any]]:
    """The tiny thinker, or a random-weight thinker at Qwen2.5-Omni-7B's LLM dims with ``--layers`` layers."""
    if name == "tiny":
        config = tiny_thinker_config(tok)
        model = tiny_thinker(config, seed=args.seed, attn_implementation=args.attn, dtype=dtype).to(device)
        desc = dict(model="tiny (sift.testbed.tiny)", encoders="tiny", inputs=f"synth_clip({args.seconds} s) via omni_inputs")
    else:
        config = omni_thinker_config("7b", layers=args.layers, encoders="tiny", vocab_size=args.vocab_size,
                                     tokenizer=tok, attn_implementation=args.attn)
        model = random_thinker(config, device=device, dtype=dtype, seed=args.seed)
        desc = dict(model=f"7B dims, {args.layers} of {QWEN25_OMNI_7B['text']['num_hidden_layers']} decoder layers",
                    encoders="tiny (sift.testbed.tiny's, projecting to 3584)",
                    inputs=f"sift.apps.bench.synthetic_inputs({args.seconds} s, 24x24 patches)")
    text = config.text_config
    desc.update(layers=text.num_hidden_layers, hidden=text.hidden_size, ffn=text.intermediate_size,
                heads=text.num_attention_heads, kv_heads=text.num_key_value_heads, vocab_size=text.vocab_size)
    return model, desc


def build_case(name: str, args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> Case:
    """Frozen model (``requires_grad_(False)``, eval), inputs, labels and a fresh selector in training mode."""
    tok = tiny_tokenizer()
    processor = tiny_processor(tok)
    model, info = build_model(name, tok, args, device, dtype)
    model.requires_grad_(False)
    model.eval()
    batch = model_batch(clip_inputs(name, processor, args.seconds, args.seed, dtype), device, dtype)
    warm_batch = batch
    if args.warmup and args.warmup_seconds and args.warmup_seconds != args.seconds:
        warm_batch = model_batch(clip_inputs(name, processor, args.warmup_seconds, args.seed, dtype), device, dtype)
    selector = sift.OmniSIFTSelector.from_config(model.config).to(device).train()  # float32, like trainable weights
    ids, cfg = batch[0]["input_ids"], model.config
    info.update(
        seq_len=int(ids.shape[1]),
        video_tokens=int((ids == cfg.video_token_id).sum()),
        audio_tokens=int((ids == cfg.audio_token_id).sum()),
        selector_params=sum(p.numel() for p in selector.parameters()),
        model_params=sum(p.numel() for p in model.parameters()),
    )
    return Case(name=name, model=model, batch=batch, warm_batch=warm_batch, selector=selector, info=info)


# ----------------------------------------------------------------------------------------------- memory
def memory_kind(memory: PeakMemory) -> str:
    """What `peak_mem_bytes` measures, for the results file."""
    if memory.device.type == "cuda":
        return "torch.cuda.max_memory_allocated during the step minus memory_allocated before it"
    if memory.resettable:
        return ("peak RSS during the step (VmHWM, reset via /proc/self/clear_refs) minus RSS before it "
                "(after gc.collect and malloc_trim)")
    return "peak RSS since process start (VmHWM; /proc/self/clear_refs not writable) minus RSS before the step"


class SavedTensors:
    """Bytes of the distinct tensor storages autograd saves for the backward, parameters and buffers left out."""

    def __init__(self, *modules: torch.nn.Module):
        tensors = [t for m in modules for t in (*m.parameters(), *m.buffers())]
        self.skip = {t.untyped_storage().data_ptr() for t in tensors}
        self.storages: dict[int, int] = {}

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.layout == torch.strided:
            storage = tensor.untyped_storage()
            ptr = storage.data_ptr()
            if ptr and ptr not in self.skip:  # saved tensors stay alive until the backward: pointers are unique
                self.storages[ptr] = storage.nbytes()
        return tensor

    def __enter__(self) -> "SavedTensors":
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._hooks.__exit__(*exc)

    @property
    def bytes(self) -> int:
        return sum(self.storages.values())


# ----------------------------------------------------------------------------------------------- one step
def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


@contextlib.contextmanager
def input_embeds_leaf(model: torch.nn.Module, leaves: list[torch.Tensor]) -> Iterator[None]:
    """The input embeddings' output becomes a leaf that requires grad: backward runs through the whole LLM."""

    def hook(module: torch.nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        leaf = output.detach().requires_grad_(True)
        leaves.append(leaf)
        return leaf

    handle = model.get_input_embeddings().register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def llm_tokens(model: torch.nn.Module, tokens: list[int]) -> Iterator[None]:
    """Record the sequence length the language model receives; enter it inside ``sift.compress`` (after its hook)."""

    def hook(module: torch.nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        tokens.append(int(kwargs["inputs_embeds"].shape[1]))

    handle = adapter_for(model).language_model(model).register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def train_step(case: Case, mode: str, retention: float, device: torch.device, warm: bool = False,
               policy_samples: int = 4) -> dict[str, Any]:
    """One forward with labels + backward in ``mode``: seconds, LLM tokens, loss and gradient norm."""
    inputs, labels = case.warm_batch if warm else case.batch
    case.selector.zero_grad(set_to_none=True)
    leaves: list[torch.Tensor] = []
    tokens: list[int] = []
    with contextlib.ExitStack() as stack:
        t0 = _now(device)
        importance = gate_importance(case.model, inputs, labels) if mode.endswith("+rank") else None
        compressor = OmniSIFT(retention=retention, selector=case.selector)
        if mode == "full":
            stack.enter_context(input_embeds_leaf(case.model, leaves))
        else:
            session = stack.enter_context(sift.compress(case.model, compressor, mode=mode.split("+")[0]))
        stack.enter_context(llm_tokens(case.model, tokens))  # after sift's hook: the tokens the LLM runs on
        out = case.model(**inputs, labels=labels, use_cache=False)
        loss = out.loss
        if importance is not None:
            groups = selection_groups(session.layout, compressor.audio_rule)
            loss = loss + ranking_loss(session.selection.scores, importance, groups)
    if mode.endswith("+policy"):  # the rollouts are sift.compress sessions of their own
        loss = loss + step_policy_loss(case.model, compressor, session, out.logits, inputs, labels, policy_samples,
                                       POLICY_TEMPERATURE)
    t1 = _now(device)
    loss.backward()
    t2 = _now(device)
    grads = [t.grad for t in leaves] if mode == "full" else [p.grad for p in case.selector.parameters()]
    grads = [g.float() for g in grads if g is not None]
    grad_norm = float(torch.sqrt(sum((g * g).sum() for g in grads))) if grads else 0.0
    del out
    return dict(forward_s=t1 - t0, backward_s=t2 - t1, step_s=t2 - t0, llm_tokens=tokens[0], loss=float(loss.detach()),
                grad_norm=grad_norm)


def measure(case: Case, mode: str, retention: float, device: torch.device, warm: bool = False,
            policy_samples: int = 4) -> dict[str, Any]:
    """A training step with its peak memory growth and the bytes autograd saved for its backward."""
    with PeakMemory(device, trim=True) as memory:
        with SavedTensors(case.model, case.selector) as saved:
            sample = train_step(case, mode, retention, device, warm, policy_samples)
    sample.update(peak_mem_bytes=memory.peak_bytes, saved_bytes=saved.bytes, memory_kind=memory_kind(memory))
    return sample


# ----------------------------------------------------------------------------------------------- runs
def run_case(case: Case, args: argparse.Namespace, device: torch.device, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """``--warmup`` + ``--repeats`` rounds over the modes (interleaved); one summary row per mode."""
    samples: dict[str, list[dict[str, Any]]] = {mode: [] for mode in args.modes}
    rounds = args.warmup + args.repeats
    for round_ in range(rounds):
        timed = round_ >= args.warmup
        for mode in args.modes:
            s = measure(case, mode, args.retention, device, warm=not timed, policy_samples=args.policy_samples)
            if timed:
                samples[mode].append(s)
            which = f"run {round_ - args.warmup + 1}/{args.repeats}" if timed else f"warm-up {round_ + 1}/{args.warmup}"
            log(f"[train_step] {case.name} {mode:6s} {which}: step {s['step_s']:.2f} s (forward {s['forward_s']:.2f} + "
                f"backward {s['backward_s']:.2f}), {s['llm_tokens']} LLM tokens, peak +{s['peak_mem_bytes'] / MiB:.0f} MiB, "
                f"saved {s['saved_bytes'] / MiB:.0f} MiB, loss {s['loss']:.3f}, grad norm {s['grad_norm']:.3g}")
    return summarise(case, samples)


def summarise(case: Case, samples: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    rows = []
    for mode in samples:
        ss = samples[mode]
        med = lambda key: statistics.median(s[key] for s in ss)  # noqa: E731
        rows.append(dict(
            model=case.name, mode=mode, llm_tokens=ss[0]["llm_tokens"], step_s=med("step_s"), forward_s=med("forward_s"),
            backward_s=med("backward_s"), peak_mem_bytes=max(s["peak_mem_bytes"] for s in ss),
            saved_bytes=max(s["saved_bytes"] for s in ss), loss=ss[0]["loss"], grad_norm=ss[0]["grad_norm"],
            step_times_s=[s["step_s"] for s in ss], peak_mem_all_bytes=[s["peak_mem_bytes"] for s in ss],
        ))
    full = rows[0]
    for row in rows:
        row["time_ratio"] = row["step_s"] / full["step_s"] if full["step_s"] > 0 else float("nan")
        row["memory_ratio"] = row["peak_mem_bytes"] / full["peak_mem_bytes"] if full["peak_mem_bytes"] > 0 else float("nan")
    return rows


# ----------------------------------------------------------------------------------------------- report
def markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [
        f"# Training step: OmniSIFT selector in front of a frozen Qwen2.5-Omni thinker ({result['device']}, {result['dtype']})",
        "",
        f"Retention {s['retention']:g}; step = forward with labels + backward; median of {s['repeats']} step(s) after "
        f"{s['warmup']} warm-up round(s)" + (f" on a {s['warmup_seconds']} s clip" if s.get("warmup_seconds") else "")
        + f", the modes interleaved; `{s['attn']}` attention in full and shrink "
        "(mask: sift's eager-style float32 masked attention).",
        "",
        "| model | mode | tokens in the LLM | step s (median) | forward s | backward s | peak memory MiB | "
        "saved for backward MiB | time / full | memory / full |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['model']} | {r['mode']} | {r['llm_tokens']} | {r['step_s']:.3f} | {r['forward_s']:.3f} | "
            f"{r['backward_s']:.3f} | {r['peak_mem_bytes'] / MiB:.0f} | {r['saved_bytes'] / MiB:.0f} | "
            f"{r['time_ratio']:.2f} | {r['memory_ratio']:.2f} |"
        )
    lines += ["", "Models:", ""]
    for m in result["models"]:
        lines.append(
            f"- `{m['name']}`: {m['model']}, hidden {m['hidden']}, vocabulary {m['vocab_size']}, encoders {m['encoders']}; "
            f"inputs {m['inputs']}: {m['video_tokens']} video + {m['audio_tokens']} audio tokens, sequence {m['seq_len']}; "
            f"selector {m['selector_params']:,} parameters (the only ones with a gradient in shrink/mask); "
            f"{m['torch_threads']} torch thread(s)."
        )
    lines += ["", *notes(result), ""]
    return "\n".join(lines)


def notes(result: dict[str, Any]) -> list[str]:
    info = result["machine"]
    load_start, load_end = info.get("loadavg_start"), info.get("loadavg_end")
    gpu = f", {info['gpu']}" if info.get("gpu") else ""
    return [
        "tokens in the LLM: the sequence length the language model runs on (shrink: kept media + text; mask and "
        "full: every token, mask attends only to the kept ones). step s: forward (encoders, selection, LLM, "
        "lm_head, loss) + backward, wall clock (forward and backward are medians of their own, so they need not add "
        "up to the step). full: the frozen model on all tokens with the gradient flowing to the input-embedding "
        "output only, so its backward runs through the whole LLM like the other two.",
        *attention_notes(result),
        f"Peak memory: {result['memory_kind']}; the largest over the repeats; weights and inputs are not in it. "
        "Saved for backward: distinct tensor storages autograd keeps for the backward (saved_tensors_hooks), "
        "parameters excluded: exact, independent of the machine.",
        "Layers are NOT scaled: with K of 28 decoder layers built, the LLM part of time and memory grows about "
        "x 28 / K at full depth, lm_head and loss (logits at every position) do not.",
        f"Machine: {info.get('cpu_model')}{gpu}, nproc {info.get('nproc')} ({info.get('cpus_usable')} usable), "
        f"torch {info.get('torch_version')} (default {info.get('torch_threads')} threads), transformers "
        f"{info.get('transformers_version')}; load average (1/5/15 min) at start {load_start}, at end {load_end} "
        "(other jobs may have run alongside). "
        f"Wall time {result['wall_s']:.0f} s. Command: `{result['command']}`",
    ]


def attention_notes(result: dict[str, Any]) -> list[str]:
    """Mask mode's extra saved memory per decoder layer, in units of one (heads, L, L) float32 tensor."""
    lines, depth = [], QWEN25_OMNI_7B["text"]["num_hidden_layers"]
    for m in result["models"]:
        rows = {r["mode"]: r for r in result["rows"] if r["model"] == m["name"]}
        if "mask" not in rows:
            continue
        extra = (rows["mask"]["saved_bytes"] - rows["full"]["saved_bytes"]) / m["layers"]
        one = m["heads"] * m["seq_len"] ** 2 * 4
        lines.append(
            f"`{m['name']}` mask vs full: {extra / MiB:.0f} MiB more saved for backward per decoder layer, "
            f"{extra / one:.1f} x one ({m['heads']}, {m['seq_len']}, {m['seq_len']}) float32 attention tensor "
            f"({one / MiB:.0f} MiB): it grows with L^2 per layer"
            + (f"; at all {depth} layers that alone is ~{extra * depth / 2**30:.1f} GiB." if m["name"] == "7b" else ".")
        )
    return lines


# ----------------------------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS), help="which models (default both)")
    p.add_argument("--seconds", type=int, default=10, help="clip length in seconds (even; both models)")
    p.add_argument("--layers", type=int, default=2, help="7b: decoder layers built (of 28)")
    p.add_argument("--vocab-size", type=int, help="7b: embedding / lm_head rows (default: the real 152064)")
    p.add_argument("--retention", type=float, default=0.25, help="fraction of audio+video tokens kept")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES),
                   help="modes to time (default all; full always runs first: the ratios are to it)")
    p.add_argument("--policy-samples", type=int, default=4, help="shrink+policy: sampled selections per step")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per mode (median)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds over the modes first")
    p.add_argument("--warmup-seconds", type=int,
                   help="run the warm-up rounds on a clip this long (default: the timed one; a short clip warms "
                   "every code path cheaply when a 7B step takes minutes)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                   help="model dtype (auto: bfloat16 on CUDA, float32 on CPU); the selector stays float32")
    p.add_argument("--attn", default="sdpa", help="attention implementation of full and shrink (sdpa, eager, ...)")
    p.add_argument("--threads", type=int, help="torch CPU threads for 7b (default: torch's)")
    p.add_argument("--tiny-threads", type=int, default=1,
                   help="torch CPU threads for tiny (1: thousands of tiny ops; more threads than free cores makes "
                   "them erratic on a shared machine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"), help="output folder")
    p.add_argument("--quiet", action="store_true", help="no per-step log lines and no table on stdout")
    args = p.parse_args(argv)
    for flag, value in (("--seconds", args.seconds), ("--warmup-seconds", args.warmup_seconds)):
        if value is not None and (value < 2 or value % 2):
            p.error(f"{flag} must be an even number >= 2, got {value}")
    if not 1 <= args.layers <= QWEN25_OMNI_7B["text"]["num_hidden_layers"]:
        p.error(f"--layers must be in 1..28, got {args.layers}")
    if not 0.0 < args.retention < 1.0:
        p.error(f"--retention must be in (0, 1), got {args.retention}")
    args.modes = ["full", *(m for m in dict.fromkeys(args.modes) if m != "full")]
    if args.policy_samples < 1:
        p.error(f"--policy-samples must be >= 1, got {args.policy_samples}")
    if args.repeats < 1 or args.warmup < 0:
        p.error("--repeats must be >= 1 and --warmup >= 0")
    return args


def resolve(args: argparse.Namespace) -> tuple[torch.device, torch.dtype]:
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if args.dtype == "auto":
        return device, torch.bfloat16 if device.type == "cuda" else torch.float32
    return device, getattr(torch, args.dtype)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, write ``<out>/train_step_<device>.md`` and ``.json``; returns the results (with ``markdown``)."""
    args = parse_args(argv)
    device, dtype = resolve(args)
    threads = torch.get_num_threads()
    log = (lambda line: None) if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    t_start = time.perf_counter()
    info = dict(machine_info(device), nproc=os.cpu_count(), loadavg_start=[round(x, 2) for x in os.getloadavg()])
    rows, models, kind = [], [], memory_kind(PeakMemory(device))
    try:
        for name in args.models:
            n_threads = (args.tiny_threads if name == "tiny" else args.threads) or threads
            torch.set_num_threads(n_threads)
            log(f"[train_step] building {name} ({n_threads} torch threads) ...")
            case = build_case(name, args, device, dtype)
            models.append(dict(name=name, torch_threads=n_threads, **case.info))
            rows += run_case(case, args, device, log)
            del case
            gc.collect()
    finally:
        torch.set_num_threads(threads)
    info["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    result = dict(
        command=" ".join(["python benchmarks/train_step.py", *(sys.argv[1:] if argv is None else argv)]),
        device=device.type, dtype=str(dtype).replace("torch.", ""), memory_kind=kind, machine=info,
        settings=dict(models=args.models, seconds=args.seconds, layers=args.layers, vocab_size=args.vocab_size,
                      retention=args.retention, repeats=args.repeats, warmup=args.warmup,
                      modes=args.modes, policy_samples=args.policy_samples,
                      warmup_seconds=args.warmup_seconds, attn=args.attn, threads=args.threads,
                      tiny_threads=args.tiny_threads,
                      labeled_tokens=LABELED_TOKENS, seed=args.seed),
        models=models, rows=rows, wall_s=time.perf_counter() - t_start,
    )
    result["markdown"] = md = markdown(result)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"train_step_{device.type}"
    stem.with_suffix(".md").write_text(md)
    stem.with_suffix(".json").write_text(json.dumps({k: v for k, v in result.items() if k != "markdown"}, indent=2) + "\n")
    if not args.quiet:
        print(md)
        print(f"wrote {stem}.md and {stem}.json")
    return result


if __name__ == "__main__":
    main()
