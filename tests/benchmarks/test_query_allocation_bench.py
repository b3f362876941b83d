"""benchmarks/query_allocation.py: the question-blind OmniSelect variant decides "uniform" on every row and keeps
the exact budget; the script leaves the registry as it found it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import sift
from sift.budget import keep_count

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def query_allocation(benchmark_script):
    with benchmark_script("query_allocation") as module:
        yield module


def test_the_variant_ignores_the_question_and_keeps_the_budget(query_allocation, thinker, synth_inputs):
    aware = sift.get_compressor("omniselect", retention=0.2)
    blind = query_allocation.NoQueryOmniSelect(retention=0.2)
    blind_stvp = query_allocation.NoQuerySTVPRanking(retention=0.2)
    kept = []
    for comp in (aware, blind, blind_stvp):
        with sift.compress(thinker, comp) as session:
            thinker(**synth_inputs)
        s = session.stats
        assert s.audio_after[0] + s.video_after[0] == keep_count(s.audio_before[0] + s.video_before[0], 0.2)
        kept.append(s.kept_positions[0])
    assert kept[1].numel() == kept[2].numel() and not torch.equal(kept[1], kept[2])  # same budgets, other video rule
    assert blind.last_decisions == ["uniform"] and blind.last_relevance == [None]
    assert aware.last_relevance[0] is not None  # the stock one did read the question


@pytest.mark.slow
def test_the_script_writes_its_table_and_unregisters_the_variant(query_allocation, tmp_path):
    from sift.testbed.synthav import generate

    manifest = generate(tmp_path / "data", {"test": 1}, seed=4, workers=1, progress=False, version=2, min_seconds=6,
                        max_seconds=6)["test"]
    query_allocation.main(["--manifest", str(manifest), "--model", str(REPO / "checkpoints" / "tiny-omni-v2"),
                           "--selector", str(REPO / "checkpoints" / "omnisift-synthav-v2"), "--retentions", "0.1",
                           "--out", str(tmp_path / "out"), "--eval-out", str(tmp_path / "eval")])
    md = (tmp_path / "out.md").read_text()
    assert all(f"| {m} | " in md for m in query_allocation.METHODS)
    assert query_allocation.VARIANT not in sift.available_compressors()
    assert query_allocation.STVP_VARIANT not in sift.available_compressors()
