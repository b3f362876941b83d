"""How well does each selector rank tokens the way the frozen model's answer needs them?

Why: accuracy after selection says whether a selector works, not why. The teacher of importance
distillation (`train.importance.gate_importance`: d log p(answer) / d gate of every media token, from the
full-token model) says which tokens the answer leans on. This script compares each selector's scores with it
on held-out questions, per top-k unit (each video frame; each audio clip):

* spearman: rank correlation of the selector's scores with the teacher's importance (mean over units);
* recall@r: of the tokens the teacher ranks in a unit's top `r` (at least one), the fraction the selector
  also ranks there.

Selectors: `untrained` (init="omnizip": STVP for video, OmniZip's saliency for audio) and every
`--selector` folder. Nothing here asserts; it prints and writes a table.

    python benchmarks/importance_agreement.py --model checkpoints/tiny-omni-v2 \\
        --manifest runs/selector-v2/heldout/test.jsonl --selector runs/selector-v2/selectors/* \\
        --out benchmarks/results/importance_agreement_synthav_v2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sift  # noqa: E402
from sift.compressors.omnisift import OmniSIFT  # noqa: E402
from sift.hf_internals import THINKER_INPUT_KEYS  # noqa: E402
from sift.manifest import read_manifest  # noqa: E402
from sift.selector import OmniSIFTSelector  # noqa: E402
from train.data import AVQADataset, collate  # noqa: E402
from train.importance import gate_importance, has_order, selection_groups  # noqa: E402


def _ranks(x: torch.Tensor) -> torch.Tensor:
    return x.argsort().argsort().double()


def agreement(scores: torch.Tensor, importance: torch.Tensor, r: float) -> tuple[float, float]:
    """(spearman, recall@r) of one unit's scores against the teacher's importance."""
    rho = float(torch.corrcoef(torch.stack([_ranks(scores), _ranks(importance)]))[0, 1])
    k = max(1, int(round(r * scores.numel())))
    top_teacher = set(importance.topk(k).indices.tolist())
    top_selector = set(scores.topk(k).indices.tolist())
    return rho, len(top_teacher & top_selector) / k


def selector_scores(model, selector: OmniSIFTSelector, inputs: dict, retention: float):
    """The selector's scores (eval mode) and the layout of one batch."""
    comp = OmniSIFT(retention=retention, selector=selector.eval())
    with torch.no_grad(), sift.compress(model, comp) as session:
        model(**inputs)
    return session.selection.scores, session.layout, comp.audio_rule


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--selector", nargs="*", default=[], help="selector folders (save_pretrained)")
    parser.add_argument("--samples", type=int, default=60, help="questions to use (the first N)")
    parser.add_argument("--retention", type=float, default=0.1, help="r of recall@r (and the selection run)")
    parser.add_argument("--out", type=Path, help="path without extension for .md / .json")
    args = parser.parse_args(argv)

    from transformers import AutoConfig, Qwen2_5OmniProcessor, Qwen2_5OmniThinkerForConditionalGeneration

    model = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(args.model, attn_implementation="sdpa")
    model.requires_grad_(False).eval()
    processor = Qwen2_5OmniProcessor.from_pretrained(args.model)
    selectors = {"untrained": OmniSIFTSelector.from_config(AutoConfig.from_pretrained(args.model))}
    selectors.update({Path(p).name: OmniSIFTSelector.from_pretrained(p) for p in args.selector})
    samples = read_manifest(args.manifest)[: args.samples]
    data = AVQADataset(samples, processor, train=True)
    stats: dict[str, dict[str, list[float]]] = {n: {"video": [], "audio": [], "video_recall": [], "audio_recall": []} for n in selectors}
    for i in range(len(data)):
        item = data[i]
        if item is None:
            continue
        batch = collate([item], processor.tokenizer.pad_token_id)
        inputs = {k: batch[k] for k in THINKER_INPUT_KEYS if batch.get(k) is not None}
        importance = gate_importance(model, inputs, batch["labels"])[0]
        video = sift.layout_of(inputs, model.config).video_mask(torch.device("cpu"))[0]
        for name, selector in selectors.items():
            scores, layout, rule = selector_scores(model, selector, inputs, args.retention)
            for _, pos in selection_groups(layout, rule):
                kind = "video" if bool(video[pos[0]]) else "audio"
                if not has_order(importance[pos]):
                    continue
                rho, recall = agreement(scores[0, pos].float(), importance[pos].float(), args.retention)
                stats[name][kind].append(rho)
                stats[name][f"{kind}_recall"].append(recall)
    summary = {n: {k: statistics.mean(v) if v else float("nan") for k, v in s.items()} for n, s in stats.items()}
    lines = [
        f"# Selector scores vs the full-token model's importance ({len(data)} questions of {args.manifest})",
        "",
        f"Per top-k unit (video frame / audio clip); recall at r = {args.retention:g}.",
        "",
        "| selector | video spearman | video recall | audio spearman | audio recall |",
        "|---|---|---|---|---|",
    ]
    for name, s in summary.items():
        lines.append(f"| {name} | {s['video']:.3f} | {s['video_recall']:.3f} | {s['audio']:.3f} | {s['audio_recall']:.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps({"args": vars(args) | {"out": str(args.out)}, "summary": summary}, indent=1) + "\n")
    return summary


if __name__ == "__main__":
    main()
