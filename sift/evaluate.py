"""`sift eval`: multiple-choice accuracy of a Qwen2.5-Omni thinker under every method x retention, in one run.

For each sample of an audio-visual multiple-choice manifest (:func:`sift.manifest.read_manifest`: generic,
Daily-Omni or WorldSense records) the clip is decoded ONCE (:func:`sift.media.load_clip`, PyAV) and
processed ONCE by the real ``Qwen2_5OmniProcessor`` (frames + 16 kHz waveform as the video's audio track,
the question and lettered options of :func:`sift.manifest.build_prompt`); then the same inputs go through
greedy ``generate`` inside ``sift.compress`` for the full-token baseline (``none``, once, retention 1) and
every other method at every retention. The reply's option letter is read with
:func:`sift.manifest.extract_letter` (the first option letter the stripped, upper-cased reply starts
with; no letter counts as wrong). Accuracy is torchmetrics' micro-averaged multiclass accuracy (with one
extra class for "no letter"), overall and per category (plain mean of the same 0/1 outcomes when
torchmetrics is not installed).

Samples whose video is missing, undecodable, or has no audio track (audio is always used) are skipped
and counted, with the reason, like the training data module does.

Writes ``<out>/<prefix>results.json`` (settings, counts, accuracy per method x retention and per category,
achieved retention, every prediction), ``results.md`` (the tables) and ``accuracy.png`` (accuracy vs retention,
one line per method, the full-token accuracy as a horizontal line).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["run_eval", "eval_options", "add_arguments", "accuracy", "UsageError", "main"]

logger = logging.getLogger(__name__)

DEFAULT_RETENTIONS = (0.25, 0.35)
UNCATEGORIZED = "(none)"
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--manifest", required=True, help="JSON / JSONL manifest (generic, dailyomni or worldsense records)")
    p.add_argument("--schema", default="auto", help="auto, generic, dailyomni or worldsense")
    p.add_argument("--video-root", help="folder relative video paths / ids resolve against (default: the manifest's)")
    p.add_argument("--model", default="tiny", help="'tiny' (sift.tiny, random weights) or a thinker checkpoint folder")
    p.add_argument("--processor", help="'tiny' or a processor folder (default: 'tiny' for the tiny model, else --model)")
    p.add_argument("--methods", nargs="+",
                   help="compressors; 'none' is the full-token baseline (default: every registered method, "
                   "omnisift only with --selector)")
    p.add_argument("--retentions", type=float, nargs="+", default=list(DEFAULT_RETENTIONS))
    p.add_argument("--selector", help="omnisift: a trained OmniSIFTSelector checkpoint folder (required for omnisift)")
    p.add_argument("--limit", type=int, help="evaluate only the first N samples of the manifest")
    p.add_argument("--out", default="eval-results", help="output folder")
    p.add_argument("--prefix", default="", help="file name prefix: <out>/<prefix>results.json, ...")
    p.add_argument("--frame-size", type=int, help="square resize of decoded frames (e.g. 112 for the tiny processor)")
    p.add_argument("--max-frames", type=int, help="cap on decoded frames at 2 fps (the audio is cut to the same span)")
    p.add_argument("--fps", type=float, default=2.0)
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--system-prompt", help="a system turn (default: the chat template's)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    p.add_argument("--attn", default="sdpa", help="attention implementation (sdpa, eager, flash_attention_2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the tiny model's weights and of `random`")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress bar / tables on stdout")
    return p


def eval_options(**options: Any) -> argparse.Namespace:
    """``sift eval``'s defaults with ``options`` set (``manifest=`` is required)."""
    if "manifest" not in options:
        raise TypeError("eval_options needs manifest=")
    args = add_arguments(argparse.ArgumentParser()).parse_args(["--manifest", str(options["manifest"])])
    for key, value in options.items():
        if not hasattr(args, key):
            raise TypeError(f"unknown sift eval option {key!r}")
        setattr(args, key, value)
    return args


