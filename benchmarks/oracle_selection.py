"""What would a perfect token ranking buy? An oracle upper bound that separates the ranking from the budgets.

Why: when a learned selector falls short, the cause is either its ranking (which tokens it prefers inside a
frame or a clip) or the allocation it ranks under (how many tokens each frame, clip and modality may keep:
OmniSIFT's fixed audio/video split and per-frame budgets). The oracle ranks by the full-token model's own
importance for the CORRECT answer (`train.importance.gate_importance`: d log p(answer) / d gate), which no
real selector can see, so its accuracy bounds what any ranking can reach:

* ``oracle-units``: OmniSIFT's allocation (the row split with its audio advantage, per-frame video budgets,
  per-clip audio budgets), the oracle's ranking inside each unit. Its gap to the trained selector is what
  a better ranking could still give.
* ``oracle-free``: the oracle's ranking over all of a row's media tokens, the exact total only: no fixed
  split, no per-frame floor. Its gap to ``oracle-units`` is what a better allocation could give (a learned
  per-window audio/video split, for instance).
* ``oracle-at-r`` (``--operating-point``): OmniSIFT's allocation, ranked by the importance measured at the
  operating point instead of at all tokens: the gradient at the keep mask of the untrained selector at the
  same retention (a dropped token's first-order gain when added back). Whether it beats ``oracle-units``
  says which distillation target to try next.

Every method is scored the same way here, so the rows compare with each other (not with `sift eval`'s
greedy-reply accuracy): the frozen model's arg-max over the answer letters at the answer position, one
forward of the training-format item (question + answer) inside `sift.compress`. Nothing asserts.

    python benchmarks/oracle_selection.py --model checkpoints/tiny-omni-v2 \\
        --manifest runs/selector-v2/heldout/test.jsonl --selector checkpoints/omnisift-synthav-v2 \\
        --out benchmarks/results/oracle_selection_synthav_v2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

if __package__ in (None, ""):  # run as a script from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sift  # noqa: E402
from sift.budget import audio_clip_budgets, keep_count, split_row, video_frame_budgets  # noqa: E402
from sift.compressors.base import CompressionBatch, Compressor, Selection  # noqa: E402
from sift.compressors.omnisift import OmniSIFT  # noqa: E402
from sift.manifest import read_manifest  # noqa: E402
from sift.models import adapter_for  # noqa: E402
from sift.picks import top_positions  # noqa: E402
from sift.selector import OmniSIFTSelector  # noqa: E402
from train.data import AVQADataset, collate  # noqa: E402
from train.importance import gate_importance  # noqa: E402

RETENTIONS = (0.05, 0.1, 0.15, 0.25, 0.35)
LETTERS = "ABCD"


@dataclass
class Oracle(Compressor):
    """Top tokens by a given (B, L) importance, under OmniSIFT's unit budgets or over the whole row."""

    name: ClassVar[str] = "oracle"
    importance: torch.Tensor | None = None
    units: bool = True
    audio_advantage: float = 0.3  # OmniSIFT's default split

    def select(self, batch: CompressionBatch) -> Selection:
        keep = self.keep_all(batch) & ~batch.layout.media_mask(batch.device)
        for b, row in enumerate(batch.layout.rows):
            if row.num_tokens:
                for positions in self._row(row, self.importance[b]):
                    keep[b, positions.to(keep.device)] = True
        return Selection(keep=keep)

    def _row(self, row, importance: torch.Tensor) -> list[torch.Tensor]:
        if not self.units:
            media = torch.cat([row.audio_positions(), row.video_positions()])
            return [top_positions(media, importance[media], keep_count(row.num_tokens, self.retention))]
        keep_a, keep_v = split_row(row, self.retention, self.audio_advantage)
        kept = []
        for window, budgets in zip(row.windows, video_frame_budgets(row.windows, keep_v)):
            kept += [top_positions(f.positions, importance[f.positions], k) for f, k in zip(window.frames, budgets)]
        for clip, k in zip(row.audio_clips, audio_clip_budgets(row, keep_a)):
            audio = torch.cat([w.audio for w in clip.windows])
            kept.append(top_positions(audio, importance[audio], k))
        return kept


def answer_is_right(model, inputs: dict, labels: torch.Tensor, compressor: Compressor, letter_ids: torch.Tensor) -> bool:
    """The arg-max letter at the answer position equals the answer, with `compressor` applied."""
    answer_at = int(torch.nonzero(labels[0] != -100)[0, 0])  # the answer letter's position
    with torch.no_grad(), sift.compress(model, compressor) as session:
        logits = model(**inputs).logits
    slot = int(session.stats.slots_of(torch.tensor([0]), torch.tensor([answer_at - 1]))[0])
    return int(letter_ids[logits[0, slot, letter_ids].argmax()]) == int(labels[0, answer_at])


