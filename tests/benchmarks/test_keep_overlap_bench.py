"""benchmarks/keep_overlap.py: a method against itself shares every token; two random draws do not."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def keep_overlap(benchmark_script):
    with benchmark_script("keep_overlap") as module:
        yield module


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    from sift.testbed.synthav import generate

    root = tmp_path_factory.mktemp("overlap")
    generate(root, {"test": 1}, seed=3, workers=1, progress=False, version=2, min_seconds=4, max_seconds=4)
    return root / "test.jsonl"


def test_method_options_parse_as_json_where_they_can(keep_overlap):
    assert keep_overlap.parse_method("omnizip:merge=false,g=2,contextual_ratio=0.1") == (
        "omnizip", {"merge": False, "g": 2, "contextual_ratio": 0.1})
    assert keep_overlap.parse_method("omnisift:selector=ckpt/a") == ("omnisift", {"selector": "ckpt/a"})
    with pytest.raises(SystemExit, match="unknown method 'omnizap'"):
        keep_overlap.parse_method("omnizap")
    with pytest.raises(SystemExit, match="bad option 'merge'"):
        keep_overlap.parse_method("omnizip:merge")


def run(keep_overlap, manifest, tmp_path, a, b):
    return keep_overlap.main(["--model", str(REPO / "checkpoints" / "tiny-omni-v2"), "--manifest", str(manifest),
                              "--retention", "0.2", "--a", a, "--b", b, "--out", str(tmp_path / "out")])


def test_a_method_against_itself_keeps_the_same_tokens_and_answers(keep_overlap, manifest, tmp_path):
    result = run(keep_overlap, manifest, tmp_path, "stvp", "stvp")
    rows = result["questions"]
    assert result["n"] == len(rows) == 3  # one clip, three questions
    assert all(r["video_shared"] == 1.0 for r in rows)  # the same rule, the same tokens
    assert all(r["audio_shared"] == 1.0 and r["audio_a"] == r["audio_b"] for r in rows)
    assert all(r["a_right"] == r["b_right"] for r in rows)
    assert result["accuracy_a"] == pytest.approx(sum(r["a_right"] for r in rows) / 3)
    counts = {g["group"]: g["n"] for g in result["groups"]}
    assert counts["only A right"] == counts["only B right"] == 0 and sum(counts.values()) == 3
    text = (tmp_path / "out.md").read_text()
    assert "| both right |" in text and (tmp_path / "out.json").exists()


def test_two_random_draws_keep_equal_counts_of_different_tokens(keep_overlap, manifest, tmp_path):
    rows = run(keep_overlap, manifest, tmp_path, "random:seed=1", "random:seed=2")["questions"]
    assert all(r["audio_a"] + r["video_a"] == r["audio_b"] + r["video_b"] for r in rows)
    assert all(r["video_shared"] < 1.0 for r in rows)