class UsageError(ValueError):
    """Bad options of `sift eval` / `sift bench` (the command line prints it without a traceback)."""


# ------------------------------------------------------------------------------------------------ metrics
def accuracy(predicted: Sequence[str | None], answers: Sequence[str]) -> float:
    """Fraction of ``predicted`` letters equal to ``answers`` (``None``: no letter, wrong); NaN when empty.

    torchmetrics' ``MulticlassAccuracy(average="micro")`` over the letters, with class 26 for "no letter".
    """
    if not answers:
        return float("nan")
    preds = torch.tensor([_LETTERS.index(p) if p else len(_LETTERS) for p in predicted])
    target = torch.tensor([_LETTERS.index(a) for a in answers])
    try:
        from torchmetrics.functional.classification import multiclass_accuracy
    except ImportError:  # torchmetrics is in the `train` extra; the same number by hand
        return float((preds == target).float().mean())
    return float(multiclass_accuracy(preds, target, num_classes=len(_LETTERS) + 1, average="micro"))


# ------------------------------------------------------------------------------------------------ model
def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_model(model: str, processor: str | None, device: torch.device, dtype: torch.dtype, attn: str, seed: int = 0) -> tuple[Any, Any]:
    """(thinker, processor) for ``"tiny"`` (sift.tiny, random weights) or checkpoint folders."""
    from transformers import Qwen2_5OmniProcessor, Qwen2_5OmniThinkerForConditionalGeneration

    from sift.tiny import tiny_processor, tiny_thinker, tiny_thinker_config, tiny_tokenizer

    proc_name = processor if processor is not None else ("tiny" if model == "tiny" else model)
    if proc_name == "tiny":
        proc = tiny_processor(tiny_tokenizer())
    else:
        proc = Qwen2_5OmniProcessor.from_pretrained(proc_name)
    if model == "tiny":
        if proc_name != "tiny":
            raise UsageError("--model tiny needs the tiny processor (its token ids); drop --processor")
        thinker = tiny_thinker(tiny_thinker_config(proc.tokenizer), seed=seed, attn_implementation=attn, dtype=dtype)
    else:
        thinker = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(model, dtype=dtype, attn_implementation=attn)
    thinker = thinker.to(device).eval()
    tok = proc.tokenizer
    gen = thinker.generation_config
    if gen.pad_token_id is None:
        gen.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return thinker, proc


def prepare(processor: Any, sample: Any, clip: Any, system_prompt: str | None = None) -> dict[str, Any]:
    """Processor inputs of one sample (batch 1, generation prompt): its clip with audio and its MC prompt."""
    from sift.manifest import build_prompt

    messages: list[dict] = []
    if system_prompt is not None:
        messages.append({"role": "system", "content": [{"type": "text", "text": system_prompt}]})
    messages.append({"role": "user", "content": [{"type": "video"}, {"type": "text", "text": build_prompt(sample)}]})
    renderer = processor if getattr(processor, "chat_template", None) else processor.tokenizer
    text = renderer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    from sift.processing import audio_kwargs, video_size

    videos_kwargs: dict[str, Any] = dict(fps=clip.fps, do_sample_frames=False)
    size = video_size(processor)
    if size is not None:  # the processor's class-level size defaults would override the video processor's own
        videos_kwargs["size"] = size
    audio = [np.asarray(clip.audio, dtype=np.float32)]
    inputs = processor(
        text=[text],
        videos=[np.ascontiguousarray(clip.frames, dtype=np.uint8)],
        audio=audio,
        load_audio_from_video=True,
        audio_from_video_indices=[0],
        return_tensors="pt",
        padding=True,
        videos_kwargs=videos_kwargs,
        audio_kwargs=audio_kwargs(processor, audio),
    )
    inputs["use_audio_in_video"] = True
    return inputs


# ------------------------------------------------------------------------------------------------ run
def _configs(methods: Sequence[str], retentions: Sequence[float]) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    if "none" in methods:
        out.append(("none", 1.0))
    out += [(m, float(r)) for m in dict.fromkeys(methods) if m != "none" for r in retentions]
    return out


