"""`sift eval`: multiple-choice accuracy of a Qwen2.5-Omni thinker under every method x retention, in one run.

For each sample of an audio-visual multiple-choice manifest (:func:`sift.manifest.read_manifest`: generic,
Daily-Omni or WorldSense records) the clip is decoded ONCE (:func:`sift.testbed.media.load_clip`, PyAV) and
processed ONCE by the real ``Qwen2_5OmniProcessor`` (frames + 16 kHz waveform as the video's audio track,
the question and lettered options of :func:`sift.manifest.build_prompt`); then the same inputs go through
greedy ``generate`` inside ``sift.compress`` for the full-token baseline (``none``, once, retention 1) and
every other method at every retention. The reply's option letter is read with
:func:`sift.manifest.extract_letter` (the first option letter the stripped, upper-cased reply starts
with; no letter counts as wrong). Accuracy is torchmetrics' micro-averaged multiclass accuracy (with one
extra class for "no letter"), overall and per category (plain mean of the same 0/1 outcomes when
torchmetrics is not installed).

Nothing is lost to one bad input:

- Bad manifest records (unparsable line, missing key, bad options or answer, duplicate id) are skipped,
  logged and listed with their line and reason under ``skipped_records``; ``--strict`` refuses the
  manifest at the first one instead. A manifest with no usable record is an error (exit 2).
- Samples whose video is missing, undecodable, or has no audio track (audio is always used) are skipped
  and counted, with the reason, like the training data module does.
- An answer whose generation raises is recorded as failed with its error (``failed``, ``failures``) and
  the run goes on; accuracy is over the answers produced. A run with no answer at all is an error (exit 1).
- Every answer is appended to ``<out>/<prefix>answers.jsonl`` (first line: the run's settings) and
  flushed as it is produced, so an interrupted run keeps what it finished. ``--resume`` continues it:
  answers already there are not redone (failed ones are retried), then the results are written from
  everything on disk. It is refused when the folder's run used other settings (manifest, schema, video
  root, model, processor, selector, dtype, attention, methods, retentions, fps, frame size, frames, new
  tokens, system prompt, seed); ``--limit`` may change, to extend a run. Without ``--resume`` a folder
  that already holds answers is refused (a forgotten ``--resume`` must not discard hours of answers);
  ``--overwrite`` starts over.

Writes ``<out>/<prefix>results.json`` (settings, counts, accuracy per method x retention and per category,
achieved retention and audio's share of the kept media tokens, every prediction, failures, skipped samples and records), ``results.md`` (the tables)
and ``accuracy.png`` (accuracy vs retention, one line per method, the full-token accuracy as a horizontal
line). Expected errors print one line (``SIFT_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

from sift.apps.runtime import (
    args_or_options,
    equivalent_command,
    progress_bar,
    resolve_device,
    resolve_dtype,
    torch_threads,
)
from sift.testbed.catalog import TINY_MODELS

__all__ = [
    "run_eval", "eval_options", "add_arguments", "accuracy", "UsageError", "EvalError", "AnswerLog", "run_settings",
    "load_model", "prepare", "prepare_prompt", "make_compressor", "generate_reply", "read_answers",
]

logger = logging.getLogger(__name__)

DEFAULT_RETENTIONS = (0.25, 0.35)
UNCATEGORIZED = "(none)"
ANSWERS_FILE = "answers.jsonl"
ANSWERS_FORMAT = 1
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

Key = tuple[str, str, float]  # (sample id, method, retention): one answer


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--manifest", required=True, help="JSON / JSONL manifest (generic, dailyomni or worldsense records)")
    p.add_argument("--schema", default="auto", help="auto, generic, dailyomni or worldsense")
    p.add_argument("--video-root", help="folder relative video paths / ids resolve against (default: the manifest's)")
    p.add_argument("--strict", action="store_true",
                   help="refuse the manifest at its first bad record (default: skip bad records and list them, "
                   "with their line, under skipped_records)")
    p.add_argument("--model", default="tiny", help="'tiny' / 'tiny-qwen3' (random weights, offline) or a checkpoint "
                   "folder or Hub id of Qwen2.5-Omni or Qwen3-Omni (full model or thinker)")
    p.add_argument("--processor", help="a processor folder or Hub id (default: --model's; a tiny model brings its own)")
    p.add_argument("--methods", nargs="+",
                   help="compressors; 'none' is the full-token baseline (default: every registered method, "
                   "omnisift only with --selector)")
    p.add_argument("--retentions", type=float, nargs="+", default=list(DEFAULT_RETENTIONS))
    p.add_argument("--selector", help="omnisift: a trained OmniSIFTSelector checkpoint folder (required for omnisift)")
    p.add_argument("--limit", type=int, help="evaluate only the first N (usable) samples of the manifest")
    p.add_argument("--out", default="eval-results", help="output folder")
    p.add_argument("--prefix", default="", help="file name prefix: <out>/<prefix>results.json, ...")
    p.add_argument("--resume", action="store_true",
                   help=f"continue the run in --out: keep the answers in <out>/<prefix>{ANSWERS_FILE}, retry failed "
                   "ones, do the rest; refused if that run used other settings (without --resume, a folder that "
                   "holds answers is refused, see --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run even if --out holds an earlier run's answers (they are discarded)")
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


class EvalError(RuntimeError):
    """The run ended without a single answer to score (every sample skipped or failed): no accuracy exists.

    Raised after results.json was written, so the skip and failure reasons are on disk.
    """


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
def load_model(model: str, processor: str | None, device: torch.device, dtype: torch.dtype, attn: str, seed: int = 0) -> tuple[Any, Any]:
    """(thinker, processor) for a tiny model name (``tiny``, ``tiny-qwen3``: random weights, offline) or a checkpoint.

    A checkpoint (a folder or a Hub id) of any supported family: ``Qwen/Qwen2.5-Omni-7B``,
    ``Qwen/Qwen3-Omni-30B-A3B-Instruct``; its config.json says which thinker class (`sift.models.load_thinker`).
    """
    from transformers import AutoProcessor

    from sift.models import load_thinker
    from sift.testbed.catalog import tiny_config_named, tiny_model_named, tiny_processor_named

    proc_name = processor if processor is not None else model
    proc = tiny_processor_named(proc_name) if proc_name in TINY_MODELS else AutoProcessor.from_pretrained(proc_name)
    if model in TINY_MODELS:
        if proc_name != model:
            raise UsageError(f"--model {model} needs its own tiny processor (its token ids); drop --processor")
        config = tiny_config_named(model, proc.tokenizer, attn=attn)
        thinker = tiny_model_named(model, config, seed=seed, attn=attn, dtype=dtype)
    else:
        thinker = load_thinker(model, dtype=dtype, attn_implementation=attn)
    thinker = thinker.to(device).eval()
    tok = proc.tokenizer
    gen = thinker.generation_config
    if gen.pad_token_id is None:
        gen.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return thinker, proc


def prepare(processor: Any, sample: Any, clip: Any, system_prompt: str | None = None) -> dict[str, Any]:
    """Processor inputs of one sample (batch 1, generation prompt): its clip with audio and its MC prompt."""
    from sift.manifest import build_prompt

    return prepare_prompt(processor, build_prompt(sample), clip, system_prompt)


def prepare_prompt(processor: Any, prompt: str, clip: Any, system_prompt: str | None = None) -> dict[str, Any]:
    """Processor inputs of one user turn ``<video with its audio><prompt>`` (batch 1, generation prompt).

    Why public: the lmms-eval model (`sift.apps.lmms_eval_model`) gets its prompt text from the harness and must
    build exactly the inputs `sift eval` builds, for the two to agree answer for answer.
    """
    messages: list[dict] = []
    if system_prompt is not None:
        messages.append({"role": "system", "content": [{"type": "text", "text": system_prompt}]})
    messages.append({"role": "user", "content": [{"type": "video"}, {"type": "text", "text": prompt}]})
    renderer = processor if getattr(processor, "chat_template", None) else processor.tokenizer
    text = renderer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    from sift.testbed.processing import audio_kwargs, video_size

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


def make_compressor(name: str, retention: float | None, model_config: Any, *, selector: Any = None, seed: int = 0,
                    **options: Any) -> Any:
    """The compressor of one method as `sift eval` runs it; a selector for another model is a usage error.

    ``selector``: a loaded `OmniSIFTSelector` or a checkpoint folder (omnisift); ``seed`` seeds `random`.
    """
    import sift

    if name == "omnisift":
        if selector is None:
            raise UsageError("omnisift needs a trained selector: pass a checkpoint folder (an OmniSIFTSelector save_pretrained)")
        if not isinstance(selector, sift.OmniSIFTSelector):
            selector = sift.OmniSIFTSelector.from_pretrained(selector).eval()
        try:  # a selector for another model fails every sample: say so once, before any
            selector.check_model(model_config)
        except ValueError as e:
            raise UsageError(f"selector: {e}") from None
        options["selector"] = selector
    elif name == "random":
        options.setdefault("seed", seed)
    return sift.get_compressor(name, retention=retention, **options)


def generate_reply(model: Any, tokenizer: Any, inputs: Any, compressor: Any, max_new_tokens: int) -> tuple[str, Any, int]:
    """(greedy reply text, the prefill's `CompressionStats` or None, prompt tokens) of one input, compressed."""
    import sift

    n_prompt = int(inputs["input_ids"].shape[1])
    with torch.no_grad(), sift.compress(model, compressor) as session:
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0, n_prompt:], skip_special_tokens=True), session.stats, n_prompt