def operating_point_importance(model, inputs: dict, labels: torch.Tensor, retention: float, base) -> torch.Tensor:
    """The importance at the keep mask that selector `base` chooses at `retention` (see ``oracle-at-r``)."""
    with torch.no_grad(), sift.compress(model, OmniSIFT(retention=retention, selector=base)) as session:
        model(**inputs)
    keep = session.selection.keep & inputs["attention_mask"].bool()
    return gate_importance(model, inputs, labels, at=keep.float()).detach()


def methods(importance: torch.Tensor, retention: float, selectors: dict, at_r: torch.Tensor | None) -> dict[str, Compressor]:
    out = {
        "oracle-free": Oracle(retention=retention, importance=importance, units=False),
        "oracle-units": Oracle(retention=retention, importance=importance, units=True),
    }
    if at_r is not None:
        out["oracle-at-r"] = Oracle(retention=retention, importance=at_r, units=True)
    out["stvp"] = sift.get_compressor("stvp", retention=retention)
    out["omniselect"] = sift.get_compressor("omniselect", retention=retention)
    for name, selector in selectors.items():
        out[name] = OmniSIFT(retention=retention, selector=selector)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--selector", nargs="*", default=[], help="OmniSIFT selector folders (save_pretrained)")
    parser.add_argument("--samples", type=int, default=None, help="questions to use (the first N; default all)")
    parser.add_argument("--retentions", type=float, nargs="+", default=list(RETENTIONS))
    parser.add_argument("--operating-point", action="store_true", help="add oracle-at-r (one more backward per r)")
    parser.add_argument("--out", type=Path, help="path without extension for .md / .json")
    args = parser.parse_args(argv)

    from transformers import AutoConfig, Qwen2_5OmniProcessor, Qwen2_5OmniThinkerForConditionalGeneration

    start = time.perf_counter()
    model = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(args.model, attn_implementation="sdpa")
    model.requires_grad_(False).eval()
    processor = Qwen2_5OmniProcessor.from_pretrained(args.model)
    letter_ids = torch.tensor(processor.tokenizer.convert_tokens_to_ids(list(LETTERS)))
    selectors = {Path(p).name: OmniSIFTSelector.from_pretrained(p).eval() for p in args.selector}
    base = OmniSIFTSelector.from_config(AutoConfig.from_pretrained(args.model)).eval()  # the untrained init
    data = AVQADataset(read_manifest(args.manifest)[: args.samples], processor, train=True)
    right: dict[tuple[str, float], list[bool]] = {}
    for i in range(len(data)):
        item = data[i]
        if item is None:
            continue
        batch = collate([item], processor.tokenizer.pad_token_id)
        inputs = {k: batch[k] for k in adapter_for(model).input_keys if batch.get(k) is not None}
        importance = gate_importance(model, inputs, batch["labels"]).detach()
        for r in args.retentions:
            at_r = operating_point_importance(model, inputs, batch["labels"], r, base) if args.operating_point else None
            for name, comp in methods(importance, r, selectors, at_r).items():
                right.setdefault((name, r), []).append(answer_is_right(model, inputs, batch["labels"], comp, letter_ids))
    return report(right, args, len(data), time.perf_counter() - start)


def report(right: dict[tuple[str, float], list[bool]], args: argparse.Namespace, n: int, seconds: float) -> dict:
    names = list(dict.fromkeys(name for name, _ in right))
    table = {name: {r: 100.0 * sum(right[(name, r)]) / len(right[(name, r)]) for r in args.retentions} for name in names}
    lines = [
        f"# Oracle selection: accuracy (%) of the answer-letter arg-max, {n} questions of `{args.manifest}`",
        "",
        "| method | " + " | ".join(f"r = {r:g}" for r in args.retentions) + " |",
        "|---|" + "---|" * len(args.retentions),
    ]
    lines += [f"| {name} | " + " | ".join(f"{table[name][r]:.1f}" for r in args.retentions) + " |" for name in names]
    lines += ["", f"Model `{args.model}`, CPU, {seconds:.0f} s. oracle-units: OmniSIFT's budgets, ranked by the "
              "full-token model's importance for the correct answer; oracle-free: the same ranking over the whole "
              "row; oracle-at-r: OmniSIFT's budgets, ranked by that importance measured at the untrained "
              "selector's keep mask. Command: `python benchmarks/oracle_selection.py " + " ".join(sys.argv[1:]) + "`"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(text)
        payload = {"args": vars(args) | {"out": str(args.out)}, "accuracy": {k: {str(r): v for r, v in t.items()} for k, t in table.items()}}
        args.out.with_suffix(".json").write_text(json.dumps(payload, indent=1) + "\n")
    return table


if __name__ == "__main__":
    main()
