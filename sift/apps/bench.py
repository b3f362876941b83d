"""`sift bench`: end-to-end cost of a Qwen2.5-Omni thinker with and without sift's compressors.

What runs: the stock transformers thinker's own ``generate`` (greedy, ``--new-tokens`` tokens, ``min_new_tokens``
equal so that random weights cannot stop early), on synthetic inputs of S seconds of video with its audio
track at the papers' token rates, once without sift (``full``) and once inside ``sift.compress`` for every
method x retention, all in ONE process on the SAME inputs.

Inputs (the honest path): the real encoder / scatter / 3D-rope / LLM code path is used, not a shortcut.
``input_ids`` are what ``Qwen2_5OmniProcessor`` builds for S s of 2 fps video with ``use_audio_in_video``
(the processor's own ``replace_video_with_audio_token``; 24x24 patches per frame, so 144 merged tokens per
temporal grid: 288 video + 50 audio tokens per 2 s window, interleaved). ``pixel_values_videos`` and the
128-bin mel ``input_features`` are random tensors of the exact shapes the processor would produce
(``video_grid_thw = [S, 24, 24]``, 100 mel frames per second), so the vision and audio encoders really
run, their features are scattered in, ``get_rope_index`` runs on the full sequence, and sift's hooks drop
tokens before the language model exactly as on real data. Only the values are synthetic: timings of
dense kernels do not depend on them.

Models: ``--model PATH`` (a real checkpoint; ``--processor`` defaults to the same path) or
``--random-init 7b|3b|qwen3-30b-a3b|tiny``: random weights at Qwen2.5-Omni-7B's / -3B's real dims, at
Qwen3-Omni-30B-A3B's decoder dims (48 MoE layers, 128 experts, 8 active; tiny encoders) (:mod:`sift.flops`), or
the tiny test model. ``--encoders real`` builds the real audio (32 x 1280) and vision (32 x 1280) encoders;
``--encoders tiny`` keeps sift.testbed.tiny's encoders (projecting to the real hidden size: the LLM is real-sized,
the encoders cost next to nothing and their time is NOT representative); ``auto`` = real on CUDA, tiny on
CPU. ``--layers K`` builds only K of the 28 (7B) / 36 (3B) decoder layers, because a full 7B prefill on a
small CPU takes tens of minutes: the LLM prefill time (measured on the language model alone, by hooks) is
then multiplied by T/K, and time to first token and decode steps get (T/K - 1) extra copies of their
measured language-model time. Scaled and measured values are both in the JSON; the tables show scaled
ones. Embedding, final norm and lm_head are built in full; ``--vocab-size`` shrinks the vocabulary
(the thinker has no ``logits_to_keep``, so stock prefill computes logits at every prompt position: with
the real 152k vocabulary that is ~1.1 GFLOP per token at 7B, more than one decoder layer).

Measured per run (hooks on the thinker's modules, ``torch.cuda.synchronize`` in each on GPU):

- encoder time: audio tower + vision tower forward time (OmniZip / OmniSIFT add their audio-saliency hook here);
- selection time: ``session.stats.selection_time_s`` (the compressor's ``select`` plus re-indexing);
- LLM prefill: the language model's forward on the (kept) prompt, from after selection to its output;
- time to first token: from calling ``generate`` to the end of the first thinker forward (encoders,
  selection, LLM prefill, lm_head and generate's own overhead);
- decode tokens/s: (generated tokens - 1) / time from the first token to the end of ``generate``;
- peak memory: ``torch.cuda.max_memory_allocated`` (reset before each run) on GPU; on CPU the process's
  peak resident set (``VmHWM`` of /proc/self/status, reset before each run through /proc/self/clear_refs);
  both include the weights. The increase over the memory in use before the run is reported too;
- tokens: LLM prompt length, media tokens kept / total; FLOPs of the LLM by OmniZip's Eq. 9
  (:func:`sift.flops.flops`, at full depth, ``--flops-new-tokens`` R = 100) and their ratio to ``full``.

Order: after ``--warmup`` untimed rounds over all configurations, ``--repeats`` rounds each run every
configuration once (interleaved, so slow drifts of a shared machine hit every method alike); the median
of the repeats is reported. Prefill speedup = full LLM prefill / method LLM prefill (ideal 1/r).

Writes ``<out>/<prefix>results.json``, ``<prefix>results.md`` and ``<prefix>prefill.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

from sift.apps.evaluate import UsageError
from sift.apps.runtime import (
    PeakMemory,
    args_or_options,
    equivalent_command,
    progress_bar,
    loadavg,
    machine_info,
    resolve_device,
    resolve_dtype,
    torch_threads,
)
from sift.models import adapter_for

__all__ = ["run_bench", "bench_options", "synthetic_inputs", "qwen3_synthetic_inputs", "add_arguments"]

FPS = 2.0
TEMPORAL_PATCH = 2
POSITION_ID_PER_SECONDS = 25
SECONDS_PER_CHUNK = 2.0
AUDIO_TOKENS_PER_SECOND = 25
MEL_FRAMES_PER_SECOND = 100
QUESTION = "What is the person saying while the dog jumps?"
DEFAULT_RETENTIONS = (0.25, 0.35)


# ----------------------------------------------------------------------------------------------- inputs
def _chat_text(processor: Any, question: str) -> str:
    conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    renderer = processor if getattr(processor, "chat_template", None) else processor.tokenizer
    return renderer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)


def synthetic_inputs(
    processor: Any,
    seconds: int,
    *,
    patches: int = 24,
    question: str = QUESTION,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> dict[str, Any]:
    """Thinker inputs for ``seconds`` of 2 fps video with its audio track, as the processor lays them out.

    ``video_grid_thw = [seconds, patches, patches]`` (one temporal grid per second), ``second_per_grid`` 1.0,
    25 audio tokens per second; ``input_ids`` from ``processor.replace_video_with_audio_token`` spliced into
    the chat template; ``pixel_values_videos`` (seconds * patches^2, 3 * 2 * 14 * 14) and ``input_features``
    (1, 128, 100 * seconds) random (seeded). With ``patches=24``: 288 video + 50 audio tokens per 2 s window.
    """
    from sift.layout import audio_tokens_from_features

    seconds = int(seconds)
    if seconds < 2 or seconds % 2:
        raise ValueError(f"seconds must be an even number >= 2 (one temporal grid per second), got {seconds}")
    if patches % 2:
        raise ValueError(f"patches must be even (spatial merge 2), got {patches}")
    tok = processor.tokenizer
    vp = processor.video_processor
    patch, temporal, merge = int(vp.patch_size), int(vp.temporal_patch_size), int(vp.merge_size)
    grid = torch.tensor([[int(seconds * FPS / temporal), patches, patches]])
    second_per_grid = temporal / FPS
    n_audio = seconds * AUDIO_TOKENS_PER_SECOND
    n_mel = seconds * MEL_FRAMES_PER_SECOND
    assert int(audio_tokens_from_features(torch.tensor(n_mel))) == n_audio
    media = processor.replace_video_with_audio_token(
        {"video_grid_thw": grid, "video_second_per_grid": [second_per_grid]},
        0,
        {"num_audio_tokens": [n_audio]},
        0,
        position_id_per_seconds=POSITION_ID_PER_SECONDS,
        seconds_per_chunk=SECONDS_PER_CHUNK,
    )
    text = _chat_text(processor, question)
    placeholder = f"{tok.vision_bos_token}{tok.video_token}{tok.vision_eos_token}"
    if text.count(placeholder) != 1:
        raise ValueError(f"the chat template did not render one video placeholder {placeholder!r}: {text!r}")
    # The processor replaces <|VIDEO|> with <|audio_bos|>V A V A ...<|audio_eos|> inside the vision brackets.
    text = text.replace(placeholder, f"{tok.vision_bos_token}{media}{tok.vision_eos_token}")
    enc = tok(text, return_tensors="pt", add_special_tokens=False)
    g = torch.Generator().manual_seed(seed)
    n_patches = int(grid.prod())
    n_video = n_patches // (merge * merge)
    features = int(getattr(processor.feature_extractor, "feature_size", 128))
    ids = enc["input_ids"]
    if int((ids == tok.convert_tokens_to_ids(tok.video_token)).sum()) != n_video:
        raise RuntimeError("video token count does not match the grid")
    return dict(
        input_ids=ids,
        attention_mask=enc["attention_mask"],
        pixel_values_videos=torch.randn(n_patches, 3 * temporal * patch * patch, generator=g).to(dtype),
        video_grid_thw=grid,
        video_second_per_grid=torch.tensor([second_per_grid]),
        input_features=torch.randn(1, features, n_mel, generator=g).to(dtype),
        feature_attention_mask=torch.ones(1, n_mel, dtype=torch.long),
        use_audio_in_video=True,
    )


def qwen3_synthetic_inputs(
    processor: Any, seconds: int, *, patches: int = 24, question: str = QUESTION, seed: int = 0, dtype: torch.dtype = torch.float32
) -> dict[str, Any]:
    """Qwen3-Omni thinker inputs for ``seconds`` of 2 fps video with its audio track (13 audio tokens per second).

    Laid out by Qwen3-Omni's processor rule (:func:`sift.testbed.tiny_qwen3.qwen3_av_inputs`), the question's
    tokens after the clip; ``patches`` per frame side as in :func:`synthetic_inputs` (24: 144 tokens per grid).
    """
    from sift.testbed.tiny_qwen3 import qwen3_av_inputs, tiny_qwen3_thinker_config

    config = tiny_qwen3_thinker_config(processor.tokenizer)
    prompt = tuple(processor.tokenizer(question, add_special_tokens=False).input_ids)
    inputs = qwen3_av_inputs(config, seconds=int(seconds), fps=FPS, grid_hw=(patches, patches), prompt=prompt, seed=seed)
    for key in ("pixel_values_videos", "input_features"):
        inputs[key] = inputs[key].to(dtype)
    return inputs


# ----------------------------------------------------------------------------------------------- probes
class _Probe:
    """Forward hooks timing the encoders, the language model and each thinker call; enter it INSIDE
    ``sift.compress`` so that its language-model pre-hook runs after sift's selection."""

    def __init__(self, thinker: torch.nn.Module, device: torch.device):
        self.thinker, self.device = thinker, device
        self.handles: list[Any] = []

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def __enter__(self) -> "_Probe":
        self.encoder_s = {"audio": 0.0, "vision": 0.0}
        self.lm_calls: list[tuple[float, int]] = []  # (seconds, tokens in)
        self.thinker_ends: list[float] = []
        self._t: dict[str, float] = {}
        adapter = adapter_for(self.thinker)
        for name, module in (("audio", adapter.audio_tower(self.thinker)), ("vision", adapter.vision_tower(self.thinker))):
            self.handles.append(module.register_forward_pre_hook(partial(self._enc_start, name)))
            self.handles.append(module.register_forward_hook(partial(self._enc_stop, name)))
        lm = adapter.language_model(self.thinker)
        self.handles.append(lm.register_forward_pre_hook(self._lm_start, with_kwargs=True))
        self.handles.append(lm.register_forward_hook(self._lm_stop))
        self.handles.append(self.thinker.register_forward_hook(self._thinker_end))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def _enc_start(self, name: str, module: Any, args: Any) -> None:
        self._t[name] = self._now()

    def _enc_stop(self, name: str, module: Any, args: Any, output: Any) -> None:
        self.encoder_s[name] += self._now() - self._t.pop(name)

    def _lm_start(self, module: Any, args: Any, kwargs: dict) -> None:
        embeds = kwargs.get("inputs_embeds")
        self._lm_tokens = int(embeds.shape[1]) if embeds is not None else 0
        self._t["lm"] = self._now()

    def _lm_stop(self, module: Any, args: Any, output: Any) -> None:
        self.lm_calls.append((self._now() - self._t.pop("lm"), self._lm_tokens))

    def _thinker_end(self, module: Any, args: Any, output: Any) -> None:
        self.thinker_ends.append(self._now())