# ------------------------------------------------------------------------------------------------ answers
def _key(record: dict[str, Any]) -> Key:
    return str(record["id"]), str(record["method"]), float(record["retention"])


class AnswerLog:
    """``<out>/<prefix>answers.jsonl``: the run's settings on line 1, then one JSON line per answer.

    Each line is flushed as it is written, so a crash or Ctrl-C keeps every finished answer and
    ``--resume`` can continue from the file. The settings line is what makes resuming safe: answers made
    with another model or other methods are never mixed into one table.
    """

    def __init__(self, path: Path, answers: dict[Key, dict[str, Any]], file: TextIO):
        self.path, self.answers, self._file = path, answers, file
        self.new: set[Key] = set()  # written by this run (the others were read back from an earlier one)

    @classmethod
    def open(cls, path: str | Path, settings: dict[str, Any], resume: bool = False, overwrite: bool = False) -> AnswerLog:
        """Start a new log, or (``resume``) continue the one at ``path`` when it was made with ``settings``.

        A new log over an earlier run's answers needs ``overwrite``: they are discarded.
        """
        path = Path(path)
        if resume and overwrite:
            raise UsageError("--resume continues the answers in --out and --overwrite discards them: pass one")
        settings = json.loads(json.dumps(settings))  # as it will read back (tuples -> lists)
        previous = None
        if path.is_file() and path.stat().st_size and not overwrite:
            try:
                previous = read_answers(path)
            except UsageError as e:
                raise UsageError(f"{e}; move it or choose another --out") from None
        if previous is not None and not resume and previous[1]:
            raise UsageError(
                f"{path} already holds {len(previous[1])} answers of an earlier run: pass --resume to continue it "
                "or --overwrite to start over, or choose another --out"
            )
        if overwrite and path.is_file():
            logger.warning("--overwrite: discarding the earlier answers in %s", path)
        if resume and previous is not None:
            _check_same_run(path, previous[0], settings)
            file = path.open("a", encoding="utf-8")
            if not _ends_with_newline(path):
                file.write("\n")  # an interrupted write left half a line: end it, it is ignored on reading
            return cls(path, previous[1], file)
        path.parent.mkdir(parents=True, exist_ok=True)
        file = path.open("w", encoding="utf-8")
        file.write(json.dumps({"sift_eval_answers": ANSWERS_FORMAT, "settings": settings}) + "\n")
        file.flush()
        return cls(path, {}, file)

    def done(self, key: Key) -> bool:
        """Answered without error (a failed answer is tried again)."""
        return self.answers.get(key, {}).get("status") == "ok"

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, default=str) + "\n")
        self._file.flush()
        self.answers[_key(record)] = record
        self.new.add(_key(record))

    def close(self) -> None:
        self._file.close()


