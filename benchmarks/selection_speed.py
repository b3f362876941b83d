"""Selection time of every training-free sift method on a 7B-sized Qwen2.5-Omni input, vs. the LLM prefill.

What is measured (a benchmark, not a test; nothing here asserts):

* The input is what Qwen2.5-Omni-7B's processor makes of S seconds (`--seconds`, 60) of video with its
  audio track at the paper's rates: 2 fps, 24x24 patches per frame -> `video_grid_thw = [S, 24, 24]`,
  `second_per_grid = 1.0`, i.e. 12x12 = 144 merged tokens per temporal grid, 288 video tokens and 50 audio
  tokens (25 per second) per 2-second window, interleaved exactly as `Qwen2_5OmniProcessor` does it (the
  processor's own `replace_video_with_audio_token`, run on `sift.testbed.tiny`'s processor; the tokenization only
  fixes the token ids, which come from `sift.testbed.tiny`'s tokenizer/config). 60 s = 8640 video + 1500 audio
  tokens + ~80 chat-template/question tokens.
* The LLM-input embeddings are random `(1, L, --hidden)` (3584 = Qwen2.5-Omni-7B), bf16 on CUDA and fp32
  on CPU by default (`--dtype`); the audio-saliency signal (OmniZip / OmniSelect) is random positive
  values of the right length; the 3D rope positions are the real ones (`get_rope_index` of a tiny thinker).
* `sift.build_layout` (parse) time and `compressor.select(batch)` time: median of `--repeats` runs after
  one warm-up, `torch.cuda.synchronize()` around each run on GPU. Methods: `sift.available_compressors()`
  minus "none" (or `--methods`); a method that cannot be built or run without a model (a learned selector
  without a checkpoint, ...) is reported as skipped.
* The 7B prefill estimate: ONE real `Qwen2_5OmniDecoderLayer` at Qwen2.5-Omni-7B's text dims (hidden 3584,
  FFN 18944, 28 heads, 4 kv heads, head dim 128, M-RoPE [16, 24, 24]), random weights, sdpa attention
  (causal, no mask, as in a padding-free prefill), fed the real position embeddings of
  `Qwen2_5OmniRotaryEmbedding`, timed on the same n tokens and multiplied by 28 layers. Embedding lookup,
  final norm, lm_head and the audio/vision encoders are NOT included (the encoders run before selection
  whatever the method). When one layer on n tokens is predicted to take longer than `--layer-budget`
  seconds (the 2-core CPU case), it is timed on two smaller sizes (`--layer-sizes`, 2048 and 4096) and
  extrapolated with the layer's FLOPs model t(n) = a * F_linear(n) + b * F_attention(n), a and b fitted on
  the two sizes; the output says so.

`--model qwen3-30b-a3b`: the same on a Qwen3-Omni-30B-A3B input instead: hidden 2048, 13 audio tokens per
second interleaved per temporal grid by Qwen3-Omni's processor rule (`sift.testbed.tiny_qwen3.qwen3_av_inputs`),
positions from a tiny Qwen3-Omni thinker's `get_rope_index`, the layout from `read_qwen3_layout`. The prefill
estimate times a Qwen2.5 decoder layer, so it is skipped there (`sift bench --random-init qwen3-30b-a3b` times
the MoE decoder).

Run:  .venv/bin/python benchmarks/selection_speed.py [--seconds 60] [--device cpu|cuda] [--repeats 3] [--model ...]
Writes `<out>/selection_speed_<device>.md` and `.json` (default out: benchmarks/results; `--model qwen3-30b-a3b`:
`selection_speed_qwen3_<device>.*`).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

if __package__ in (None, ""):  # run as a script from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sift  # noqa: E402
from sift.apps.runtime import loadavg, machine_info, resolve_device, resolve_dtype, torch_threads  # noqa: E402
from sift.budget import keep_count  # noqa: E402
from sift.layout import audio_tokens_from_features  # noqa: E402
from sift.saliency import AUDIO_SALIENCY  # noqa: E402
from sift.testbed.tiny import tiny_processor, tiny_thinker, tiny_thinker_config, tiny_tokenizer  # noqa: E402

# Qwen2.5-Omni-7B thinker text model (config.json of Qwen/Qwen2.5-Omni-7B).
QWEN_7B = dict(
    hidden_size=3584,
    intermediate_size=18944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    head_dim=128,
    mrope_section=[16, 24, 24],
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-6,
)
POSITION_ID_PER_SECONDS = 25
SECONDS_PER_CHUNK = 2.0
FPS = 2.0
TEMPORAL_PATCH = 2
PATCHES = 24  # 24x24 patches of 14 px per frame (336x336) -> 12x12 merged tokens
AUDIO_TOKENS_PER_SECOND = 25
QUESTION = "What is the person saying while the dog jumps?"

OPTIONAL_METHOD_MODULES = ("sift.compressors.dycoke", "sift.compressors.omniselect")


# ---------------------------------------------------------------------------------------------- timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class CpuMeter:
    """Wall time and this process's CPU time over a block: cpu / wall / threads < 1 means we did not get the cores."""

    def __enter__(self) -> "CpuMeter":
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.wall = time.perf_counter() - self.t0
        self.cpu = time.process_time() - self.c0

    def utilisation(self) -> float:
        return self.cpu / max(self.wall, 1e-9) / max(1, torch.get_num_threads())


