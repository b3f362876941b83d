"""benchmarks/selection_speed.py on a short input: every registered method is timed at its exact budget."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

import sift

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "selection_speed.py"


@pytest.fixture(scope="module")
def selection_speed():
    spec = importlib.util.spec_from_file_location("selection_speed_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_every_method_is_timed_at_its_exact_budget(selection_speed, tmp_path):
    result = selection_speed.main(["--seconds", "4", "--repeats", "1", "--retentions", "0.25", "--no-prefill",
                                   "--no-single-thread", "--out", str(tmp_path)])
    rows = {r["method"]: r for r in result["rows"]}
    assert sorted(rows) == sorted(m for m in sift.available_compressors() if m != "none")
    for method, row in rows.items():
        assert "skipped" not in row, (method, row.get("skipped"))
        assert row["kept"] == row["expected_kept"] and row["median_ms"] > 0
    saved = json.loads((tmp_path / "selection_speed_cpu.json").read_text())
    assert saved["input"]["seq_len"] == result["input"]["seq_len"] and saved["machine"]["cpu_model"]
    assert "| stvp | 0.25 |" in (tmp_path / "selection_speed_cpu.md").read_text()