def read_answers(path: Path) -> tuple[dict[str, Any], dict[Key, dict[str, Any]]]:
    """(settings, answers by key; the last line of a key wins) of an answers file; half-written lines are ignored."""
    lines = path.read_text(encoding="utf-8").splitlines()
    try:
        header = json.loads(lines[0])
        settings = header["settings"] if header.get("sift_eval_answers") == ANSWERS_FORMAT else None
    except (ValueError, KeyError, TypeError, AttributeError):
        settings = None
    if not isinstance(settings, dict):
        raise UsageError(f"{path} is not a sift eval answers file (format {ANSWERS_FORMAT})")
    answers: dict[Key, dict[str, Any]] = {}
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            answers[_key(record)] = record
        except (ValueError, KeyError, TypeError):
            logger.warning("%s: line %d is not a complete answer (an interrupted write?); ignored", path, lineno)
    return settings, answers


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(-1, 2)
        return f.read(1) == b"\n"


def _check_same_run(path: Path, old: dict[str, Any], new: dict[str, Any]) -> None:
    diffs = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if diffs:
        k = diffs[0]
        more = f"; also {', '.join(diffs[1:])}" if len(diffs) > 1 else ""
        raise UsageError(
            f"cannot --resume from {path}: it was made with other settings ({k}: {old.get(k)!r} there, "
            f"{new.get(k)!r} now{more}); use the same options or another --out"
        )