def time_call(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 1) -> tuple[list[float], Any]:
    """Seconds of each of `repeats` calls of fn after `warmup` calls (synchronized on GPU)."""
    out = None
    for _ in range(warmup):
        out = fn()
        sync(device)
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times, out


# ---------------------------------------------------------------------------------------------- input
def feature_length_for(n_audio: int) -> int:
    """Smallest mel length whose encoder output has `n_audio` tokens (100 mel frames per second)."""
    f = max(1, 4 * n_audio - 8)
    while int(audio_tokens_from_features(torch.tensor(f))) < n_audio:
        f += 1
    return f


def build_input(seconds: int) -> dict[str, Any]:
    """input_ids and side inputs of one user turn <S s video with its audio><question>, as the processor makes them."""
    if seconds < 2 or seconds % 2:
        raise SystemExit("--seconds must be an even number >= 2 (temporal patch 2 at 2 fps: one grid per second)")
    tok = tiny_tokenizer()
    processor = tiny_processor(tok)
    config = tiny_thinker_config(tok)
    t_grids = int(seconds * FPS / TEMPORAL_PATCH)
    grid = torch.tensor([[t_grids, PATCHES, PATCHES]])
    second_per_grid = TEMPORAL_PATCH / FPS
    n_audio = seconds * AUDIO_TOKENS_PER_SECOND
    media = processor.replace_video_with_audio_token(
        {"video_grid_thw": grid, "video_second_per_grid": [second_per_grid]},
        0,
        {"num_audio_tokens": [n_audio]},
        0,
        position_id_per_seconds=POSITION_ID_PER_SECONDS,
        seconds_per_chunk=SECONDS_PER_CHUNK,
    )
    text = tok.apply_chat_template(
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION}]}],
        tokenize=False,
        add_generation_prompt=True,
    )
    placeholder = tok.video_token
    assert text.count(placeholder) == 1, text
    enc = tok(text.replace(placeholder, media), return_tensors="pt")
    return dict(
        tokenizer=tok,
        config=config,
        input_ids=enc.input_ids,
        attention_mask=enc.attention_mask,
        video_grid_thw=grid,
        video_second_per_grid=torch.tensor([second_per_grid]),
        audio_feature_lengths=torch.tensor([feature_length_for(n_audio)]),
        use_audio_in_video=True,
        n_audio=n_audio,
    )


def build_qwen3_input(seconds: int) -> dict[str, Any]:
    """The Qwen3-Omni-30B-A3B input of `seconds` (the keys `build_input` gives) and its (3, 1, L) float positions."""
    from sift.apps.bench import qwen3_synthetic_inputs
    from sift.testbed.tiny_qwen3 import tiny_qwen3_processor, tiny_qwen3_thinker, tiny_qwen3_thinker_config

    if seconds < 2 or seconds % 2:
        raise SystemExit("--seconds must be an even number >= 2")
    processor = tiny_qwen3_processor()
    config = tiny_qwen3_thinker_config(processor.tokenizer)
    inputs = qwen3_synthetic_inputs(processor, seconds, patches=PATCHES, question=QUESTION)
    lengths = inputs["feature_attention_mask"].sum(-1)
    with torch.no_grad():
        positions, _ = tiny_qwen3_thinker(config).model.get_rope_index(
            inputs["input_ids"], None, inputs["video_grid_thw"], inputs["attention_mask"], True, lengths,
            inputs["video_second_per_grid"],
        )
    ids = inputs["input_ids"]
    return dict(
        config=config, input_ids=ids, attention_mask=inputs["attention_mask"], video_grid_thw=inputs["video_grid_thw"],
        video_second_per_grid=inputs["video_second_per_grid"], audio_feature_lengths=lengths, use_audio_in_video=True,
        n_audio=int((ids == config.audio_token_id).sum()), positions=positions, positions_source="get_rope_index (qwen3)",
    )