# ----------------------------------------------------------------------------------------------- runs
def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", help="thinker checkpoint folder (Qwen2_5OmniThinkerForConditionalGeneration / full Omni)")
    src.add_argument("--random-init", choices=("7b", "3b", "qwen3-30b-a3b", "tiny"),
                     help="random weights at these dims (timing only): Qwen2.5-Omni-7B / -3B, Qwen3-Omni-30B-A3B's decoder")
    p.add_argument("--processor", help="processor folder (default: --model, or sift.testbed.tiny's for --random-init)")
    p.add_argument("--layers", type=int, help="7b/3b: build only K decoder layers and scale LLM times by T/K")
    p.add_argument("--encoders", choices=("auto", "real", "tiny"), default="auto",
                   help="7b/3b: real encoder dims, or tiny ones (auto: real on CUDA, tiny on CPU)")
    p.add_argument("--vocab-size", type=int, help="7b/3b: embedding/lm_head rows (default: the real vocabulary)")
    p.add_argument("--seconds", type=int, nargs="+", default=[30, 60], help="input lengths to sweep (even)")
    p.add_argument("--methods", nargs="+", help="compressors (default: all registered but 'none')")
    p.add_argument("--retentions", type=float, nargs="+", default=list(DEFAULT_RETENTIONS))
    p.add_argument("--selector", help="omnisift checkpoint folder (default: a fresh untrained selector: same cost)")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds over all configurations (median)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds over all configurations first")
    p.add_argument("--warmup-seconds", type=int,
                   help="run the warm-up rounds on an input this long (default: the timed length; a short one "
                   "warms every method's code path cheaply when single runs take minutes)")
    p.add_argument("--new-tokens", type=int, default=16, help="tokens generated per run (greedy)")
    p.add_argument("--flops-new-tokens", type=int, default=100, help="R of the FLOPs formula (Eq. 9)")
    p.add_argument("--patches", type=int, default=24, help="patches per frame side (24: 144 tokens per grid)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    p.add_argument("--attn", default="sdpa", help="attention implementation (sdpa, eager, flash_attention_2)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench-results", help="output folder")
    p.add_argument("--prefix", default="", help="file name prefix: <out>/<prefix>results.json, ...")
    p.add_argument("--quiet", action="store_true", help="no progress bar / table on stdout")
    return p


def _build(args: Any, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any, Any, dict[str, Any]]:
    """(model, processor, FLOPs config at full depth, description)."""
    from sift.flops import SIZES
    from sift.testbed.random_models import omni_thinker_config, random_thinker
    from sift.testbed.tiny import tiny_processor, tiny_thinker_config, tiny_tokenizer

    if args.model is None and args.random_init is None:
        raise UsageError("give --model PATH or --random-init 7b|3b|qwen3-30b-a3b|tiny")
    if args.model is not None:
        if args.layers is not None or args.vocab_size is not None:
            raise UsageError("--layers / --vocab-size only apply to --random-init 7b|3b")
        from transformers import Qwen2_5OmniProcessor, Qwen2_5OmniThinkerForConditionalGeneration

        model = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(
            args.model, dtype=dtype, attn_implementation=args.attn
        ).to(device).eval()
        if args.processor == "tiny":
            processor = tiny_processor()
        else:
            processor = Qwen2_5OmniProcessor.from_pretrained(args.processor or args.model)
        desc = dict(model=args.model, layers_built=model.config.get_text_config().num_hidden_layers, encoders="checkpoint")
        return model, processor, model.config, desc
    if args.processor not in (None, "tiny"):
        raise UsageError("--random-init uses sift.testbed.tiny's processor (its token ids); drop --processor")
    if args.random_init == "qwen3-30b-a3b":
        return _build_qwen3(args, device, dtype)
    tok = tiny_tokenizer()
    processor = tiny_processor(tok)
    if args.random_init == "tiny":
        if args.layers is not None or args.vocab_size is not None or args.encoders == "real":
            raise UsageError("--layers / --vocab-size / --encoders real apply to --random-init 7b|3b only")
        config = tiny_thinker_config(tok, attn_implementation=args.attn)
        model = random_thinker(config, device=device, dtype=dtype, seed=args.seed)
        desc = dict(model="random-init tiny (sift.testbed.tiny dims)", layers_built=config.text_config.num_hidden_layers, encoders="tiny")
        return model, processor, config, desc
    encoders = args.encoders if args.encoders != "auto" else ("real" if device.type == "cuda" else "tiny")
    config = omni_thinker_config(
        args.random_init, layers=args.layers, encoders=encoders, vocab_size=args.vocab_size, tokenizer=tok,
        attn_implementation=args.attn,
    )
    model = random_thinker(config, device=device, dtype=dtype, seed=args.seed)
    full = SIZES[args.random_init]
    desc = dict(
        model=f"random-init Qwen2.5-Omni-{args.random_init.upper()} dims",
        layers_built=config.text_config.num_hidden_layers,
        layers_real=full["text"]["num_hidden_layers"],
        encoders=encoders,
        vocab_size=config.text_config.vocab_size,
    )
    return model, processor, full, desc


def _build_qwen3(args: Any, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any, Any, dict[str, Any]]:
    """Random weights at Qwen3-Omni-30B-A3B's decoder dims, tiny encoders (the real ones are not modelled here)."""
    from sift.flops import QWEN3_OMNI_30B_A3B
    from sift.testbed.random_models import qwen3_thinker_config, random_thinker
    from sift.testbed.tiny_qwen3 import tiny_qwen3_processor, tiny_qwen3_tokenizer

    if args.encoders == "real":
        raise UsageError("--random-init qwen3-30b-a3b builds tiny encoders only (--encoders auto or tiny)")
    tok = tiny_qwen3_tokenizer()
    config = qwen3_thinker_config(layers=args.layers, vocab_size=args.vocab_size, tokenizer=tok, attn_implementation=args.attn)
    model = random_thinker(config, device=device, dtype=dtype, seed=args.seed)
    desc = dict(
        model="random-init Qwen3-Omni-30B-A3B decoder dims",
        layers_built=config.text_config.num_hidden_layers,
        layers_real=QWEN3_OMNI_30B_A3B["text"]["num_hidden_layers"],
        encoders="tiny",
        vocab_size=config.text_config.vocab_size,
    )
    return model, tiny_qwen3_processor(tok), QWEN3_OMNI_30B_A3B, desc


def _compressor(name: str, retention: float, model: Any, selector: str | None) -> Any:
    import sift

    extra: dict[str, Any] = {}
    if name == "omnisift":
        if selector is not None:
            extra["selector"] = selector
        else:  # an untrained init="omnizip" selector: same architecture, same cost as a trained one
            extra["selector"] = sift.OmniSIFTSelector.from_config(model.config).eval()
    return sift.get_compressor(name, retention=retention, **extra)


def _run_once(model: Any, inputs: dict[str, Any], compressor: Any, new_tokens: int, device: torch.device, memory: PeakMemory) -> dict[str, Any]:
    import sift

    session_ctx = sift.compress(model, compressor) if compressor is not None else contextlib.nullcontext()
    memory.start()
    with torch.no_grad(), session_ctx as session, _Probe(model, device) as probe:
        t0 = probe._now()
        out = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        t1 = probe._now()
    peak, peak_delta = memory.stop()
    generated = int(out.shape[1] - inputs["input_ids"].shape[1])
    first = probe.thinker_ends[0]
    lm_prefill, prefill_tokens = probe.lm_calls[0]
    lm_decode = [s for s, _ in probe.lm_calls[1:]]
    stats = session.stats if session is not None else None
    row: dict[str, Any] = dict(
        encoder_s=probe.encoder_s["audio"] + probe.encoder_s["vision"],
        audio_encoder_s=probe.encoder_s["audio"],
        vision_encoder_s=probe.encoder_s["vision"],
        selection_s=stats.selection_time_s if stats is not None else 0.0,
        llm_prefill_s=lm_prefill,
        ttft_s=first - t0,
        decode_s=t1 - first,
        decode_steps=len(probe.thinker_ends) - 1,
        decode_llm_s=sum(lm_decode),
        generated=generated,
        llm_tokens=prefill_tokens,
        peak_mem_bytes=peak,
        peak_mem_delta_bytes=peak_delta,
    )
    if stats is not None:
        row.update(
            media_before=stats.audio_before[0] + stats.video_before[0],
            media_kept=stats.audio_after[0] + stats.video_after[0],
            audio_kept=stats.audio_after[0],
            video_kept=stats.video_after[0],
        )
    return row


def summarise_runs(samples: list[dict[str, Any]], scale: float) -> dict[str, Any]:
    """Medians of repeated runs of one configuration, LLM times scaled by `scale` (layers built -> real depth)."""
    med = lambda key: statistics.median(s[key] for s in samples)  # noqa: E731
    first = samples[0]
    out: dict[str, Any] = {k: first[k] for k in ("llm_tokens", "generated", "media_before", "media_kept", "audio_kept", "video_kept") if k in first}
    for key in ("encoder_s", "audio_encoder_s", "vision_encoder_s", "selection_s", "llm_prefill_s", "ttft_s", "decode_s", "decode_llm_s"):
        out[key] = med(key)
    out["peak_mem_bytes"] = max(s["peak_mem_bytes"] for s in samples)
    out["peak_mem_delta_bytes"] = max(s["peak_mem_delta_bytes"] for s in samples)
    steps = first["decode_steps"]
    out["decode_tokens_per_s"] = steps / out["decode_s"] if steps and out["decode_s"] > 0 else float("nan")
    out["measured"] = {k: [s[k] for s in samples] for k in ("llm_prefill_s", "ttft_s", "decode_s", "selection_s", "encoder_s")}
    if scale != 1.0:  # --layers K: (T/K - 1) more copies of the measured language-model time
        extra = scale - 1.0
        out["measured_llm_prefill_s"] = out["llm_prefill_s"]
        out["measured_ttft_s"] = out["ttft_s"]
        out["measured_decode_tokens_per_s"] = out["decode_tokens_per_s"]
        out["llm_prefill_s"] = out["llm_prefill_s"] * scale
        out["ttft_s"] = out["ttft_s"] + extra * out["measured_llm_prefill_s"]
        decode_s = out["decode_s"] + extra * out["decode_llm_s"]
        out["decode_tokens_per_s"] = steps / decode_s if steps and decode_s > 0 else float("nan")
    return out


def bench_options(**options: Any) -> argparse.Namespace:
    """``sift bench``'s defaults (see :func:`add_arguments`) with ``options`` (``random_init="tiny"``, ...) set."""
    args = add_arguments(argparse.ArgumentParser()).parse_args([])
    for key, value in options.items():
        if not hasattr(args, key):
            raise TypeError(f"unknown sift bench option {key!r}")
        setattr(args, key, value)
    return args


def run_bench(args: argparse.Namespace | None = None, **options: Any) -> dict[str, Any]:
    """Run the benchmark and write its files; returns the results (also written as JSON).

    Pass parsed ``args`` or keyword options (``run_bench(random_init="tiny", seconds=[4], out="dir")``).
    """
    args = args_or_options(args, options, bench_options)
    with torch_threads(args.threads):
        return _run_bench(args)


def _run_bench(args: argparse.Namespace) -> dict[str, Any]:
    from sift.flops import text_dims

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    methods, seconds_list = _check_options(args)
    t_start = time.perf_counter()
    model, processor, flops_config, desc = _build(args, device, dtype)
    T_full, d, m = text_dims(flops_config)
    scale = T_full / desc["layers_built"] if desc.get("layers_real") else 1.0
    configs: list[tuple[str, float]] = [("full", 1.0)] + [(mth, float(r)) for mth in methods for r in args.retentions]
    compressors = {(mth, r): _compressor(mth, r, model, args.selector) for mth, r in configs if mth != "full"}
    memory = PeakMemory(device)
    info = machine_info(device)
    rows: list[dict[str, Any]] = []
    inputs_info: list[dict[str, Any]] = []
    runs = len(seconds_list) * (args.warmup + args.repeats) * len(configs)
    with progress_bar(args.quiet, runs, "sift bench", "run") as progress:
        for seconds in seconds_list:
            inputs, warm_inputs = _bench_inputs(args, processor, seconds, device, dtype)
            inputs_info.append(_inputs_info(model.config, inputs, seconds))
            samples = _measure(args, model, inputs, warm_inputs, configs, compressors, device, memory, progress, seconds)
            rows += _rows(args, samples, configs, scale, flops_config, inputs_info[-1], seconds)
            del inputs, warm_inputs
    result = dict(
        command=getattr(args, "command_line", None) or _command_line(args),
        device=str(device),
        dtype=str(dtype).replace("torch.", ""),
        attn_implementation=args.attn,
        model=desc,
        llm_dims=dict(layers=T_full, hidden=d, ffn=m),
        layer_scale=scale,
        memory_kind=memory.kind,
        machine={**info, "loadavg_end": loadavg()},
        settings=dict(
            seconds=seconds_list, methods=methods, retentions=[float(r) for r in args.retentions],
            repeats=args.repeats, warmup=args.warmup, warmup_seconds=args.warmup_seconds or None,
            new_tokens=args.new_tokens,
            flops_new_tokens=args.flops_new_tokens, patches=args.patches, selector=args.selector,
        ),
        inputs=inputs_info,
        rows=rows,
        wall_s=time.perf_counter() - t_start,
    )
    _write_outputs(result, args)
    return result


def _check_options(args: argparse.Namespace) -> tuple[list[str], list[int]]:
    """(methods, seconds), every option checked before anything is built."""
    import sift

    methods = list(args.methods) if args.methods else [m for m in sift.available_compressors() if m != "none"]
    methods = [m for m in methods if m != "none"]
    unknown = [m for m in methods if m not in sift.available_compressors()]
    if unknown:
        raise UsageError(f"unknown method(s) {unknown}; available: {sift.available_compressors()}")
    for r in args.retentions:
        if not 0.0 < float(r) <= 1.0:
            raise UsageError(f"retentions must be in (0, 1], got {r}")
    if args.repeats < 1 or args.warmup < 0:
        raise UsageError("--repeats must be >= 1 and --warmup >= 0")
    if args.patches < 2 or args.patches % 2:
        raise UsageError(f"--patches must be an even number >= 2, got {args.patches}")
    if args.layers is not None and args.random_init in ("7b", "3b", "qwen3-30b-a3b"):
        from sift.flops import SIZES

        top = SIZES[args.random_init]["text"]["num_hidden_layers"]
        if not 1 <= args.layers <= top:
            raise UsageError(f"--layers must be in 1..{top} for {args.random_init}, got {args.layers}")
    if args.new_tokens < 1:
        raise UsageError(f"--new-tokens must be >= 1, got {args.new_tokens}")
    seconds_list = [int(s) for s in args.seconds]
    for s in seconds_list:
        if s < 2 or s % 2:
            raise UsageError(f"--seconds values must be even numbers >= 2, got {s}")
    return methods, seconds_list


def _bench_inputs(args, processor, seconds: int, device: torch.device, dtype: torch.dtype) -> tuple[dict, dict]:
    """(timed inputs, warm-up inputs) on the device; the warm-up clip is --warmup-seconds long when given."""
    def on_device(inputs: dict[str, Any]) -> dict[str, Any]:
        return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in inputs.items()}

    make = qwen3_synthetic_inputs if args.random_init == "qwen3-30b-a3b" else synthetic_inputs
    inputs = on_device(make(processor, seconds, patches=args.patches, seed=args.seed, dtype=dtype))
    if args.warmup and args.warmup_seconds and args.warmup_seconds != seconds:
        warm = make(processor, args.warmup_seconds, patches=args.patches, seed=args.seed, dtype=dtype)
        return inputs, on_device(warm)
    return inputs, inputs