def _resolved(value: Any) -> Any:
    """An existing path as an absolute one (the same run from another folder), anything else as given."""
    if value is None or value in TINY_MODELS or not Path(str(value)).exists():
        return value
    return str(Path(str(value)).resolve())


def run_settings(args: argparse.Namespace, methods: Sequence[str], dtype: torch.dtype) -> dict[str, Any]:
    """Everything that changes the answers: what ``--resume`` requires to be the same."""
    processor = args.processor or args.model
    return dict(
        manifest=_resolved(args.manifest), schema=args.schema, video_root=_resolved(args.video_root),
        model=_resolved(args.model), processor=_resolved(processor), selector=_resolved(args.selector),
        dtype=str(dtype).replace("torch.", ""), attn=args.attn, methods=sorted(methods),
        retentions=sorted(float(r) for r in args.retentions), fps=float(args.fps), frame_size=args.frame_size,
        max_frames=args.max_frames, max_new_tokens=args.max_new_tokens, system_prompt=args.system_prompt, seed=args.seed,
    )


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

    Raises:
        UsageError: bad options, a manifest without usable records, a bad record with ``strict``, or an
            ``--out`` folder that holds another run's answers.
        EvalError: not one answer could be produced (results.json is still written).
        KeyboardInterrupt: the answers so far stay in answers.jsonl; ``resume=True`` continues.
    """
    args = args_or_options(args, options, eval_options)
    with torch_threads(args.threads):
        return _run_eval(args)


def _methods(args: argparse.Namespace) -> list[str]:
    """The methods to run, checked (with the retentions and schema) before anything is loaded."""
    import sift
    from sift.manifest import SCHEMAS

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
    if not methods:
        raise UsageError("nothing to evaluate: give at least one method")
    return methods


def _read_samples(args: argparse.Namespace) -> tuple[list[Any], list[Any]]:
    """(usable samples, up to --limit; skipped records); refuses a manifest that leaves nothing to evaluate."""
    from sift.manifest import ManifestError, read_manifest_report

    try:
        report = read_manifest_report(args.manifest, schema=args.schema, video_root=args.video_root, strict=args.strict)
    except ManifestError as e:  # only with --strict
        raise UsageError(f"--strict: refusing the manifest, {e.place}: {e.reason}") from e
    samples = report.samples if args.limit is None else report.samples[: max(0, int(args.limit))]
    if not samples:
        if report.skipped:
            first = report.skipped[0]
            why = f"all {len(report.skipped)} records are bad (first: {first.place}: {first.reason})"
        else:
            why = "--limit leaves no sample" if report.samples else "it has no records"
        raise UsageError(f"nothing to evaluate in {args.manifest}: {why}")
    return samples, report.skipped


def _run_eval(args: argparse.Namespace) -> dict[str, Any]:
    t_start = time.perf_counter()
    methods = _methods(args)
    configs = _configs(methods, args.retentions)
    samples, bad_records = _read_samples(args)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    out, prefix = Path(args.out), args.prefix or ""
    log = AnswerLog.open(out / f"{prefix}{ANSWERS_FILE}", run_settings(args, methods, dtype), args.resume, args.overwrite)
    try:
        model, processor = load_model(args.model, args.processor, device, dtype, args.attn, args.seed)
        compressors = _compressors(args, configs, model.config)
        skipped = _answer_all(args, samples, configs, model, processor, compressors, log, device)
    finally:
        log.close()
    result = _result(args, methods, configs, samples, skipped, bad_records, log)
    result.update(device=str(device), dtype=str(dtype).replace("torch.", ""), wall_s=time.perf_counter() - t_start)
    _write_outputs(result, out, prefix, args.quiet)
    if not result["predictions"]:
        first = (result["failures"] and result["failures"][0]["error"]) or next(iter(result["skip_reasons"].values()), "")
        raise EvalError(
            f"no answer to score: {result['skipped']} of {result['samples']} samples skipped, {result['failed']} "
            f"answers failed (first: {first}; all reasons in {result['files'][0]})"
        )
    return result


def _compressors(args: argparse.Namespace, configs: Sequence[tuple[str, float]], model_config: Any) -> dict[tuple[str, float], Any]:
    import sift

    selector = None
    if any(name == "omnisift" for name, _ in configs):
        selector = sift.OmniSIFTSelector.from_pretrained(args.selector).eval()
    try:
        return {(name, r): make_compressor(name, r, model_config, selector=selector, seed=args.seed) for name, r in configs}
    except UsageError as e:
        raise UsageError(f"--selector {args.selector}: {str(e).removeprefix('selector: ')}") from None


class _ClipLoader:
    """Decodes clips, keeping the last one: consecutive questions about one video decode it once."""

    def __init__(self, args: argparse.Namespace):
        self.fps, self.max_frames = args.fps, args.max_frames
        self.size = None if args.frame_size is None else (int(args.frame_size), int(args.frame_size))
        self._last: tuple[str, Any] | None = None

    def __call__(self, video: str) -> Any:
        from sift.testbed.media import load_clip

        if self._last is None or self._last[0] != video:
            self._last = None
            self._last = (video, load_clip(video, fps=self.fps, size=self.size, max_frames=self.max_frames))
        return self._last[1]


def _sample_inputs(
    load: _ClipLoader, processor: Any, sample: Any, args: argparse.Namespace, device: torch.device
) -> tuple[Any, str | None]:
    """(processor inputs on ``device``, None), or (None, why the sample is skipped)."""
    try:  # decoded and processed once, reused by every method x retention
        clip = load(sample.video)
        if clip.audio is None or len(clip.audio) == 0:
            raise ValueError("the video has no audio track (sift eval feeds the video's audio)")
        return prepare(processor, sample, clip, args.system_prompt).to(device), None
    except FileNotFoundError:
        return None, f"video file not found: {sample.video}"
    except Exception as e:  # corrupt / undecodable / no audio / processing failure
        return None, _error_text(e)


def _error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e).strip() else ''}".rstrip(": ")


def _answer_all(
    args: argparse.Namespace, samples: Sequence[Any], configs: Sequence[tuple[str, float]], model: Any, processor: Any,
    compressors: dict[tuple[str, float], Any], log: AnswerLog, device: torch.device,
) -> dict[str, str]:
    """Answer every (sample, method, retention) not already in ``log``; returns the skipped samples' reasons."""
    todo = {s.id: [c for c in configs if not log.done((s.id, *c))] for s in samples}
    skipped: dict[str, str] = {}
    load = _ClipLoader(args)
    written = 0
    with progress_bar(args.quiet, sum(len(v) for v in todo.values()), "sift eval", "answer") as progress:
        try:
            for sample in samples:
                if not todo[sample.id]:
                    continue
                inputs, reason = _sample_inputs(load, processor, sample, args, device)
                if reason is not None:
                    skipped[sample.id] = reason
                    logger.warning("skipping sample %r: %s", sample.id, reason)
                    progress.update(len(todo[sample.id]))
                    continue
                for name, r in todo[sample.id]:
                    progress.set_postfix_str(f"{name}@{r:g}")
                    log.write(_answer(model, processor.tokenizer, inputs, compressors[(name, r)], sample, name, r, args))
                    written += 1
                    progress.update(1)
                del inputs
        except KeyboardInterrupt:
            logger.warning("interrupted after %d new answers; they are in %s: run the same command with --resume to "
                           "continue", written, log.path)
            raise
    return skipped