def rope_positions(inp: dict[str, Any]) -> tuple[torch.Tensor, str]:
    """The model's (3, 1, L) positions from `get_rope_index` of a tiny thinker with the same token ids."""
    try:
        thinker = tiny_thinker(inp["config"])
        with torch.no_grad():
            pos, _ = thinker.get_rope_index(
                inp["input_ids"],
                video_grid_thw=inp["video_grid_thw"],
                attention_mask=inp["attention_mask"],
                use_audio_in_video=True,
                audio_seqlens=inp["audio_feature_lengths"],
                second_per_grids=inp["video_second_per_grid"],
            )
        return pos.long(), "get_rope_index"
    except Exception as e:  # positions only matter for the rope in the layer timing, not for its cost
        L = inp["input_ids"].shape[1]
        print(f"[warn] get_rope_index failed ({type(e).__name__}: {e}); using arange positions", file=sys.stderr)
        return torch.arange(L).view(1, 1, L).expand(3, 1, L).clone(), "arange (get_rope_index failed)"


# ---------------------------------------------------------------------------------------------- methods
def discover_methods(requested: list[str] | None) -> list[str]:
    import importlib
    import importlib.util

    for mod in OPTIONAL_METHOD_MODULES:
        if importlib.util.find_spec(mod) is not None:
            importlib.import_module(mod)
    available = [m for m in sift.available_compressors() if m != "none"]
    if requested:
        unknown = [m for m in requested if m not in available]
        if unknown:
            raise SystemExit(f"unknown method(s) {unknown}; available: {available}")
        return list(requested)
    return available


def make_compressor(name: str, retention: float, config: Any, hidden: int, device: torch.device) -> Any:
    extra: dict[str, Any] = {}
    if name == "omnisift":  # the learned selector at its untrained init (same cost as a trained one)
        selector_config = sift.OmniSIFTConfig(hidden_size=hidden, base_model=config.model_type)
        extra["selector"] = sift.OmniSIFTSelector(selector_config).eval().to(device)
    comp = sift.get_compressor(name, retention=retention, **extra)
    configure = getattr(comp, "configure", None)
    if callable(configure):  # e.g. OmniSelect reads the special-token ids from the config
        configure(config)
    return comp


def kept_media(selection: Any, layout: Any) -> int:
    keep = selection.keep.detach().cpu()
    return int((keep & layout.media_mask()).sum())


# ---------------------------------------------------------------------------------------------- 7B layer
def layer_flops(n: int, hidden: int, ffn: int, heads: int, kv_heads: int, head_dim: int) -> tuple[float, float]:
    """(linear, attention) FLOPs of one decoder layer's causal prefill over n tokens (multiply-add = 2)."""
    q_out, kv_out = heads * head_dim, 2 * kv_heads * head_dim
    linear_params = hidden * q_out + hidden * kv_out + q_out * hidden + 3 * hidden * ffn
    linear = 2.0 * n * linear_params
    attention = 2.0 * 2.0 * heads * head_dim * n * (n + 1) / 2  # QK^T and PV over the causal triangle
    return linear, attention


