"""benchmarks/selection_speed.py on a short input: every registered method is timed at its exact budget."""

from __future__ import annotations

import json

import pytest

import sift


@pytest.fixture(scope="module")
def selection_speed(benchmark_script):
    with benchmark_script("selection_speed") as module:
        yield module


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


def test_qwen3_input_is_timed_for_every_method_at_its_exact_budget(selection_speed, tmp_path):
    result = selection_speed.main(["--model", "qwen3-30b-a3b", "--seconds", "4", "--repeats", "1", "--retentions", "0.25",
                                   "--no-single-thread", "--out", str(tmp_path)])
    assert result["input"]["hidden"] == 2048 and result["input"]["audio_tokens"] == 13 * 4
    assert result["input"]["video_tokens"] == 144 * 4  # one 12x12 grid per second
    for row in result["rows"]:
        assert "skipped" not in row, (row["method"], row.get("skipped"))
        assert row["kept"] == row["expected_kept"]
    assert "qwen3-30b-a3b input" in (tmp_path / "selection_speed_qwen3_cpu.md").read_text()