def _answer(model: Any, tok: Any, inputs: Any, compressor: Any, sample: Any, name: str, r: float,
            args: argparse.Namespace) -> dict[str, Any]:
    """One answer as an answers.jsonl record; an exception becomes a failed record, not a lost run."""
    from sift.manifest import extract_letter

    record: dict[str, Any] = dict(
        id=sample.id, category=sample.category if sample.category is not None else UNCATEGORIZED, method=name,
        retention=r, answer=sample.answer,
    )
    try:
        reply, stats, n_prompt = generate_reply(model, tok, inputs, compressor, args.max_new_tokens)
    except Exception as e:  # one failing input must not cost the run; KeyboardInterrupt still stops it
        logger.warning("sample %r, %s at retention %g failed: %s", sample.id, name, r, _error_text(e))
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # a CUDA out-of-memory should not doom the next answers
        return dict(record, status="failed", error=_error_text(e))
    letter = extract_letter(reply, sample.num_options)
    return dict(
        record, status="ok", reply=reply, letter=letter, correct=letter == sample.answer,
        achieved_retention=stats.retention if stats is not None else 1.0,
        llm_tokens=stats.tokens_after[0] if stats is not None else n_prompt, input_tokens=n_prompt,
        audio_kept=stats.audio_after[0] if stats is not None else None,
        video_kept=stats.video_after[0] if stats is not None else None,
    )