def _inputs_info(config: Any, inputs: dict[str, Any], seconds: int) -> dict[str, Any]:
    ids = inputs["input_ids"][0]
    return dict(seconds=seconds, seq_len=int(ids.numel()), video_tokens=int((ids == config.video_token_id).sum()),
                audio_tokens=int((ids == config.audio_token_id).sum()), video_grid_thw=inputs["video_grid_thw"][0].tolist())


def _measure(args, model, inputs, warm_inputs, configs, compressors, device, memory, progress, seconds) -> dict:
    """Every configuration, round after round (--warmup untimed rounds first, on the warm-up inputs)."""
    samples: dict[tuple[str, float], list[dict[str, Any]]] = {c: [] for c in configs}
    for round_ in range(args.warmup + args.repeats):
        timed = round_ >= args.warmup
        for cfg_key in configs:
            sample = _run_once(model, inputs if timed else warm_inputs, compressors.get(cfg_key), args.new_tokens, device,
                               memory)
            if timed:
                samples[cfg_key].append(sample)
            progress.set_postfix_str(f"{seconds}s {cfg_key[0]}@{cfg_key[1]:g}")
            progress.update(1)
    return samples


def _rows(args, samples, configs, scale: float, flops_config: Any, info: dict[str, Any], seconds: int) -> list[dict]:
    """One result row per configuration, with speedups and FLOPs against full tokens."""
    from sift.flops import flops

    full = summarise_runs(samples[("full", 1.0)], scale)
    full_flops = flops(flops_config, full["llm_tokens"], args.flops_new_tokens)
    media = info["video_tokens"] + info["audio_tokens"]
    rows = []
    for mth, r in configs:
        row = summarise_runs(samples[(mth, r)], scale)
        row.update(seconds=seconds, method=mth, retention=r)
        if mth == "full":
            row.update(media_before=media, media_kept=media)
        row["achieved_retention"] = row["media_kept"] / max(1, row["media_before"])
        row["flops"] = flops(flops_config, row["llm_tokens"], args.flops_new_tokens)
        row["flops_ratio"] = row["flops"] / full_flops
        row["prefill_speedup"] = full["llm_prefill_s"] / row["llm_prefill_s"]
        row["ttft_speedup"] = full["ttft_s"] / row["ttft_s"]
        row["ideal_speedup"] = 1.0 / r
        row["selection_share_of_full_prefill"] = row["selection_s"] / full["llm_prefill_s"]
        rows.append(row)
    return rows