def run_eval(args: argparse.Namespace | None = None, **options: Any) -> dict[str, Any]:
    """Evaluate and write results.json / results.md / accuracy.png; returns the results dict.

    Pass parsed ``args`` or keyword options (``run_eval(manifest="m.json", methods=["none", "random"], out=dir)``).
    """
    if args is None:
        args = eval_options(**options)
    elif options:
        raise TypeError("pass either args or keyword options")
    threads = torch.get_num_threads()
    try:
        if args.threads:
            torch.set_num_threads(int(args.threads))
        return _run_eval(args)
    finally:
        torch.set_num_threads(threads)


def _run_eval(args: argparse.Namespace) -> dict[str, Any]:
    import sift
    from sift.manifest import SCHEMAS, extract_letter, read_manifest
    from sift.media import load_clip

    t_start = time.perf_counter()
    if args.methods:
        methods = list(dict.fromkeys(args.methods))
    else:
        methods = ["none"] + [m for m in sift.available_compressors() if m != "none" and (m != "omnisift" or args.selector)]
    unknown = [m for m in methods if m not in sift.available_compressors()]
    if unknown:
        raise UsageError(f"unknown method(s) {unknown}; available: {', '.join(sift.available_compressors())}")
    if "omnisift" in methods and not args.selector:
        raise UsageError(
            "omnisift needs a trained selector: pass --selector <checkpoint folder> (an OmniSIFTSelector "
            "save_pretrained folder), or leave omnisift out of --methods"
        )
    for r in args.retentions:
        if not 0.0 < float(r) <= 1.0:
            raise UsageError(f"retentions must be in (0, 1], got {r}")
    if args.schema != "auto" and args.schema not in SCHEMAS:
        raise UsageError(f"unknown schema {args.schema!r}; expected 'auto' or one of {SCHEMAS}")
    configs = _configs(methods, args.retentions)
    if not configs:
        raise UsageError("nothing to evaluate: give at least one method")

    samples = read_manifest(args.manifest, schema=args.schema, video_root=args.video_root)
    if args.limit is not None:
        samples = samples[: max(0, int(args.limit))]
    device = _device(args.device)
    dtype = _dtype(args.dtype, device)
    model, processor = load_model(args.model, args.processor, device, dtype, args.attn, args.seed)
    tok = processor.tokenizer

    selector = None
    if "omnisift" in methods:
        selector = sift.OmniSIFTSelector.from_pretrained(args.selector).eval()
    compressors: dict[tuple[str, float], Any] = {}
    for name, r in configs:
        extra: dict[str, Any] = {}
        if name == "omnisift":
            extra["selector"] = selector
        elif name == "random":
            extra["seed"] = args.seed
        compressors[(name, r)] = sift.get_compressor(name, retention=r, **extra)

    size = None if args.frame_size is None else (int(args.frame_size), int(args.frame_size))
    skipped: dict[str, str] = {}
    predictions: list[dict[str, Any]] = []
    progress = None
    if not args.quiet:
        from tqdm.auto import tqdm

        progress = tqdm(total=len(samples) * len(configs), desc="sift eval", unit="answer", file=sys.stderr)
    cached: tuple[str, Any] | None = None  # consecutive questions about one video decode it once
    for sample in samples:
        try:  # decoded and processed once, reused by every method x retention
            if cached is not None and cached[0] == sample.video:
                clip = cached[1]
            else:
                cached = None
                clip = load_clip(sample.video, fps=args.fps, size=size, max_frames=args.max_frames)
                cached = (sample.video, clip)
            if clip.audio is None or len(clip.audio) == 0:
                raise ValueError("the video has no audio track (sift eval feeds the video's audio)")
            inputs = prepare(processor, sample, clip, args.system_prompt).to(device)
        except FileNotFoundError:
            reason = f"video file not found: {sample.video}"
        except Exception as e:  # corrupt / undecodable / no audio / processing failure
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        else:
            reason = None
        if reason is not None:
            skipped[sample.id] = reason
            logger.warning("skipping sample %r: %s", sample.id, reason)
            if progress is not None:
                progress.update(len(configs))
            continue
        n_prompt = inputs["input_ids"].shape[1]
        for name, r in configs:
            with torch.no_grad(), sift.compress(model, compressors[(name, r)]) as session:
                out = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
            reply = tok.decode(out[0, n_prompt:], skip_special_tokens=True)
            letter = extract_letter(reply, sample.num_options)
            stats = session.stats
            predictions.append(
                dict(
                    id=sample.id,
                    category=sample.category if sample.category is not None else UNCATEGORIZED,
                    method=name,
                    retention=r,
                    answer=sample.answer,
                    reply=reply,
                    letter=letter,
                    correct=letter == sample.answer,
                    achieved_retention=stats.retention if stats is not None else 1.0,
                    llm_tokens=stats.tokens_after[0] if stats is not None else int(n_prompt),
                    input_tokens=int(n_prompt),
                )
            )
            if progress is not None:
                progress.set_postfix_str(f"{name}@{r:g}")
                progress.update(1)
        del inputs
    if progress is not None:
        progress.close()

    results = []
    evaluated = len(samples) - len(skipped)
    for name, r in configs:
        preds = [p for p in predictions if p["method"] == name and p["retention"] == r]
        cats: dict[str, list[dict[str, Any]]] = {}
        for p in preds:
            cats.setdefault(p["category"], []).append(p)
        results.append(
            dict(
                method=name,
                label="full tokens" if name == "none" else name,
                retention=r,
                n=len(preds),
                accuracy=accuracy([p["letter"] for p in preds], [p["answer"] for p in preds]),
                no_letter=sum(p["letter"] is None for p in preds),
                achieved_retention=float(np.mean([p["achieved_retention"] for p in preds])) if preds else float("nan"),
                mean_llm_tokens=float(np.mean([p["llm_tokens"] for p in preds])) if preds else float("nan"),
                per_category={
                    c: dict(n=len(ps), accuracy=accuracy([p["letter"] for p in ps], [p["answer"] for p in ps]))
                    for c, ps in sorted(cats.items())
                },
            )
        )
    result = dict(
        command=getattr(args, "command_line", None) or _command_line(args),
        manifest=str(args.manifest),
        schema=args.schema,
        model=args.model,
        processor=args.processor or ("tiny" if args.model == "tiny" else args.model),
        selector=args.selector,
        device=str(device),
        dtype=str(dtype).replace("torch.", ""),
        settings=dict(
            methods=methods, retentions=[float(r) for r in args.retentions], fps=args.fps, frame_size=args.frame_size,
            max_frames=args.max_frames, max_new_tokens=args.max_new_tokens, limit=args.limit, seed=args.seed,
            decoding="greedy",
        ),
        samples=len(samples),
        evaluated=evaluated,
        skipped=len(skipped),
        skip_reasons=skipped,
        categories=sorted({p["category"] for p in predictions}),
        results=results,
        predictions=predictions,
        wall_s=time.perf_counter() - t_start,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prefix = args.prefix or ""
    md = markdown(result)
    (out / f"{prefix}results.json").write_text(json.dumps(result, indent=2, default=str, allow_nan=True) + "\n")
    (out / f"{prefix}results.md").write_text(md)
    plot_accuracy(result, out / f"{prefix}accuracy.png")
    result["files"] = [str(out / f"{prefix}{n}") for n in ("results.json", "results.md", "accuracy.png")]
    if not args.quiet:
        print(md)
        print("wrote " + ", ".join(result["files"]))
    return result


def _command_line(args: argparse.Namespace) -> str:
    defaults = vars(eval_options(manifest=args.manifest))
    parts = ["sift eval", f"--manifest {args.manifest}"]
    for key, value in vars(args).items():
        if key in defaults and key != "manifest" and value != defaults[key] and value not in (None, False):
            flag = "--" + key.replace("_", "-")
            if value is True:
                parts.append(flag)
            elif isinstance(value, (list, tuple)):
                parts.append(flag + " " + " ".join(str(v) for v in value))
            else:
                parts.append(f"{flag} {value}")
    return " ".join(parts)


# ------------------------------------------------------------------------------------------------ report
def _pct(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def markdown(result: dict[str, Any]) -> str:
    rows = result["results"]
    rets = sorted({r["retention"] for r in rows if r["method"] != "none"})
    lines = [
        f"# sift eval: {Path(result['manifest']).name}",
        "",
        f"Model `{result['model']}` ({result['device']}, {result['dtype']}), greedy decoding, "
        f"{result['settings']['max_new_tokens']} new tokens. Samples: {result['samples']} in the manifest, "
        f"{result['evaluated']} evaluated, {result['skipped']} skipped (missing / undecodable / no audio).",
        "",
        "## Accuracy (%) by method and retention",
        "",
    ]
    full = next((r for r in rows if r["method"] == "none"), None)
    header = "| method | " + " | ".join(f"r = {r:g}" for r in rets) + " |" if rets else "| method | r = 1 |"
    lines += [header, "|" + "|".join(["---"] * (header.count("|") - 1)) + "|"]
    if full is not None:
        cells = [_pct(full["accuracy"])] * max(1, len(rets))
        lines.append("| full tokens (none) | " + " | ".join(cells) + " |")
    for m in dict.fromkeys(r["method"] for r in rows if r["method"] != "none"):
        by_r = {r["retention"]: r for r in rows if r["method"] == m}
        lines.append(f"| {m} | " + " | ".join(_pct(by_r[r]["accuracy"]) if r in by_r else "" for r in rets) + " |")
    lines += ["", "## Per category (%)", ""]
    cats = result["categories"]
    header = "| method | r | n | overall | " + " | ".join(cats) + " |"
    lines += [header, "|" + "|".join(["---"] * (header.count("|") - 1)) + "|"]
    for r in rows:
        cells = [_pct(r["per_category"][c]["accuracy"]) if c in r["per_category"] else "" for c in cats]
        lines.append(f"| {r['label']} | {r['retention']:g} | {r['n']} | {_pct(r['accuracy'])} | " + " | ".join(cells) + " |")
    lines += ["", "## Tokens", "", "| method | r | achieved retention | mean LLM tokens | replies without a letter |",
              "|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['retention']:g} | {r['achieved_retention']:.3f} | {r['mean_llm_tokens']:.0f} | {r['no_letter']} |"
        )
    if result["skip_reasons"]:
        lines += ["", "## Skipped samples", ""]
        lines += [f"- `{sid}`: {why}" for sid, why in result["skip_reasons"].items()]
    lines += ["", f"Wall time {result['wall_s']:.0f} s. Command: `{result['command']}`", ""]
    return "\n".join(lines)


def plot_accuracy(result: dict[str, Any], path: str | Path) -> None:
    """Accuracy vs retention, one line per method; the full-token accuracy as a dashed horizontal line."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    rows = result["results"]
    for m in dict.fromkeys(r["method"] for r in rows if r["method"] != "none"):
        pts = sorted((r["retention"], 100 * r["accuracy"]) for r in rows if r["method"] == m)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=m)
    full = next((r for r in rows if r["method"] == "none"), None)
    if full is not None and not math.isnan(full["accuracy"]):
        ax.axhline(100 * full["accuracy"], color="black", linestyle="--", label="full tokens")
    ax.set_xlabel("retention (fraction of audio+video tokens kept)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.set_xlim(0.0, 1.05)
    ax.set_title(f"{Path(result['manifest']).name}: {result['evaluated']} samples, model {Path(str(result['model'])).name}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(prog="sift eval", description=__doc__.split("\n\n")[0]))
    args = parser.parse_args(argv)
    args.command_line = "sift eval " + " ".join(sys.argv[1:] if argv is None else argv)
    run_eval(args)
    return 0
