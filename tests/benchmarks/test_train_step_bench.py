"""benchmarks/train_step.py on the tiny model: every mode runs, and their numbers make sense."""

from __future__ import annotations

import json
import math

import pytest


@pytest.fixture(scope="module")
def train_step(benchmark_script):
    with benchmark_script("train_step") as module:
        yield module


@pytest.mark.slow
def test_tiny_train_step_table(train_step, tmp_path):
    result = train_step.main(["--models", "tiny", "--seconds", "4", "--repeats", "1", "--warmup", "0",
                              "--out", str(tmp_path), "--quiet"])
    rows = {r["mode"]: r for r in result["rows"]}
    assert list(rows) == ["full", "shrink", "shrink+rank", "shrink+policy", "mask", "mask+rank"]
    seq_len = result["models"][0]["seq_len"]
    for mode in rows:
        r = rows[mode]
        assert f"| tiny | {mode} | {r['llm_tokens']} |" in result["markdown"]
        assert 0 < r["step_s"] < 60 and math.isclose(r["step_s"], r["forward_s"] + r["backward_s"], rel_tol=1e-6)
        assert r["peak_mem_bytes"] >= 0 and r["saved_bytes"] > 0
        assert math.isfinite(r["loss"]) and r["grad_norm"] > 0  # the backward reached the selector / the embeddings
    assert rows["full"]["llm_tokens"] == rows["mask"]["llm_tokens"] == seq_len  # mask runs the full sequence
    assert rows["shrink"]["llm_tokens"] < 0.6 * seq_len  # r = 0.25 of the media, plus the text
    assert rows["mask"]["loss"] == pytest.approx(rows["shrink"]["loss"], abs=1e-4)  # same kept tokens, same loss
    assert rows["mask+rank"]["loss"] > rows["mask"]["loss"]  # plus the (positive) ranking term
    assert rows["mask+rank"]["llm_tokens"] == seq_len
    assert rows["shrink+rank"]["loss"] > rows["shrink"]["loss"] and rows["shrink+rank"]["llm_tokens"] == rows["shrink"]["llm_tokens"]
    assert rows["shrink+policy"]["llm_tokens"] == rows["shrink"]["llm_tokens"]  # the rollouts are extra forwards
    assert rows["shrink+policy"]["loss"] != pytest.approx(rows["shrink"]["loss"], abs=1e-6)  # plus the REINFORCE term
    assert rows["mask"]["saved_bytes"] > rows["full"]["saved_bytes"]  # (heads, L, L) float32 weights per layer
    assert rows["full"]["time_ratio"] == 1.0
    saved = json.loads((tmp_path / "train_step_cpu.json").read_text())
    assert [r["mode"] for r in saved["rows"]] == list(rows) and saved["machine"]["loadavg_start"]
    assert (tmp_path / "train_step_cpu.md").read_text() == result["markdown"]


@pytest.mark.slow
def test_modes_option_times_full_first_then_the_named_modes(train_step, tmp_path):
    result = train_step.main(["--models", "tiny", "--seconds", "2", "--repeats", "1", "--warmup", "0",
                              "--modes", "shrink+policy", "shrink", "--policy-samples", "2", "--out", str(tmp_path), "--quiet"])
    assert [r["mode"] for r in result["rows"]] == ["full", "shrink+policy", "shrink"]
    assert result["settings"]["policy_samples"] == 2
