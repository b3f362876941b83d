"""`sift compare`: is one method really better than another, or is the gap a few lucky questions?

Why: on a 180-question split a 1.7-point gap is three questions. `sift eval` prints accuracies; this reads the
answers files it writes (``answers.jsonl``, one line per question x method x retention) and pairs the
methods question by question, which is the comparison the data supports:

- each accuracy with its Wilson score interval (exact enough at 0 or 100%, where the normal one is not);
- against a reference method, at every retention both were run at (and against full tokens): the questions
  only the reference answers right, the ones only the other answers right, and the exact two-sided McNemar
  p-value (a binomial test on those discordant questions, the ones both get right or wrong say nothing).

    sift compare runs/eval-trained runs/eval-untrained --reference eval-trained/omnisift --out compare.md

A system is ``<run>/<method>``, ``<run>`` being the answers file's folder name (``--names`` renames them); a
method name alone is enough when only one run has it. Failed answers (``status`` not ``ok``) are left out of
both sides of a pair. p-values are per comparison, not corrected for how many are made.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

from sift.apps.evaluate import UsageError, read_answers

__all__ = ["add_arguments", "wilson_interval", "mcnemar_p", "load_systems", "compare", "markdown", "run_compare"]

#: system -> retention -> question id -> answered right
Systems = dict[str, dict[float, dict[str, bool]]]


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("runs", nargs="+", help="sift eval output folders (their answers.jsonl) or answers files")
    p.add_argument("--reference", required=True, help="the system the others are compared with: RUN/METHOD, or METHOD when unique")
    p.add_argument("--names", nargs="+", help="one name per run instead of its folder's name")
    p.add_argument("--confidence", type=float, default=0.95, help="level of the accuracy intervals (default 0.95)")
    p.add_argument("--out", help="write the table to OUT (markdown) and OUT with .json")
    return p


def wilson_interval(correct: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``correct / n``; (0, 1) when there is nothing to estimate from."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if not 0 <= correct <= n:
        raise ValueError(f"need 0 <= correct <= n, got {correct} of {n}")
    if n == 0:
        return 0.0, 1.0
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    p, z2 = correct / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_p(only_first: int, only_second: int) -> float:
    """Exact two-sided McNemar p-value: how likely a split at least this uneven of the discordant questions is
    if both systems were equally good (each discordant question a fair coin)."""
    if only_first < 0 or only_second < 0:
        raise ValueError(f"counts must be >= 0, got {only_first}, {only_second}")
    n = only_first + only_second
    tail = sum(math.comb(n, i) for i in range(min(only_first, only_second) + 1))
    return min(1.0, 2 * tail / 2**n)


def _answers_path(run: str | Path) -> Path:
    path = Path(run)
    path = path / "answers.jsonl" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"no sift eval answers at {path} (give an eval --out folder or its answers.jsonl)")
    return path


def load_systems(runs: Sequence[str | Path], names: Sequence[str] | None = None) -> Systems:
    """Every ``<run>/<method>`` of the answers files, by retention and question."""
    paths = [_answers_path(r) for r in runs]
    if names is not None and len(names) != len(paths):
        raise UsageError(f"--names gives {len(names)} names for {len(paths)} runs")
    names = list(names) if names is not None else [p.parent.name for p in paths]
    if len(set(names)) < len(names):
        raise UsageError(f"two runs are both named {_first_repeat(names)!r}: rename them with --names")
    systems: Systems = defaultdict(lambda: defaultdict(dict))
    for name, path in zip(names, paths):
        for (qid, method, r), record in read_answers(path)[1].items():
            if record.get("status") == "ok":
                systems[f"{name}/{method}"][round(r, 4)][qid] = bool(record["correct"])
    return {s: dict(by_r) for s, by_r in systems.items()}


def _first_repeat(names: Sequence[str]) -> str:
    return next(n for i, n in enumerate(names) if n in names[:i])


def resolve(systems: Systems, name: str) -> str:
    """``name`` as a system key: exact, or a method name that only one run has."""
    if name in systems:
        return name
    matches = [s for s in systems if s.split("/", 1)[1] == name]
    if len(matches) == 1:
        return matches[0]
    what = f"is in {len(matches)} runs ({', '.join(matches)}): say which" if matches else "is not in these runs"
    raise UsageError(f"reference {name!r} {what}; systems: {', '.join(sorted(systems))}")


def _pair(ref: dict[str, bool], other: dict[str, bool], retention: float, system: str,
          confidence: float) -> dict[str, Any]:
    ids = sorted(ref.keys() & other.keys())
    b = sum(ref[i] and not other[i] for i in ids)
    c = sum(other[i] and not ref[i] for i in ids)
    n_ref, n_other = sum(ref[i] for i in ids), sum(other[i] for i in ids)
    low, high = wilson_interval(n_other, len(ids), confidence)
    return dict(retention=retention, system=system, n=len(ids), reference_accuracy=n_ref / len(ids),
                accuracy=n_other / len(ids), interval=[low, high], only_reference=b, only_other=c,
                p=mcnemar_p(b, c))


def compare(systems: Systems, reference: str, confidence: float = 0.95) -> list[dict[str, Any]]:
    """One row per (retention of the reference, other system run at it or with full tokens), paired by question."""
    reference = resolve(systems, reference)
    rows = []
    for r, ref in sorted(systems[reference].items()):
        for system, by_r in sorted(systems.items()):
            for other_r in sorted({r, 1.0} & by_r.keys()):
                if system == reference and other_r == r:
                    continue
                if not ref.keys() & by_r[other_r].keys():
                    continue  # different questions: nothing to pair
                rows.append(_pair(ref, by_r[other_r], r, system if other_r == r else f"{system} (r = 1)", confidence))
    return rows


def markdown(rows: list[dict[str, Any]], reference: str, confidence: float) -> str:
    level = f"{100 * confidence:g}%"
    lines = [
        f"# sift compare: `{reference}` against the others, question by question",
        "",
        f"| r | system | n | {reference} (%) | system (%) | {level} interval | only {reference} right | only system right | p |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        low, high = row["interval"]
        lines.append(
            f"| {row['retention']:g} | {row['system']} | {row['n']} | {100 * row['reference_accuracy']:.1f} | "
            f"{100 * row['accuracy']:.1f} | {100 * low:.1f}-{100 * high:.1f} | {row['only_reference']} | "
            f"{row['only_other']} | {row['p']:.3g} |"
        )
    lines += ["", f"Intervals: Wilson score, {level}, of the system's accuracy. p: exact two-sided McNemar test on the "
              "questions only one of the two answers right; not corrected for the number of comparisons.", ""]
    return "\n".join(lines)


def run_compare(args: argparse.Namespace) -> list[dict[str, Any]]:
    systems = load_systems(args.runs, args.names)
    reference = resolve(systems, args.reference)
    rows = compare(systems, reference, args.confidence)
    if not rows:
        raise UsageError(f"nothing to compare {reference} with: no other system answered the same questions at its retentions")
    md = markdown(rows, reference, args.confidence)
    print(md)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(md)
        out.with_suffix(".json").write_text(json.dumps(dict(reference=reference, confidence=args.confidence, rows=rows), indent=2) + "\n")
    return rows