class SevenBLayer:
    """One Qwen2_5OmniDecoderLayer at Qwen2.5-Omni-7B's text dims, random weights, sdpa."""

    def __init__(self, device: torch.device, dtype: torch.dtype):
        from transformers import Qwen2_5OmniTextConfig
        from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import (
            Qwen2_5OmniDecoderLayer,
            Qwen2_5OmniRotaryEmbedding,
        )

        d = QWEN_7B
        cfg = Qwen2_5OmniTextConfig(
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            num_hidden_layers=1,
            num_attention_heads=d["num_attention_heads"],
            num_key_value_heads=d["num_key_value_heads"],
            rms_norm_eps=d["rms_norm_eps"],
            max_position_embeddings=32768,
            rope_parameters={"rope_type": "default", "rope_theta": d["rope_theta"], "mrope_section": d["mrope_section"]},
            use_sliding_window=False,
            vocab_size=1024,  # no embedding is built here; keeps the config small
        )
        cfg._attn_implementation = "sdpa"
        self.config = cfg
        assert cfg.hidden_size // cfg.num_attention_heads == d["head_dim"]
        with torch.device("meta"):
            layer = Qwen2_5OmniDecoderLayer(cfg, layer_idx=0)
        layer = layer.to_empty(device=device).to(dtype)
        g = torch.Generator(device="cpu").manual_seed(0)
        with torch.no_grad():
            for name, p in layer.named_parameters():
                if name.endswith("norm.weight") or "layernorm" in name:
                    p.fill_(1.0)
                else:
                    p.copy_((torch.randn(p.shape, generator=g) * 0.02).to(p.dtype))
        self.layer = layer.eval()
        self.rotary = Qwen2_5OmniRotaryEmbedding(cfg).to(device)
        self.device, self.dtype = device, dtype
        self.num_params = sum(p.numel() for p in layer.parameters())

    def flops(self, n: int) -> tuple[float, float]:
        d = QWEN_7B
        return layer_flops(
            n, d["hidden_size"], d["intermediate_size"], d["num_attention_heads"], d["num_key_value_heads"], d["head_dim"]
        )

    def time(self, n: int, positions: torch.Tensor, repeats: int, warmup: int = 1) -> dict[str, Any]:
        pos = positions[..., :n].to(self.device)
        if pos.shape[-1] < n:  # beyond the real sequence: continue the text positions
            extra = torch.arange(int(pos.max()) + 1, int(pos.max()) + 1 + n - pos.shape[-1], device=self.device)
            pos = torch.cat([pos, extra.view(1, 1, -1).expand(3, 1, -1)], dim=-1)
        g = torch.Generator(device="cpu").manual_seed(1)
        hidden = torch.randn(1, n, QWEN_7B["hidden_size"], generator=g).to(self.device, self.dtype)

        def run() -> torch.Tensor:
            with torch.inference_mode():
                cos_sin = self.rotary(hidden, pos)
                return self.layer(hidden, attention_mask=None, position_ids=pos, position_embeddings=cos_sin)

        with CpuMeter() as meter:
            times, out = time_call(run, self.device, repeats, warmup)
        assert out.shape == hidden.shape and bool(torch.isfinite(out.float()).all())
        del out, hidden
        return dict(n=n, times_s=times, median_s=statistics.median(times), cpu_utilisation=round(meter.utilisation(), 3))


def estimate_prefill(
    device: torch.device,
    dtype: torch.dtype,
    n: int,
    positions: torch.Tensor,
    repeats: int,
    layer_budget_s: float,
    probe_sizes: list[int],
    force_extrapolate: bool,
) -> dict[str, Any]:
    """Seconds of one 7B decoder layer on n tokens (measured, or extrapolated from two smaller sizes) x 28."""
    layer = SevenBLayer(device, dtype)
    layers = QWEN_7B["num_hidden_layers"]
    small, large = sorted(probe_sizes)[:2]
    res: dict[str, Any] = dict(layer_params=layer.num_params, layers=layers, dtype=str(dtype).replace("torch.", ""))
    # warm-up at a small size (kernel selection, allocator), not counted
    layer.time(min(256, n), positions, repeats=1, warmup=1)
    bar = tqdm(total=2, desc="7B decoder layer", leave=False)
    probe = layer.time(min(small, n), positions, repeats=max(1, min(repeats, 2)), warmup=0)
    bar.update(1)
    lin_s, att_s = layer.flops(probe["n"])
    predicted = probe["median_s"] * sum(layer.flops(n)) / (lin_s + att_s)
    res["probe"] = probe
    res["predicted_single_layer_s_from_probe"] = predicted
    if not force_extrapolate and (predicted <= layer_budget_s or n <= small):
        full = layer.time(n, positions, repeats=repeats, warmup=0 if n == probe["n"] else 1)
        bar.update(1)
        bar.close()
        res.update(method="measured", measurements=[full], layer_s=full["median_s"])
    else:
        second = layer.time(min(large, n), positions, repeats=max(1, min(repeats, 2)), warmup=0)
        bar.update(1)
        bar.close()
        (l1, a1), (l2, a2) = layer.flops(probe["n"]), layer.flops(second["n"])
        t1, t2 = probe["median_s"], second["median_s"]
        det = l1 * a2 - l2 * a1
        a = (t1 * a2 - t2 * a1) / det  # seconds per linear FLOP
        b = (l1 * t2 - l2 * t1) / det  # seconds per attention FLOP
        lin_n, att_n = layer.flops(n)
        if a > 0 and b > 0:
            layer_s = a * lin_n + b * att_n
            how = (
                f"extrapolated: one layer timed on {probe['n']} and {second['n']} tokens, fitted "
                f"t(n) = a*F_linear(n) + b*F_attention(n) (a = {1 / a / 1e9:.1f} GFLOP/s linear, "
                f"b = {1 / b / 1e9:.1f} GFLOP/s attention), evaluated at n = {n}"
            )
        else:  # noisy timings (shared machine): fall back to the larger size's overall FLOP rate
            layer_s = t2 * (lin_n + att_n) / (l2 + a2)
            how = (
                f"extrapolated: one layer timed on {probe['n']} and {second['n']} tokens; the two-term fit was "
                f"not positive (noisy timings), so the {second['n']}-token FLOP rate "
                f"({(l2 + a2) / t2 / 1e9:.1f} GFLOP/s) was scaled to n = {n}"
            )
        res.update(method=how, measurements=[probe, second], layer_s=layer_s, fit_a_s_per_flop=a, fit_b_s_per_flop=b)
    res["method"] = res["method"] if res["method"] != "measured" else f"measured: one layer on n = {n} tokens"
    res["prefill_s"] = res["layer_s"] * layers
    lin_n, att_n = layer.flops(n)
    res["layer_tflops"] = (lin_n + att_n) / 1e12
    res["achieved_gflops"] = (lin_n + att_n) / res["layer_s"] / 1e9
    res["_layer"] = layer
    return res


