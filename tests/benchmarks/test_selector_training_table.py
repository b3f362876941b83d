"""benchmarks/selector_training_table.py: seeds become mean ± spread, fresh selectors with flags their own rows."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def table_script(benchmark_script):
    with benchmark_script("selector_training_table") as module:
        yield module


def _results(folder, rows):
    folder.mkdir(parents=True)
    results = [{"method": m, "retention": r, "accuracy": a} for m, r, a in rows]
    (folder / "results.json").write_text(json.dumps({"results": results}))


def test_table_of_seeds_free_methods_and_flagged_untrained_selectors(table_script, tmp_path):
    root = tmp_path / "eval"
    _results(root / "free", [("none", 1.0, 1.0), ("stvp", 0.1, 0.8), ("omnisift", 0.1, 0.85)])
    _results(root / "untrained+spatial", [("omnisift", 0.1, 0.9)])
    for seed, acc in enumerate((0.9, 1.0)):
        _results(root / f"shrink-3e-3+rank1+spatial-seed{seed}", [("omnisift", 0.1, acc)])
    out = tmp_path / "out" / "table"
    table_script.main([str(root), str(out), "--title", "T"])
    lines = out.with_suffix(".md").read_text().splitlines()
    assert lines[0] == "# T"
    assert lines[2:] == [
        "| method | r = 0.1 |",
        "|---|---|",
        "| full tokens | 100.0 |",
        "| stvp | 80.0 |",
        "| untrained selector | 85.0 |",
        "| untrained selector (+spatial) | 90.0 |",
        "| trained (shrink-3e-3+rank1+spatial) | 95.0 ± 7.1 (n=2) |",
    ]
    assert json.loads(out.with_suffix(".json").read_text())["trained (shrink-3e-3+rank1+spatial)"] == {"0.1": [90.0, 100.0]}
    assert out.with_suffix(".png").stat().st_size > 0
