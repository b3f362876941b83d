"""Where does OmniSelect-style's lead at the lowest retentions come from: the question, or its rules?

Why (issue 12): on held-out SynthAV v2, OmniSelect-style beats every selector at r = 0.05 and 0.10. It differs from
OmniSIFT in two ways: it reads the question (which modality leads, how its budget spreads over the windows), and
its within-frame rule (the least self-similar tokens survive). ``omniselect-noquery`` keeps the rules and drops
the question: every row is pruned "uniform" (the audio/video split with its audio advantage, budgets in
proportion to window sizes). If it falls to STVP's level, the question is the lead, and a learned selector needs
query-aware allocation to match it; if it keeps the lead, the within-frame rule does.

    python benchmarks/query_allocation.py --manifest runs/selector-v2/heldout/test.jsonl \\
        --model checkpoints/tiny-omni-v2 --selector checkpoints/omnisift-synthav-v2 \\
        --out benchmarks/results/query_allocation_synthav_v2

`sift eval` runs every method (the same greedy replies, letter extraction and per-category accuracy); this script
only registers the variants and writes the table. ``omniselect-noquery-stvp`` is the question-blind variant with
STVP's within-frame ranking instead of self-similarity: it separates the rule from the allocation. Nothing asserts.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

if __package__ in (None, ""):  # run as a script from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sift.apps.evaluate import run_eval  # noqa: E402
from sift.compressors import CompressionBatch, register, unregister  # noqa: E402
from sift.compressors.omniselect import OmniSelect  # noqa: E402
from sift.budget import video_frame_budgets  # noqa: E402
from sift.layout import Window  # noqa: E402
from sift.picks import top_positions  # noqa: E402
from sift.saliency import frame_saliency  # noqa: E402

VARIANT = "omniselect-noquery"
STVP_VARIANT = "omniselect-noquery-stvp"
METHODS = ("stvp", "omniselect", VARIANT, STVP_VARIANT, "omnisift")


@dataclass
class NoQueryOmniSelect(OmniSelect):
    """OmniSelect-style with the question ignored: every row with media is pruned "uniform"."""

    name: ClassVar[str] = VARIANT

    def decide(self, batch: CompressionBatch, b: int) -> tuple[str, Any]:
        decision, _ = super().decide(batch, b)
        return ("none" if decision == "none" else "uniform"), None


@dataclass
class NoQuerySTVPRanking(NoQueryOmniSelect):
    """The question-blind variant with STVP's within-frame ranking instead of self-similarity: isolates the rule."""

    name: ClassVar[str] = STVP_VARIANT

    def _select_video(self, embeds: torch.Tensor, windows: list[Window], keep_v: int, rel: Any) -> list[torch.Tensor]:
        if keep_v >= sum(w.num_video for w in windows):
            return [w.video for w in windows if w.num_video]
        out = []
        for w, counts in zip(windows, video_frame_budgets(windows, keep_v, None)):
            for frame, k, score in zip(w.frames, counts, frame_saliency(embeds, w)):
                if k:
                    out.append(top_positions(frame.positions, score, k))
        return out


def table(result: dict[str, Any], title: str) -> str:
    rows = result["results"]
    retentions = sorted({r["retention"] for r in rows if r["method"] != "none"})
    categories = sorted({c for r in rows for c in r["per_category"]})
    lines = [f"# {title}", "", "| method | " + " | ".join(f"r = {r:g}" for r in retentions) + " |",
             "|---|" + "---|" * len(retentions)]
    for method in METHODS:
        cells = [next((f"{100 * r['accuracy']:.1f}" for r in rows if r["method"] == method and r["retention"] == x), "")
                 for x in retentions]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", "Per category (accuracy %):", "", "| method | r | " + " | ".join(categories) + " |",
              "|---|---|" + "---|" * len(categories)]
    for method in METHODS:
        for r in sorted((r for r in rows if r["method"] == method), key=lambda r: r["retention"]):
            cells = [f"{100 * r['per_category'][c]['accuracy']:.1f}" if c in r["per_category"] else "" for c in categories]
            lines.append(f"| {method} | {r['retention']:g} | " + " | ".join(cells) + " |")
    lines += ["", f"n = {rows[0]['n']} questions per cell. Command: `{result['command']}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--selector", required=True, help="the OmniSIFT selector to compare (a save_pretrained folder)")
    parser.add_argument("--retentions", type=float, nargs="+", default=[0.05, 0.10, 0.15])
    parser.add_argument("--out", type=Path, required=True, help="path without extension for .md / .json")
    parser.add_argument("--max-new-tokens", type=int, default=2)
    parser.add_argument("--eval-out", default="runs/query-allocation", help="sift eval's own output folder")
    args = parser.parse_args(argv)
    register(VARIANT)(NoQueryOmniSelect)
    register(STVP_VARIANT)(NoQuerySTVPRanking)
    try:
        result = run_eval(manifest=args.manifest, model=args.model, selector=args.selector, methods=list(METHODS),
                          retentions=args.retentions, max_new_tokens=args.max_new_tokens, out=args.eval_out,
                          overwrite=True, quiet=True)
    finally:
        unregister(VARIANT)
        unregister(STVP_VARIANT)
    result["command"] = " ".join(["python benchmarks/query_allocation.py", *(sys.argv[1:] if argv is None else argv)])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({k: result[k] for k in ("command", "results")}, indent=2) + "\n")
    md = table(result, "OmniSelect-style with and without the question (accuracy %)")
    args.out.with_suffix(".md").write_text(md)
    print(md)
    return result


if __name__ == "__main__":
    main()