def prefill_at(est: dict[str, Any], n: int) -> float:
    """Estimated 28-layer prefill seconds at another length n, with the same model as the estimate."""
    layer: SevenBLayer = est["_layer"]
    lin, att = layer.flops(n)
    if "fit_a_s_per_flop" in est and est["fit_a_s_per_flop"] > 0 and est["fit_b_s_per_flop"] > 0:
        return (est["fit_a_s_per_flop"] * lin + est["fit_b_s_per_flop"] * att) * est["layers"]
    ref = est["measurements"][-1]  # the full-size measurement, or the larger probe
    ref_lin, ref_att = layer.flops(ref["n"])
    return ref["median_s"] * (lin + att) / (ref_lin + ref_att) * est["layers"]


# ---------------------------------------------------------------------------------------------- report
def markdown(result: dict[str, Any]) -> str:
    info, inp, est = result["machine"], result["input"], result["prefill_estimate"]
    lines = [
        f"# sift selection speed ({result['device']}, {result.get('model', 'qwen2.5-omni-7b')} input)",
        "",
        f"Input: {inp['seconds']} s of video with audio at 2 fps, grid_thw {inp['video_grid_thw']}, "
        f"{inp['video_tokens']} video + {inp['audio_tokens']} audio tokens, sequence length {inp['seq_len']}, "
        f"embeddings (1, {inp['seq_len']}, {inp['hidden']}) {inp['dtype']}, random; audio saliency random positive.",
        f"Layout parse (`sift.layout_of`: {'read_qwen3_layout' if result.get('model') == 'qwen3-30b-a3b' else 'build_layout'}): "
        f"{result['layout_ms']:.1f} ms (median of {result['repeats']}).",
        "",
        (f"Estimated Qwen2.5-Omni-7B LLM prefill on all {inp['seq_len']} tokens: **{est['prefill_s']:.2f} s** "
         f"= {est['layers']} x {est['layer_s']:.3f} s per decoder layer ({est['method']}; "
         f"{est['dtype']}, sdpa, {est['layer_tflops']:.2f} TFLOP per layer, ~{est['achieved_gflops']:.0f} GFLOP/s). "
         "Embedding, final norm, lm_head and the audio/vision encoders are not included."
         if est["prefill_s"] == est["prefill_s"] else f"No prefill estimate here ({est['method']}); "
         "`sift bench --random-init qwen3-30b-a3b` times the decoder (benchmarks/bench_cpu.sh)."),
        "",
    ]
    one = any("median_1thread_ms" in r for r in result["rows"])
    estimated = est["prefill_s"] == est["prefill_s"]  # not NaN
    head = ["method", "retention", "tokens kept / total", "selection ms (median)", "min ms"]
    head += ["ms on 1 thread (median)"] if one else []
    head += ["% of est. 7B prefill", "est. prefill after (s)"] if estimated else []
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        if r.get("skipped"):
            cells = [r["method"], f"{r['retention']:.2f}", f"skipped: {r['skipped']}"] + [""] * (len(head) - 3)
        else:
            cells = [r["method"], f"{r['retention']:.2f}", f"{r['kept']} / {r['total']}", f"{r['median_ms']:.1f}", f"{r['min_ms']:.1f}"]
            cells += [f"{r['median_1thread_ms']:.1f}" if "median_1thread_ms" in r else ""] if one else []
            cells += [f"{r['pct_of_prefill']:.3g}%", f"{r['prefill_after_s']:.2f}"] if estimated else []
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "tokens kept / total: audio+video tokens (text is always kept). selection ms: `compressor.select(batch)` "
        f"with {info['torch_threads']} torch threads, median of {result['repeats']} after one warm-up; min ms: the "
        "fastest of those runs. "
        + (
            "ms on 1 thread: the same with torch.set_num_threads(1); selection is thousands of small ops, and with "
            "more torch threads than free cores each parallel region can wait a scheduler slice for a descheduled "
            "thread, so on a busy CPU this column is the stable one. "
            if one
            else ""
        )
        + ("% of est. 7B prefill: selection ms (median) / the estimate above. est. prefill after: the same 7B "
           "estimate on the kept sequence (kept media + text); selection time is not included in it." if estimated else ""),
        "",
        f"Machine: {info['cpu_model']}, {info['cpus_usable']} usable CPUs, torch {info['torch_version']} "
        f"({info['torch_threads']} threads), transformers {info['transformers_version']}"
        + (f", GPU {info['gpu']} (CUDA {info['cuda']})" if "gpu" in info else "")
        + ".",
        f"Load average (1/5/15 min) at start {result['load']['start']}, before the layer timing "
        f"{result['load']['before_layer']}, at end {result['load']['end']}; CPU utilisation of this process "
        f"during the layer timing {result['load']['layer_cpu_utilisation']} (1.0 = all torch threads busy). "
        + result["load"]["note"],
        f"Total benchmark wall time {result['wall_s']:.0f} s. Command: `{result['command']}`",
        "",
    ]
    return "\n".join(lines)


