"""`sift eval` and `sift bench` end to end on the tiny model: as functions and as `python -m sift ...`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import sift
from sift.apps.bench import run_bench, summarise_runs, synthetic_inputs
from sift.budget import keep_count
from sift.apps.cli import main as cli_main
from sift.apps.evaluate import UsageError, accuracy, run_eval
from sift.manifest import extract_letter
from sift.testbed.media import synth_clip, write_clip

REPO = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """A generic manifest: two synthesized 2 s clips with audio, and one record whose video is missing."""
    d = tmp_path_factory.mktemp("eval")
    write_clip(synth_clip(2.0, size=(112, 112), seed=0), d / "a.mp4")
    write_clip(synth_clip(2.0, size=(112, 112), seed=1, tone_hz=660.0), d / "b.mp4")
    records = [
        {"id": "q1", "video": "a.mp4", "question": "What moves?", "options": ["a square", "a circle", "a dog"],
         "answer": "A", "category": "motion"},
        {"id": "q2", "video": "b.mp4", "question": "What sound plays?", "options": ["a tone", "speech"],
         "answer": "B", "category": "sound"},
        {"id": "q3", "video": "missing.mp4", "question": "What?", "options": ["x", "y"], "answer": "A", "category": "sound"},
    ]
    path = d / "manifest.json"
    path.write_text(json.dumps(records))
    return path


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "sift", *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)


def _check_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5000


def _check_eval_outputs(out: Path, methods: list[str], retentions: list[float]) -> dict:
    result = json.loads((out / "results.json").read_text())
    for key in ("command", "manifest", "model", "settings", "samples", "evaluated", "skipped", "skip_reasons",
                "categories", "results", "predictions"):
        assert key in result, key
    assert (result["samples"], result["evaluated"], result["skipped"]) == (3, 2, 1)
    assert "not found" in result["skip_reasons"]["q3"]
    rows = {(r["method"], r["retention"]): r for r in result["results"]}
    assert ("none", 1.0) in rows and rows[("none", 1.0)]["label"] == "full tokens"
    assert set(rows) == {("none", 1.0)} | {(m, r) for m in methods if m != "none" for r in retentions}
    for r in rows.values():
        assert 0.0 <= r["accuracy"] <= 1.0 and r["n"] == 2
        assert set(r["per_category"]) == {"motion", "sound"}
        assert all(0.0 <= c["accuracy"] <= 1.0 for c in r["per_category"].values())
    assert rows[("none", 1.0)]["achieved_retention"] == 1.0
    for (m, r), row in rows.items():
        if m != "none":
            assert abs(row["achieved_retention"] - r) < 0.05
    assert len(result["predictions"]) == 2 * len(rows)
    assert all(0.0 < r["audio_share"] < 1.0 for r in rows.values())
    full = {p["id"]: p for p in result["predictions"] if p["method"] == "none"}
    for p in result["predictions"]:  # the kept counts of a compressed answer never exceed the full input's
        assert p["audio_kept"] <= full[p["id"]]["audio_kept"] and p["video_kept"] <= full[p["id"]]["video_kept"]
        if p["method"] != "none":
            assert p["audio_kept"] + p["video_kept"] < full[p["id"]]["audio_kept"] + full[p["id"]]["video_kept"]
    md = (out / "results.md").read_text()
    assert "| method | " + " | ".join(f"r = {r:g}" for r in sorted(retentions)) + " |" in md
    assert "| full tokens (none) |" in md and "| method | r | n | overall | motion | sound |" in md
    assert "`q3`: video file not found" in md
    assert "| audio share of kept media |" in md
    _check_png(out / "accuracy.png")
    return result


def test_eval_function(manifest, tmp_path):
    out = tmp_path / "eval"
    result = run_eval(manifest=manifest, methods=["none", "random"], retentions=[0.5, 0.25], out=str(out),
                      frame_size=112, max_new_tokens=3, threads=1, quiet=True)
    _check_eval_outputs(out, ["none", "random"], [0.5, 0.25])
    assert result["files"] == [str(out / n) for n in ("results.json", "results.md", "accuracy.png")]


@pytest.mark.slow
def test_eval_cli(manifest, tmp_path):
    out = tmp_path / "cli"
    proc = _run_cli("eval", "--manifest", str(manifest), "--model", "tiny", "--methods", "none", "stvp",
                    "--retentions", "0.35", "--out", str(out), "--max-new-tokens", "2", "--limit", "3", "--threads", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = _check_eval_outputs(out, ["none", "stvp"], [0.35])
    assert result["command"].startswith("sift eval --manifest")
    assert "wrote" in proc.stdout


def test_eval_on_qwen3_omni(manifest, tmp_path):
    """sift eval on the tiny real Qwen3-Omni thinker and the real Qwen3OmniMoeProcessor: every method, exact budgets;
    a fresh Qwen3 selector runs, a Qwen2.5 one is refused naming the two families."""
    from sift.testbed.tiny import tiny_thinker_config
    from sift.testbed.tiny_qwen3 import tiny_qwen3_thinker_config

    methods = ["none", "random", "stvp", "omnizip", "dycoke", "omniselect", "omnisift"]
    selector = tmp_path / "selector"
    sift.OmniSIFTSelector.from_config(tiny_qwen3_thinker_config()).save_pretrained(selector)
    out = tmp_path / "eval"
    run_eval(manifest=manifest, model="tiny-qwen3", methods=methods, retentions=[0.5, 0.25], selector=str(selector),
             out=str(out), max_new_tokens=2, threads=1, quiet=True)
    _check_eval_outputs(out, methods, [0.5, 0.25])
    wrong = tmp_path / "qwen25-selector"
    sift.OmniSIFTSelector.from_config(tiny_thinker_config()).save_pretrained(wrong)
    with pytest.raises(UsageError, match="trained on qwen2_5_omni_thinker embeddings, but the model is qwen3_omni_moe_thinker"):
        run_eval(manifest=manifest, model="tiny-qwen3", methods=["omnisift"], retentions=[0.5], selector=str(wrong),
                 out=str(tmp_path / "w"), max_new_tokens=2, threads=1, quiet=True)


def test_eval_omnisift_needs_a_selector(manifest, tmp_path, capsys):
    with pytest.raises(UsageError, match="--selector"):
        run_eval(manifest=manifest, methods=["none", "omnisift"], out=str(tmp_path), quiet=True)
    with pytest.raises(SystemExit) as exit_info:  # the command line: a usage error, no traceback
        cli_main(["eval", "--manifest", str(manifest), "--methods", "omnisift", "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and "--selector" in capsys.readouterr().err
    # with a checkpoint folder it runs
    from sift.testbed.tiny import tiny_thinker_config

    sel_dir = tmp_path / "selector"
    sift.OmniSIFTSelector.from_config(tiny_thinker_config()).save_pretrained(sel_dir)
    result = run_eval(manifest=manifest, methods=["omnisift"], retentions=[0.5], selector=str(sel_dir),
                      out=str(tmp_path / "o"), max_new_tokens=2, threads=1, quiet=True)
    (row,) = result["results"]
    assert row["method"] == "omnisift" and row["n"] == 2 and 0.0 <= row["accuracy"] <= 1.0


def test_letters_and_accuracy():
    assert extract_letter("  b. a dog", 3) == "B"
    assert extract_letter("D", 3) is None and extract_letter("", 4) is None
    assert extract_letter("The answer is A", 4) is None  # only the start counts, as in the reference evals
    assert accuracy(["A", None, "C", "B"], ["A", "B", "C", "D"]) == 0.5
    assert accuracy([], []) != accuracy([], [])  # NaN


# --------------------------------------------------------------------------------------------- bench


def _check_bench_outputs(out: Path, prefix: str, methods: list[str], retentions: list[float], seconds: list[int],
                         patches: int = 24) -> dict:
    result = json.loads((out / f"{prefix}results.json").read_text())
    for key in ("command", "device", "model", "llm_dims", "layer_scale", "machine", "settings", "inputs", "rows", "memory_kind"):
        assert key in result, key
    rows = result["rows"]
    assert len(rows) == len(seconds) * (1 + len(methods) * len(retentions))
    for row in rows:
        for key in ("encoder_s", "selection_s", "llm_prefill_s", "ttft_s", "decode_tokens_per_s", "peak_mem_bytes",
                    "llm_tokens", "media_kept", "media_before", "flops", "flops_ratio", "prefill_speedup"):
            assert key in row, key
        assert row["llm_prefill_s"] > 0 and row["ttft_s"] >= row["llm_prefill_s"] and row["peak_mem_bytes"] > 0
        if row["method"] == "full":
            assert row["flops_ratio"] == 1.0 and row["prefill_speedup"] == 1.0 and row["selection_s"] == 0.0
        else:
            assert row["media_kept"] == keep_count(row["media_before"], row["retention"])
            assert 0 < row["flops_ratio"] < 1 and row["selection_s"] > 0
    for inp in result["inputs"]:  # patches 24 = the papers' rates: 288 video + 50 audio tokens per 2 s window
        assert inp["video_tokens"] == (patches // 2) ** 2 * inp["seconds"] and inp["audio_tokens"] == 25 * inp["seconds"]
    md = (out / f"{prefix}results.md").read_text()
    assert "| S | method | r | media kept | LLM tokens | encoders ms | select ms | select % of full prefill | LLM prefill ms |" in md
    assert "| r | LLM tokens | runs | LLM prefill ms | prefill speedup | ideal 1/r | 1 / FLOPs ratio |" in md
    _check_png(out / f"{prefix}prefill.png")
    return result


@pytest.mark.slow
def test_bench_function(tmp_path, capsys):
    result = run_bench(random_init="tiny", seconds=[2, 4], methods=["random"], retentions=[0.5, 0.25], patches=8,
                       repeats=2, warmup=1, warmup_seconds=2, new_tokens=2, out=str(tmp_path), prefix="t_", threads=1,
                       quiet=True)
    _check_bench_outputs(tmp_path, "t_", ["random"], [0.5, 0.25], [2, 4], patches=8)
    assert result["layer_scale"] == 1.0 and result["settings"]["warmup_seconds"] == 2
    assert all(len(r["measured"]["llm_prefill_s"]) == 2 for r in result["rows"])
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["bench", "--random-init", "7b", "--layers", "99", "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and "--layers" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_at_qwen3_omni_30b_a3b_dims(tmp_path):
    """One 30B-A3B decoder layer (128 experts, 8 active), scaled to 48; inputs at Qwen3-Omni's 13 audio tokens/s."""
    result = run_bench(random_init="qwen3-30b-a3b", layers=1, vocab_size=1024, seconds=[2], methods=["omnizip", "omnisift"],
                       retentions=[0.25], patches=4, repeats=1, warmup=0, new_tokens=2, out=str(tmp_path), quiet=True)
    assert result["llm_dims"] == dict(layers=48, hidden=2048, ffn=8 * 768) and result["layer_scale"] == 48
    (inp,) = result["inputs"]
    assert inp["audio_tokens"] == 26 and inp["video_tokens"] == 2 * 4  # 2 s: 2 grids of 2x2 tokens
    for row in result["rows"]:
        assert row["media_kept"] == (34 if row["method"] == "full" else keep_count(34, 0.25))
    assert "Qwen3-Omni-30B-A3B" in (tmp_path / "results.md").read_text()