def _write_outputs(result: dict[str, Any], args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prefix = args.prefix or ""
    md = markdown(result)
    (out / f"{prefix}results.json").write_text(json.dumps(result, indent=2, default=_json_default) + "\n")
    (out / f"{prefix}results.md").write_text(md)
    plot_prefill(result, out / f"{prefix}prefill.png")
    result["files"] = [str(out / f"{prefix}{n}") for n in ("results.json", "results.md", "prefill.png")]
    if not args.quiet:
        print(md)
        print("wrote " + ", ".join(result["files"]))


def _command_line(args: argparse.Namespace) -> str:
    """The `sift bench` options equivalent to ``args`` (for results written by a direct call)."""
    return equivalent_command("sift bench", args, vars(bench_options()))


def _json_default(o: Any) -> Any:
    if isinstance(o, float):
        return o
    if torch.is_tensor(o):
        return o.tolist()
    return str(o)


# ----------------------------------------------------------------------------------------------- report
def _ms(x: float) -> str:
    return f"{x * 1e3:.1f}" if x == x else "n/a"


def _per_window(info: dict[str, Any]) -> str:
    """'288 video + 50 audio tokens per 2 s window' of one input's counts."""
    per = 2 / info["seconds"]
    return f"{info['video_tokens'] * per:g} video + {info['audio_tokens'] * per:g} audio tokens per 2 s window"


def markdown(result: dict[str, Any]) -> str:
    desc, info = result["model"], result["machine"]
    scaled = result["layer_scale"] != 1.0
    lines = [
        f"# sift bench ({result['device']}, {result['dtype']}, {result['attn_implementation']})",
        "",
        f"Model: {desc['model']}; decoder layers built: {desc['layers_built']}"
        + (f" of {desc['layers_real']} (LLM times scaled x{result['layer_scale']:g}, see below)" if scaled else "")
        + f"; encoders: {desc.get('encoders')}"
        + (f"; vocabulary {desc['vocab_size']}" if desc.get("vocab_size") else "")
        + f". LLM dims for FLOPs: {result['llm_dims']['layers']} layers, hidden {result['llm_dims']['hidden']}, "
        f"FFN {result['llm_dims']['ffn']}.",
        "Inputs: synthetic S s of 2 fps video + audio at the model's rates ("
        + _per_window(result["inputs"][0])
        + ", the processor's interleaving; random pixels and mel features through the encoders).",
        f"Median of {result['settings']['repeats']} interleaved runs after {result['settings']['warmup']} warm-up "
        f"round(s)" + (f" (on a {result['settings']['warmup_seconds']} s input)" if result["settings"].get("warmup_seconds") else "")
        + f"; {result['settings']['new_tokens']} greedy tokens per run.",
        "",
    ]
    header = (
        "| S | method | r | media kept | LLM tokens | encoders ms | select ms | select % of full prefill | LLM prefill ms "
        "| prefill speedup (ideal 1/r) | TTFT ms | TTFT speedup | decode tok/s | peak mem MiB | FLOPs | FLOPs ratio |"
    )
    for inp in result["inputs"]:
        s = inp["seconds"]
        lines += [
            f"## {s} s: {inp['video_tokens']} video + {inp['audio_tokens']} audio tokens, sequence {inp['seq_len']}",
            "",
            header,
            "|" + "|".join(["---"] * (header.count("|") - 1)) + "|",
        ]
        for r in result["rows"]:
            if r["seconds"] != s:
                continue
            ideal = "" if r["method"] == "full" else f" ({r['ideal_speedup']:.2f})"
            lines.append(
                f"| {s} | {r['method']} | {r['retention']:g} | {r['media_kept']}/{r['media_before']} | {r['llm_tokens']} | "
                f"{_ms(r['encoder_s'])} | {_ms(r['selection_s'])} | {100 * r['selection_share_of_full_prefill']:.3g}% | "
                f"{_ms(r['llm_prefill_s'])} | "
                f"{r['prefill_speedup']:.2f}x{ideal} | {_ms(r['ttft_s'])} | {r['ttft_speedup']:.2f}x | "
                f"{r['decode_tokens_per_s']:.1f} | {r['peak_mem_bytes'] / 2**20:.0f} | {r['flops']:.3g} | "
                f"{r['flops_ratio']:.3f} |"
            )
        lines += ["", *_pooled_table(result, s), ""]
    notes = [
        "Columns: media kept = audio+video tokens entering the LLM / before compression; encoders = audio + vision "
        "tower forward (OmniZip/OmniSIFT/OmniSelect add their audio-saliency hook there); select = "
        "`session.stats.selection_time_s`, and its share of the full-token LLM prefill; LLM prefill = the language model's forward on the kept prompt; "
        "TTFT = `generate` call to the end of the first forward (encoders + selection + LLM + lm_head); "
        "decode tok/s = (new tokens - 1) / time after the first token; FLOPs = OmniZip Eq. 9 (LLM only, "
        f"R = {result['settings']['flops_new_tokens']}) on the LLM tokens, ratio vs full.",
        f"Peak memory: {result['memory_kind']}; it includes the weights.",
        "At one retention every method hands the LLM the same number of tokens, so differences between their LLM "
        "prefill times are measurement noise (the pooled table is the steadier figure); encoder, selection and "
        "TTFT columns do differ by method.",
    ]
    if scaled:
        notes.append(
            f"Only {desc['layers_built']} of {desc['layers_real']} decoder layers were built: LLM prefill = measured x "
            f"{result['layer_scale']:g}; TTFT and decode add {result['layer_scale'] - 1:g} more copies of the measured "
            "language-model time (measured values are in the JSON). Peak memory is NOT scaled (weights and KV cache "
            "of the missing layers are absent)."
        )
    if desc.get("encoders") == "tiny" and "tiny" not in desc["model"]:
        notes.append("Encoders are sift.testbed.tiny's (projecting to the real hidden size): encoder times are not representative.")
    load = info.get("loadavg_start"), info.get("loadavg_end")
    gpu = f", {info['gpu']}" if info.get("gpu") else ""
    notes.append(
        f"Machine: {info['cpu_model']}{gpu}, {info.get('cpus_usable')} usable CPUs, torch {info['torch_version']} "
        f"(torch threads: {info['torch_threads']}), transformers {info['transformers_version']}; load average at start "
        f"{load[0]}, at end {load[1]}. Wall time {result['wall_s']:.0f} s. Command: `{result['command']}`"
    )
    lines += ["", *notes, ""]
    return "\n".join(lines)


def _pooled_table(result: dict[str, Any], seconds: int) -> list[str]:
    """Prefill speedup per retention, pooled over methods: at one retention every method hands the LLM the
    same number of tokens, so the median over all their runs is a steadier estimate on a noisy machine."""
    rows = [r for r in result["rows"] if r["seconds"] == seconds]
    full = next(r for r in rows if r["method"] == "full")
    scale = result["layer_scale"]
    full_s = statistics.median(full["measured"]["llm_prefill_s"]) * scale
    out = [
        "Pooled over methods (same LLM tokens at a retention; median of all their runs):",
        "",
        "| r | LLM tokens | runs | LLM prefill ms | prefill speedup | ideal 1/r | 1 / FLOPs ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for ret in sorted({r["retention"] for r in rows if r["method"] != "full"}):
        group = [r for r in rows if r["method"] != "full" and r["retention"] == ret]
        times = [t * scale for r in group for t in r["measured"]["llm_prefill_s"]]
        med = statistics.median(times)
        out.append(
            f"| {ret:g} | {group[0]['llm_tokens']} | {len(times)} | {_ms(med)} | {full_s / med:.2f}x | {1 / ret:.2f} | "
            f"{1 / group[0]['flops_ratio']:.2f} |"
        )
    return out


def plot_prefill(result: dict[str, Any], path: str | os.PathLike) -> None:
    """LLM prefill time vs retention, one line per method, one panel per input length; full as a dashed line."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    seconds = [inp["seconds"] for inp in result["inputs"]]
    fig, axes = plt.subplots(1, len(seconds), figsize=(5.2 * len(seconds), 4.0), squeeze=False)
    for ax, s in zip(axes[0], seconds):
        rows = [r for r in result["rows"] if r["seconds"] == s]
        full = next(r for r in rows if r["method"] == "full")
        for mth in dict.fromkeys(r["method"] for r in rows if r["method"] != "full"):
            pts = sorted((r["retention"], r["llm_prefill_s"] * 1e3) for r in rows if r["method"] == mth)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=mth)
        ax.axhline(full["llm_prefill_s"] * 1e3, color="black", linestyle="--", label="full tokens")
        ax.plot([1.0], [full["llm_prefill_s"] * 1e3], marker="s", color="black")
        ax.plot([0.0, 1.0], [0.0, full["llm_prefill_s"] * 1e3], color="gray", linestyle=":", label="ideal (r x full)")
        ax.set_xlabel("retention (fraction of audio+video tokens kept)")
        ax.set_ylabel("LLM prefill (ms)" + (" [scaled to full depth]" if result["layer_scale"] != 1.0 else ""))
        ax.set_title(f"{result['model']['model']}: {s} s")
        ax.set_xlim(0.0, 1.05)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