def load_note(start: list[float] | None, usable: int) -> str:
    if start is None:
        return ""
    if start[0] > 0.75 * usable:
        return (
            f"The machine was busy when the run started (1-min load {start[0]:.2f} on {usable} CPUs): "
            "timings are likely pessimistic; compare runs only at similar load."
        )
    return "The machine was mostly idle at start."


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=60, help="video length in seconds (even), default 60")
    ap.add_argument("--model", default="qwen2.5-omni-7b", choices=["qwen2.5-omni-7b", "qwen3-30b-a3b"],
                    help="whose input and hidden size (qwen3-30b-a3b: 2048, 13 audio tokens/s; no prefill estimate)")
    ap.add_argument("--hidden", type=int, default=QWEN_7B["hidden_size"], help="embedding width for selection (3584 = 7B)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"], help="auto: bf16 on cuda, fp32 on cpu")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median), after one warm-up")
    ap.add_argument("--methods", nargs="*", default=None, help="default: every registered method except 'none'")
    ap.add_argument("--retentions", nargs="*", type=float, default=[0.25, 0.35, 0.45])
    ap.add_argument("--out", default="benchmarks/results", help="folder for selection_speed_<device>.md/.json")
    ap.add_argument("--layer-budget", type=float, default=60.0, help="extrapolate the 7B layer if one run would take longer (s)")
    ap.add_argument("--layer-sizes", nargs=2, type=int, default=[2048, 4096], help="token counts for the extrapolation")
    ap.add_argument("--extrapolate", action="store_true", help="always extrapolate the layer from --layer-sizes")
    ap.add_argument("--no-prefill", action="store_true", help="skip the 7B layer timing")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="also cProfile one select() per method at the middle retention; print/save the top N functions")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--no-single-thread", action="store_true",
                    help="on CPU with >1 torch threads, do not also time every selection on 1 thread")
    return ap.parse_args(argv)