# ------------------------------------------------------------------------------------------------ results
def _collect(samples: Sequence[Any], configs: Sequence[tuple[str, float]], skipped: dict[str, str],
             answers: dict[Key, dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """This run's answers (new or read back), in manifest x config order; skipped samples have none."""
    for s in samples:
        if s.id in skipped:
            continue
        for name, r in configs:
            record = answers.get((s.id, name, r))
            if record is not None:
                yield record


def _row(name: str, r: float, preds: list[dict[str, Any]], failed: int) -> dict[str, Any]:
    cats: dict[str, list[dict[str, Any]]] = {}
    for p in preds:
        cats.setdefault(p["category"], []).append(p)
    return dict(
        method=name,
        label="full tokens" if name == "none" else name,
        retention=r,
        n=len(preds),
        failed=failed,
        accuracy=accuracy([p["letter"] for p in preds], [p["answer"] for p in preds]),
        no_letter=sum(p["letter"] is None for p in preds),
        achieved_retention=float(np.mean([p["achieved_retention"] for p in preds])) if preds else float("nan"),
        mean_llm_tokens=float(np.mean([p["llm_tokens"] for p in preds])) if preds else float("nan"),
        audio_share=_audio_share(preds),
        per_category={
            c: dict(n=len(ps), accuracy=accuracy([p["letter"] for p in ps], [p["answer"] for p in ps]))
            for c, ps in sorted(cats.items())
        },
    )


def _result(args: argparse.Namespace, methods: list[str], configs: Sequence[tuple[str, float]], samples: Sequence[Any],
            skipped: dict[str, str], bad_records: Sequence[Any], log: AnswerLog) -> dict[str, Any]:
    """The results dict of everything on disk for this run's samples and configs."""
    records = list(_collect(samples, configs, skipped, log.answers))
    predictions = [p for p in records if p.get("status") == "ok"]
    failures = [dict(id=p["id"], method=p["method"], retention=p["retention"], error=p.get("error", ""))
                for p in records if p.get("status") != "ok"]
    rows = [
        _row(name, r, [p for p in predictions if (p["method"], p["retention"]) == (name, r)],
             sum((f["method"], f["retention"]) == (name, r) for f in failures))
        for name, r in configs
    ]
    return dict(
        command=getattr(args, "command_line", None) or _command_line(args),
        manifest=str(args.manifest),
        schema=args.schema,
        model=args.model,
        processor=args.processor or args.model,
        selector=args.selector,
        settings=dict(
            methods=methods, retentions=[float(r) for r in args.retentions], fps=args.fps, frame_size=args.frame_size,
            max_frames=args.max_frames, max_new_tokens=args.max_new_tokens, limit=args.limit, seed=args.seed,
            decoding="greedy", strict=bool(args.strict),
        ),
        samples=len(samples),
        evaluated=len(samples) - len(skipped),
        skipped=len(skipped),
        skip_reasons=skipped,
        skipped_records=[r.as_dict() for r in bad_records],
        failed=len(failures),
        failures=failures,
        resumed=sum(_key(p) not in log.new for p in records),
        answers_file=str(log.path),
        categories=sorted({p["category"] for p in predictions}),
        results=rows,
        predictions=predictions,
    )


def _command_line(args: argparse.Namespace) -> str:
    return equivalent_command("sift eval", args, vars(eval_options(manifest=args.manifest)), given=("manifest",))


def _write_outputs(result: dict[str, Any], out: Path, prefix: str, quiet: bool) -> None:
    """results.json, results.md and accuracy.png (their paths go to ``result["files"]``); the table on stdout."""
    out.mkdir(parents=True, exist_ok=True)
    result["files"] = [str(out / f"{prefix}{n}") for n in ("results.json", "results.md", "accuracy.png")]
    md = markdown(result)
    (out / f"{prefix}results.json").write_text(json.dumps(result, indent=2, default=str, allow_nan=True) + "\n")
    (out / f"{prefix}results.md").write_text(md)
    plot_accuracy(result, out / f"{prefix}accuracy.png")
    if not quiet:
        print(md)
        print("wrote " + ", ".join(result["files"]))


# ------------------------------------------------------------------------------------------------ report
def _pct(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def markdown(result: dict[str, Any]) -> str:
    """results.md: counts, accuracy by method x retention, per category, tokens, and what was left out."""
    lines = [
        f"# sift eval: {Path(result['manifest']).name}",
        "",
        f"Model `{result['model']}` ({result['device']}, {result['dtype']}), greedy decoding, "
        f"{result['settings']['max_new_tokens']} new tokens. Samples: {result['samples']} in the manifest, "
        f"{result['evaluated']} evaluated, {result['skipped']} skipped (missing / undecodable / no audio). "
        f"Bad manifest records skipped: {len(result['skipped_records'])}. Failed answers (not in the accuracy): "
        f"{result['failed']}." + (f" Answers resumed from an earlier run: {result['resumed']}." if result.get("resumed") else ""),
        "",
    ]
    lines += _accuracy_table(result["results"]) + _category_table(result) + _token_table(result["results"])
    lines += _left_out(result)
    lines += ["", f"Wall time {result['wall_s']:.0f} s. Command: `{result['command']}`", ""]
    return "\n".join(lines)


def _accuracy_table(rows: list[dict[str, Any]]) -> list[str]:
    rets = sorted({r["retention"] for r in rows if r["method"] != "none"})
    lines = ["## Accuracy (%) by method and retention", ""]
    header = "| method | " + " | ".join(f"r = {r:g}" for r in rets) + " |" if rets else "| method | r = 1 |"
    lines += [header, "|" + "|".join(["---"] * (header.count("|") - 1)) + "|"]
    full = next((r for r in rows if r["method"] == "none"), None)
    if full is not None:
        cells = [_pct(full["accuracy"])] * max(1, len(rets))
        lines.append("| full tokens (none) | " + " | ".join(cells) + " |")
    for m in dict.fromkeys(r["method"] for r in rows if r["method"] != "none"):
        by_r = {r["retention"]: r for r in rows if r["method"] == m}
        lines.append(f"| {m} | " + " | ".join(_pct(by_r[r]["accuracy"]) if r in by_r else "" for r in rets) + " |")
    return lines


def _category_table(result: dict[str, Any]) -> list[str]:
    cats = result["categories"]
    lines = ["", "## Per category (%)", ""]
    header = "| method | r | n | overall | " + " | ".join(cats) + " |"
    lines += [header, "|" + "|".join(["---"] * (header.count("|") - 1)) + "|"]
    for r in result["results"]:
        cells = [_pct(r["per_category"][c]["accuracy"]) if c in r["per_category"] else "" for c in cats]
        lines.append(f"| {r['label']} | {r['retention']:g} | {r['n']} | {_pct(r['accuracy'])} | " + " | ".join(cells) + " |")
    return lines


def _audio_share(preds: list[dict[str, Any]]) -> float:
    """Audio's share of the kept media tokens, over the answers that record it (answers files written before
    the counts were recorded have none: nan). Why: it is how a method spends its budget between modalities."""
    counted = [p for p in preds if p.get("audio_kept") is not None]
    kept = sum(p["audio_kept"] + p["video_kept"] for p in counted)
    return sum(p["audio_kept"] for p in counted) / kept if kept else float("nan")


def _token_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["", "## Tokens", "",
             "| method | r | achieved retention | mean LLM tokens | audio share of kept media | replies without a letter | failed |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        share = r.get("audio_share", float("nan"))
        lines.append(
            f"| {r['label']} | {r['retention']:g} | {r['achieved_retention']:.3f} | {r['mean_llm_tokens']:.0f} "
            f"| {'' if share != share else f'{share:.2f}'} | {r['no_letter']} | {r['failed']} |"
        )
    return lines


def _left_out(result: dict[str, Any]) -> list[str]:
    """Skipped samples, failed answers and skipped manifest records, each with its reason."""
    lines: list[str] = []
    if result["skip_reasons"]:
        lines += ["", "## Skipped samples", ""]
        lines += [f"- `{sid}`: {why}" for sid, why in result["skip_reasons"].items()]
    if result["failures"]:
        lines += ["", "## Failed answers (not counted in the accuracy)", ""]
        lines += [f"- `{f['id']}` {f['method']} @ {f['retention']:g}: {f['error']}" for f in result["failures"]]
    if result["skipped_records"]:
        lines += ["", "## Skipped manifest records", ""]
        lines += [f"- {r['location']}" + (f" (line {r['line']})" if r["line"] and "line" not in r["location"] else "")
                  + f": {r['reason']}" for r in result["skipped_records"]]
    return lines
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
    if ax.get_legend_handles_labels()[0]:  # nothing was answered: an empty plot, without a legend warning
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
