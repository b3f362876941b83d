"""Aggregate `sift eval` results of trained selectors into one table and plot (mean and spread over seeds).

Why: a trained selector's accuracy moves by a few points between training seeds on a 180-question test;
only the mean over seeds, next to the training-free methods on the same held-out questions, says whether
training helped. Reads `<root>/free/results.json` (training-free methods and the untrained selector) and
`<root>/<variant>-seed<N>/results.json` (one trained selector each) and `<root>/untrained+<flags>/results.json`
(a fresh selector with other selector flags); writes `<out>.md`, `<out>.json`,
`<out>.png`.

    python benchmarks/selector_training_table.py runs/selector/eval benchmarks/results/selector_training_synthav
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections import defaultdict
from pathlib import Path

FREE_LABELS = {"none": "full tokens", "omnisift": "untrained selector"}


def _accuracies(path: Path) -> dict[str, dict[float, float]]:
    """method -> retention -> accuracy (%) of one results.json."""
    out: dict[str, dict[float, float]] = defaultdict(dict)
    for row in json.loads(path.read_text())["results"]:
        out[row["method"]][round(float(row["retention"]), 4)] = 100.0 * float(row["accuracy"])
    return out


def collect(root: Path) -> tuple[dict[str, dict[float, list[float]]], list[float]]:
    """label -> retention -> accuracies (one per seed), and the retentions evaluated."""
    table: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    free = _accuracies(root / "free" / "results.json")
    full = free.pop("none")[1.0]
    for method, by_r in free.items():
        for r, acc in by_r.items():
            table[FREE_LABELS.get(method, method)][r].append(acc)
    for path in sorted(root.glob("untrained+*/results.json")):  # fresh selectors with other flags
        flags = path.parent.name.split("+", 1)[1]
        for r, acc in _accuracies(path)["omnisift"].items():
            table[f"untrained selector (+{flags})"][r].append(acc)
    for path in sorted(root.glob("*-seed*/results.json")):
        variant = re.sub(r"-seed\d+$", "", path.parent.name)
        for r, acc in _accuracies(path)["omnisift"].items():
            table[f"trained ({variant})"][r].append(acc)
    retentions = sorted({r for by_r in table.values() for r in by_r})
    table["full tokens"] = {r: [full] for r in retentions}
    return table, retentions


def _cell(values: list[float]) -> str:
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f} (n={len(values)})"


def markdown(table: dict[str, dict[float, list[float]]], retentions: list[float], title: str) -> str:
    lines = [f"# {title}", "", "| method | " + " | ".join(f"r = {r:g}" for r in retentions) + " |"]
    lines.append("|---" * (len(retentions) + 1) + "|")
    order = ["full tokens"] + sorted(k for k in table if k != "full tokens" and not k.startswith("trained"))
    order += sorted(k for k in table if k.startswith("trained"))
    for label in order:
        lines.append(f"| {label} | " + " | ".join(_cell(table[label].get(r, [])) for r in retentions) + " |")
    return "\n".join(lines) + "\n"


def plot(table: dict[str, dict[float, list[float]]], retentions: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, by_r in sorted(table.items()):
        xs = [r for r in retentions if by_r.get(r)]
        means = [statistics.mean(by_r[r]) for r in xs]
        spread = [statistics.stdev(by_r[r]) if len(by_r[r]) > 1 else 0.0 for r in xs]
        style = "k--" if label == "full tokens" else ("-o" if label.startswith("trained") else ":.")
        ax.errorbar(xs, means, yerr=spread, fmt=style, label=label, capsize=3)
    ax.set_xlabel("retention (fraction of audio+video tokens kept)")
    ax.set_ylabel("accuracy (%)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="folder with free/ and <variant>-seed<N>/ eval folders")
    parser.add_argument("out", type=Path, help="output path without extension")
    parser.add_argument("--title", default="Trained selectors on a held-out SynthAV split (accuracy %)")
    args = parser.parse_args(argv)
    table, retentions = collect(args.root)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = markdown(table, retentions, args.title)
    args.out.with_suffix(".md").write_text(text)
    raw = {label: {str(r): v for r, v in by_r.items()} for label, by_r in table.items()}
    args.out.with_suffix(".json").write_text(json.dumps(raw, indent=1) + "\n")
    plot(table, retentions, args.out.with_suffix(".png"))
    print(text)


if __name__ == "__main__":
    main()