@dataclass
class Bench:
    """The timed input: its layout, positions, random 7B-wide embeddings and audio saliency."""

    args: argparse.Namespace
    device: torch.device
    dtype: torch.dtype
    inp: dict[str, Any]
    layout: Any
    positions: torch.Tensor
    embeds: torch.Tensor
    saliency: list[torch.Tensor]

    def batch(self) -> sift.CompressionBatch:
        return sift.CompressionBatch(
            embeds=self.embeds,
            layout=self.layout,
            input_ids=self.inp["input_ids"].to(self.device),
            attention_mask=self.inp["attention_mask"].to(self.device),
            position_ids=self.positions.to(self.device),
            signals={AUDIO_SALIENCY: self.saliency},
        )

    def compressor(self, method: str, retention: float) -> Any:
        return make_compressor(method, retention, self.inp["config"], self.args.hidden, self.device)


def time_selection(bench: Bench, method: str, retention: float, total: int, single_thread: bool) -> dict[str, Any]:
    """One method at one retention: median select() time (and on 1 thread), or why it was skipped."""
    args, device = bench.args, bench.device
    entry: dict[str, Any] = dict(method=method, retention=retention, total=total)
    try:
        comp = bench.compressor(method, retention)
        times, sel = time_call(lambda: comp.select(bench.batch()), device, args.repeats)
    except Exception as e:  # a method that needs a model / checkpoint / hooks
        entry["skipped"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
        tqdm.write(f"[skip] {method} @ {retention}: {entry['skipped']}")
        return entry
    entry.update(
        kept=kept_media(sel, bench.layout),
        expected_kept=keep_count(total, retention),
        times_ms=[t * 1e3 for t in times],
        median_ms=statistics.median(times) * 1e3,
        min_ms=min(times) * 1e3,
        merged_embeddings=sel.embeds is not None,
    )
    msg = f"{method:>12} @ {retention:.2f}: {entry['median_ms']:8.1f} ms"
    if single_thread:
        # Selection is thousands of small ops; with more torch threads than free cores every parallel
        # region waits for a descheduled thread, so on a shared CPU the 1-thread time is the stable one.
        with torch_threads(1):
            times1, _ = time_call(lambda: comp.select(bench.batch()), device, args.repeats)
        entry.update(times_1thread_ms=[t * 1e3 for t in times1], median_1thread_ms=statistics.median(times1) * 1e3)
        msg += f" ({entry['median_1thread_ms']:.1f} ms on 1 thread)"
    tqdm.write(f"{msg}  kept {entry['kept']}/{total}")
    return entry


def profile_methods(bench: Bench, methods: list[str]) -> dict[str, str]:
    """cProfile of one select() per method at the middle retention: the top --profile functions by own time."""
    r_mid = sorted(bench.args.retentions)[len(bench.args.retentions) // 2]
    profiles: dict[str, str] = {}
    for method in tqdm(methods, desc="profile"):
        try:
            comp = bench.compressor(method, r_mid)
            comp.select(bench.batch())
            pr = cProfile.Profile()
            pr.enable()
            comp.select(bench.batch())
            sync(bench.device)
            pr.disable()
        except Exception:
            continue
        s = io.StringIO()
        pstats.Stats(pr, stream=s).strip_dirs().sort_stats("tottime").print_stats(bench.args.profile)
        profiles[method] = s.getvalue()
    return profiles


def prefill_estimate(bench: Bench, L: int) -> dict[str, Any]:
    args = bench.args
    if args.no_prefill:
        return dict(method="skipped (--no-prefill)", prefill_s=float("nan"), layer_s=float("nan"), layers=28,
                    layer_tflops=float("nan"), achieved_gflops=float("nan"), dtype=str(bench.dtype), measurements=[])
    print("timing one Qwen2.5-Omni-7B decoder layer ...")
    est = estimate_prefill(bench.device, bench.dtype, L, bench.positions, args.repeats, args.layer_budget, args.layer_sizes,
                           args.extrapolate)
    print(f"7B prefill estimate: {est['prefill_s']:.2f} s = {est['layers']} x {est['layer_s']:.3f} s ({est['method']})")
    return est


def build_bench(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> tuple[Bench, list[float]]:
    """The input of --seconds, its layout (timed) and the selection inputs."""
    if args.model == "qwen3-30b-a3b":
        inp = build_qwen3_input(args.seconds)
        positions = inp["positions"]
    else:
        inp = build_input(args.seconds)
        positions, inp["positions_source"] = rope_positions(inp)
    ids = inp["input_ids"]
    # the family's own reader (`read_qwen3_layout` or `build_layout`), as the plug-in calls it
    layout_times, layout = time_call(lambda: sift.layout_of(inp, inp["config"]), torch.device("cpu"), args.repeats)
    g = torch.Generator(device="cpu").manual_seed(0)
    embeds = torch.randn(1, ids.shape[1], args.hidden, generator=g).to(device=device, dtype=dtype)
    saliency = [(torch.rand(inp["n_audio"], generator=g) + 1e-3).to(device)]
    return Bench(args, device, dtype, inp, layout, positions, embeds, saliency), layout_times


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.model == "qwen3-30b-a3b":
        args.hidden, args.no_prefill = 2048, True
    t_start = time.perf_counter()
    device = resolve_device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch.cuda.is_available() is False")
    dtype = resolve_dtype(args.dtype, device)
    with torch_threads(args.threads):
        info = machine_info(device)
        load_start = loadavg()
        print(f"machine: {info['cpu_model']} | usable CPUs {info['cpus_usable']} | torch {info['torch_version']} "
              f"({info['torch_threads']} threads) | load {load_start}" + (f" | GPU {info.get('gpu')}" if "gpu" in info else ""))
        bench, layout_times = build_bench(args, device, dtype)
        row, L = bench.layout.rows[0], bench.inp["input_ids"].shape[1]
        total = row.num_audio + row.num_video
        print(f"input: {args.seconds} s -> L = {L} tokens ({row.num_video} video + {row.num_audio} audio, "
              f"{len(row.windows)} windows); build_layout {statistics.median(layout_times) * 1e3:.1f} ms")
        methods = discover_methods(args.methods)
        single_thread = device.type == "cpu" and torch.get_num_threads() > 1 and not args.no_single_thread
        jobs = [(m, r) for m in methods for r in args.retentions]
        rows = [time_selection(bench, m, r, total, single_thread) for m, r in tqdm(jobs, desc="selection", unit="run")]
        profiles = profile_methods(bench, methods) if args.profile else {}
        load_before_layer = loadavg()
        est = prefill_estimate(bench, L)
    for r in rows:
        if not r.get("skipped"):
            r["pct_of_prefill"] = 100.0 * r["median_ms"] / 1e3 / est["prefill_s"] if not args.no_prefill else float("nan")
            r["prefill_after_s"] = prefill_at(est, r["kept"] + L - total) if not args.no_prefill else float("nan")
    usable = info["cpus_usable"] or info["logical_cpus"] or 1
    inp = bench.inp
    result = dict(
        device=device.type,
        model=args.model,
        command=" ".join(["python benchmarks/selection_speed.py", *(sys.argv[1:] if argv is None else argv)]),
        machine=info,
        repeats=args.repeats,
        input=dict(
            seconds=args.seconds,
            video_grid_thw=inp["video_grid_thw"].tolist()[0],
            video_second_per_grid=float(inp["video_second_per_grid"][0]),
            video_tokens=row.num_video,
            audio_tokens=row.num_audio,
            text_tokens=L - total,
            seq_len=L,
            windows=len(row.windows),
            hidden=args.hidden,
            dtype=str(dtype).replace("torch.", ""),
            positions=inp["positions_source"],
        ),
        layout_ms=statistics.median(layout_times) * 1e3,
        layout_times_ms=[t * 1e3 for t in layout_times],
        prefill_estimate={k: v for k, v in est.items() if not k.startswith("_")},
        rows=rows,
        load=dict(start=load_start, before_layer=load_before_layer, end=loadavg(),
                  layer_cpu_utilisation=[m.get("cpu_utilisation") for m in est.get("measurements", [])],
                  note=load_note(load_start, usable)),
        wall_s=time.perf_counter() - t_start,
    )
    write_results(result, profiles, Path(args.out), device)
    return result


def write_results(result: dict[str, Any], profiles: dict[str, str], out: Path, device: torch.device) -> None:
    md = markdown(result)
    print()
    print(md)
    out.mkdir(parents=True, exist_ok=True)
    tag = "qwen3_" if result.get("model") == "qwen3-30b-a3b" else ""
    (out / f"selection_speed_{tag}{device.type}.md").write_text(md)
    (out / f"selection_speed_{tag}{device.type}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    if profiles:
        prof_text = "\n".join(f"===== {m} =====\n{p}" for m, p in profiles.items())
        (out / f"selection_profile_{tag}{device.type}.txt").write_text(prof_text)
        print(prof_text)
    print(f"wrote {out / f'selection_speed_{tag}{device.type}.md'} and .json")


if __name__ == "__main__":
    main()
