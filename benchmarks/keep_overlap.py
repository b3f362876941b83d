"""Where do two methods' keep sets differ, on the questions one gets right and the other does not?

Why: `sift compare` says that two methods disagree on some questions and whether the gap is real; it cannot say
why. Two methods at one retention can keep the same number of audio and video tokens and still pick different
ones. This script runs both on every question (greedy reply, as `sift eval` scores it), records each one's kept
audio and video positions from the prefill's layout and selection, and reports how much of A's audio and of
A's video B kept too, grouped by who answered right. When the questions only one method gets right show the
same audio and different video, the gap is in the video ranking, whatever the question's category.

A method is ``NAME`` or ``NAME:KEY=VALUE,...``, its options as the compressor takes them (``true``, ``false``,
numbers and strings; ``selector=FOLDER`` for omnisift). Nothing asserts.

    python benchmarks/keep_overlap.py --model checkpoints/tiny-omni-v2 --manifest runs/large/heldout/test.jsonl \\
        --retention 0.25 --a omnizip:merge=false --b omnisift:selector=checkpoints/omnisift-synthav-v2 \\
        --out benchmarks/results/keep_overlap_synthav_v2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

if __package__ in (None, ""):  # run as a script from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sift  # noqa: E402
from sift.apps.evaluate import generate_reply, load_model, make_compressor, prepare  # noqa: E402
from sift.manifest import extract_letter, read_manifest  # noqa: E402
from sift.testbed.media import load_clip  # noqa: E402

GROUPS = ("both right", "only A right", "only B right", "both wrong")  # index: 2 * (A wrong) + (B wrong)


def parse_method(spec: str) -> tuple[str, dict[str, Any]]:
    """``"omnizip:merge=false,g=2"`` -> ("omnizip", {"merge": False, "g": 2}); values are read as JSON when they parse."""
    name, _, rest = spec.partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise SystemExit(f"keep_overlap: bad option {item!r} in {spec!r}; write KEY=VALUE")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    if name not in sift.available_compressors():
        raise SystemExit(f"keep_overlap: unknown method {name!r}; available: {', '.join(sift.available_compressors())}")
    return name, options


def kept_media(session: Any) -> tuple[set[int], set[int]]:
    """(kept audio positions, kept video positions) of the last prefill's first row."""
    row, keep = session.layout.rows[0], session.selection.keep[0].cpu()
    audio, video = row.audio_positions(), row.video_positions()
    return set(audio[keep[audio]].tolist()), set(video[keep[video]].tolist())


def answer(model: Any, processor: Any, inputs: Any, compressor: Any, sample: Any) -> dict[str, Any]:
    """One greedy answer and the media it was given."""
    with torch.no_grad(), sift.compress(model, compressor) as session:
        n_prompt = int(inputs["input_ids"].shape[1])
        out = model.generate(**inputs, max_new_tokens=2, do_sample=False)
    reply = processor.tokenizer.decode(out[0, n_prompt:], skip_special_tokens=True)
    audio, video = kept_media(session)
    return dict(correct=extract_letter(reply, sample.num_options) == sample.answer, audio=audio, video=video)


def share(mine: set[int], theirs: set[int]) -> float | None:
    return len(mine & theirs) / len(mine) if mine else None


def question(model: Any, processor: Any, sample: Any, compressors: tuple[Any, Any]) -> dict[str, Any]:
    inputs = prepare(processor, sample, load_clip(sample.video, fps=2.0))
    a, b = (answer(model, processor, inputs, c, sample) for c in compressors)
    group = GROUPS[2 * (not a["correct"]) + (not b["correct"])]
    return dict(
        id=sample.id, category=sample.category, group=group, a_right=a["correct"], b_right=b["correct"],
        audio_a=len(a["audio"]), audio_b=len(b["audio"]), video_a=len(a["video"]), video_b=len(b["video"]),
        audio_shared=share(a["audio"], b["audio"]), video_shared=share(a["video"], b["video"]),
    )


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per group: questions, and the mean share of A's kept audio / video that B kept too."""
    out = []
    for group in GROUPS:
        mine = [r for r in rows if r["group"] == group]
        mean = {k: _mean([r[k] for r in mine if r[k] is not None]) for k in ("audio_shared", "video_shared")}
        out.append(dict(group=group, n=len(mine), **mean))
    return out


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def markdown(result: dict[str, Any]) -> str:
    pct = lambda x: "-" if x is None else f"{100 * x:.1f}"  # noqa: E731
    lines = [
        f"# Keep sets of A = `{result['a']}` and B = `{result['b']}` at r = {result['retention']:g}",
        "",
        f"{result['n']} questions of `{result['manifest']}`, model `{result['model']}`; accuracy A {pct(result['accuracy_a'])}, "
        f"B {pct(result['accuracy_b'])}. Shared: the share (%) of A's kept tokens that B kept too.",
        "",
        "| questions | n | audio shared (%) | video shared (%) |",
        "|---|---|---|---|",
        *(f"| {g['group']} | {g['n']} | {pct(g['audio_shared'])} | {pct(g['video_shared'])} |" for g in result["groups"]),
        "",
        "| id | category | right | audio kept A / B | shared | video kept A / B | shared |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["disagreements"]:
        lines.append(f"| {r['id']} | {r['category']} | {'A' if r['a_right'] else 'B'} | {r['audio_a']} / {r['audio_b']} | "
                     f"{pct(r['audio_shared'])} | {r['video_a']} / {r['video_b']} | {pct(r['video_shared'])} |")
    return "\n".join(lines + ["", f"Wall time {result['wall_s']:.0f} s. Command: `{result['command']}`", ""])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--retention", type=float, required=True)
    parser.add_argument("--a", required=True, help="method A: NAME or NAME:KEY=VALUE,...")
    parser.add_argument("--b", required=True, help="method B")
    parser.add_argument("--limit", type=int, default=None, help="the first N questions only")
    parser.add_argument("--out", type=Path, help="path without extension for .md / .json")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    model, processor = load_model(args.model, None, torch.device("cpu"), torch.float32, "sdpa")
    compressors = tuple(make_compressor(name, args.retention, model.config, **opts)
                        for name, opts in (parse_method(args.a), parse_method(args.b)))
    samples = read_manifest(args.manifest)[: args.limit]
    rows = [question(model, processor, s, compressors) for s in tqdm(samples, desc="questions", unit="q")]
    result = dict(
        a=args.a, b=args.b, retention=args.retention, manifest=args.manifest, model=args.model, n=len(rows),
        accuracy_a=_mean([float(r["a_right"]) for r in rows]), accuracy_b=_mean([float(r["b_right"]) for r in rows]),
        groups=summary(rows), disagreements=[r for r in rows if r["a_right"] != r["b_right"]],
        wall_s=time.perf_counter() - start,
        command="python benchmarks/keep_overlap.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    )
    text = markdown(result)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    return dict(result, questions=rows)  # every question for the caller; the files keep groups and disagreements


if __name__ == "__main__":
    main()
