"""The lmms-eval plug-in (issue 15), offline: `python -m lmms_eval --model sift_qwen2_5_omni` finds sift through its
entry point, runs two methods on a generated SynthAV split with the committed tiny-omni-v2, writes its results
files and scores exactly what `sift eval` scores on the same samples.

Runs in `make test-lmms` (lmms-eval installed beside the pinned stack, constraints-lmms.txt); skipped where
lmms-eval is not installed, as in `make test`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval")
pytest.importorskip("loguru")

from sift.apps.evaluate import run_eval  # noqa: E402
from sift.apps.lmms_eval_tasks import metric_name, write_task  # noqa: E402
from sift.testbed.synthav import generate  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "checkpoints" / "tiny-omni-v2"
METHODS = (("none", None), ("stvp", 0.25))


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """A SynthAV v2 test split of 3 clips (9 questions, 3 categories) and its lmms-eval task."""
    root = tmp_path_factory.mktemp("lmms")
    manifest = generate(root / "synthav", {"test": 3}, seed=5, min_seconds=4, max_seconds=6, version=2, workers=1,
                        progress=False)["test"]
    task = write_task(manifest, root / "tasks", "sift_synthav")
    return root, manifest, task


def _lmms_eval(root: Path, method: str, retention: float | None) -> tuple[dict, subprocess.CompletedProcess]:
    args = f"pretrained={MODEL},method={method}" + (f",retention={retention}" if retention is not None else "")
    args += f",stats_path={root / f'stats-{method}.jsonl'}"
    out = root / f"out-{method}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(root / "hf"),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "lmms_eval", "--model", "sift_qwen2_5_omni", "--model_args", args, "--tasks", "sift_synthav",
         "--include_path", str(root / "tasks"), "--output_path", str(out), "--device", "cpu", "--batch_size", "1",
         "--log_samples"],
        cwd=root, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    (results,) = out.rglob("*_results.json")
    return json.loads(results.read_text())["results"]["sift_synthav"], proc


def test_lmms_eval_runs_sift_and_matches_sift_eval(split):
    root, manifest, task = split
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    categories = sorted({r["category"] for r in records})
    ours = run_eval(manifest=manifest, model=str(MODEL), methods=["none", "stvp"], retentions=[0.25],
                    out=str(root / "sift-eval"), threads=1, quiet=True)
    expected = {(r["method"], r["retention"]): r for r in ours["results"]}
    for method, retention in METHODS:
        theirs, proc = _lmms_eval(root, method, retention)
        row = expected[(method, 1.0 if retention is None else retention)]
        assert theirs["accuracy,none"] == pytest.approx(row["accuracy"], abs=1e-6), (method, theirs, row)
        for category in categories:
            assert theirs[f"{metric_name(category)},none"] == pytest.approx(row["per_category"][category]["accuracy"], abs=1e-6)
        stats = [json.loads(line) for line in (root / f"stats-{method}.jsonl").read_text().splitlines()]
        assert len(stats) == len(records) and not any("error" in s for s in stats)
        for s in stats:
            assert s["tokens_after"] < s["tokens_before"] if method == "stvp" else s["tokens_after"] == s["tokens_before"]
            assert s["achieved_retention"] == pytest.approx(retention or 1.0, abs=0.01) and s["selection_ms"] >= 0
        assert "sift_qwen2_5_omni sift_synthav doc" in proc.stdout + proc.stderr  # the per-sample log lines
        assert list((root / f"out-{method}").rglob("*_samples_sift_synthav.jsonl"))


def test_lmms_task_from_the_cli_and_a_dailyomni_manifest(tmp_path):
    """`sift lmms-task` writes a task lmms-eval can read; a Daily-Omni record becomes a doc with its letter."""
    video = tmp_path / "v1.mp4"
    video.write_bytes(b"")
    (tmp_path / "qa.json").write_text(json.dumps([{"Question": "What plays?", "Choice": ["A. a drum", "B. a flute"],
                                                   "Answer": "B", "video_id": "v1", "Type": "Audio recognition",
                                                   "video_duration": "30s"}]))
    proc = subprocess.run([sys.executable, "-m", "sift", "lmms-task", "--manifest", str(tmp_path / "qa.json"), "--out",
                           str(tmp_path / "tasks"), "--name", "sift_dailyomni", "--schema", "dailyomni"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = tmp_path / "tasks" / "sift_dailyomni"
    (doc,) = [json.loads(line) for line in (folder / "sift_dailyomni.jsonl").read_text().splitlines()]
    assert doc["answer"] == "B" and doc["num_options"] == 2 and doc["category"] == "Audio recognition"
    assert "a flute" in doc["prompt"]
    yaml_text = (folder / "sift_dailyomni.yaml").read_text()
    assert "aggregation: !function utils.acc_Audio_recognition" in yaml_text and "dataset_path: json" in yaml_text
    from lmms_eval.utils import load_yaml_config

    config = load_yaml_config(str(folder / "sift_dailyomni.yaml"))
    assert config["task"] == "sift_dailyomni" and callable(config["process_results"])


def test_lmms_model_takes_the_stock_model_args_and_refuses_what_it_cannot_do():
    from sift.apps.lmms_eval_model import SiftOmni, manifests

    (manifest,) = manifests()
    assert manifest.model_id == "sift_qwen2_5_omni" and "sift_qwen3_omni" in manifest.aliases
    model = SiftOmni(pretrained="tiny-qwen3", device="cpu", method="random", retention=0.5, device_map="auto",
                     use_cache=True, max_batch_size=None)  # the stock wrapper's own args are accepted
    assert type(model.model).__name__ == "Qwen3OmniMoeThinkerForConditionalGeneration" and model.compressor.retention == 0.5
    with pytest.raises(ValueError, match="batch_size must be 1"):
        SiftOmni(pretrained="tiny", device="cpu", batch_size=2)
    with pytest.raises(TypeError, match="random"):  # a method option it does not have: get_compressor's error
        SiftOmni(pretrained="tiny", device="cpu", method="random", retention=0.5, colour="red")