@pytest.mark.slow
def test_bench_cli(tmp_path):
    proc = _run_cli("bench", "--random-init", "tiny", "--seconds", "2", "--methods", "stvp", "--retentions", "0.25",
                    "--repeats", "1", "--warmup", "0", "--new-tokens", "2", "--out", str(tmp_path), "--prefix", "bench_",
                    "--threads", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = _check_bench_outputs(tmp_path, "bench_", ["stvp"], [0.25], [2])
    assert result["command"].startswith("sift bench --random-init tiny")
    assert "wrote" in proc.stdout


def test_synthetic_inputs_and_layer_scaling(processor):
    inputs = synthetic_inputs(processor, 4)
    layout = sift.build_layout(inputs["input_ids"], sift.testbed.tiny.tiny_thinker_config(processor.tokenizer),
                               attention_mask=inputs["attention_mask"], video_grid_thw=inputs["video_grid_thw"],
                               video_second_per_grid=inputs["video_second_per_grid"],
                               feature_attention_mask=inputs["feature_attention_mask"], use_audio_in_video=True)
    (row,) = layout.rows
    assert [(w.num_audio, w.num_video) for w in row.windows] == [(50, 288), (50, 288)]
    # --layers K: LLM prefill x T/K; TTFT and decode get T/K - 1 more copies of the measured LLM time
    sample = dict(encoder_s=0.1, audio_encoder_s=0.05, vision_encoder_s=0.05, selection_s=0.01, llm_prefill_s=1.0,
                  ttft_s=1.5, decode_s=0.9, decode_llm_s=0.3, decode_steps=3, generated=4, llm_tokens=100,
                  peak_mem_bytes=1, peak_mem_delta_bytes=1)
    scaled = summarise_runs([sample], 4.0)
    assert scaled["llm_prefill_s"] == 4.0 and scaled["measured_llm_prefill_s"] == 1.0
    assert scaled["ttft_s"] == pytest.approx(1.5 + 3 * 1.0)
    assert scaled["decode_tokens_per_s"] == pytest.approx(3 / (0.9 + 3 * 0.3))
    assert summarise_runs([sample], 1.0)["decode_tokens_per_s"] == pytest.approx(3 / 0.9)


def test_library_does_not_import_the_training_app():
    import ast

    for path in (REPO / "sift").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            assert not any(n == "train" or n.startswith(("train.", "lightning")) for n in names), (path, names)
