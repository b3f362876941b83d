"""benchmarks/oracle_selection.py on one fresh SynthAV v2 clip: at full retention every method is the full model."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("lightning")  # the script reads data with the training app's dataset

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def oracle_selection(benchmark_script):
    with benchmark_script("oracle_selection") as module:
        yield module


@pytest.mark.slow
def test_all_methods_agree_at_full_retention_and_the_oracle_keeps_its_budgets(oracle_selection, tmp_path):
    from sift.testbed.synthav import generate

    generate(tmp_path / "data", {"test": 1}, seed=3, workers=1, progress=False, version=2, min_seconds=6, max_seconds=6)
    table = oracle_selection.main(["--model", str(REPO / "checkpoints" / "tiny-omni-v2"), "--manifest",
                                   str(tmp_path / "data" / "test.jsonl"), "--retentions", "1.0", "0.1",
                                   "--operating-point", "--out", str(tmp_path / "out")])
    assert set(table) == {"oracle-free", "oracle-units", "oracle-at-r", "stvp", "omniselect"}
    assert len({row[1.0] for row in table.values()}) == 1  # nothing dropped: the same model, the same answers
    assert all(0.0 <= row[0.1] <= 100.0 for row in table.values())
    assert "| oracle-units |" in (tmp_path / "out.md").read_text()


def test_the_oracle_keeps_the_exact_budget_per_unit_and_overall(oracle_selection, processor, thinker):
    import torch

    import sift
    from sift.budget import keep_count
    from sift.testbed.media import synth_clip
    from sift.testbed.tiny import omni_inputs

    inputs = omni_inputs(processor, [synth_clip(6.0)], ["Which color?"])
    importance = torch.rand(inputs["input_ids"].shape)
    for units in (True, False):
        comp = oracle_selection.Oracle(retention=0.2, importance=importance, units=units)
        with torch.no_grad(), sift.compress(thinker, comp) as session:
            thinker(**inputs)
        s = session.stats
        assert s.audio_after[0] + s.video_after[0] == keep_count(s.audio_before[0] + s.video_before[0], 0.2)
