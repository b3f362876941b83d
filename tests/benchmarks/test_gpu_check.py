"""benchmarks/gpu_check.sh --dry-run (CPU, tiny sizes): every part runs and is recorded, a failing part is recorded
and the script goes on, so the one-shot GPU verification does not rot between GPU loans."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
PARTS = ("bench", "selection", "train", "train-step")


def _run(out: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), "--dry-run", "--out", str(out), *args], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PY": sys.executable, **(env or {})})


@pytest.mark.slow
def test_dry_run_runs_every_part(tmp_path):
    proc = _run(tmp_path / "check")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    summary = (tmp_path / "check" / "summary.md").read_text()
    for part in PARTS:
        assert f"| {part} | ok |" in summary, summary
    for name in ("env.txt", "bench_results.md", "selection_speed_cpu.md", "train_step_cpu.md", "train/selector/config.json"):
        assert (tmp_path / "check" / name).exists(), name
    assert "torch:" in (tmp_path / "check" / "env.txt").read_text()
    assert "reloaded the exported selector" in (tmp_path / "check" / "train.log").read_text()


def test_a_failing_part_is_recorded_and_the_script_goes_on(tmp_path):
    """`python -m sift bench` fails (a wrapper interpreter makes it exit 3); selection still runs; exit status 1."""
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/usr/bin/env bash\nif [ "$1 $2 $3" = "-m sift bench" ]; then echo boom >&2; exit 3; fi\n'
                       f'exec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    proc = _run(tmp_path / "check", "--only", "bench,selection", env={"PY": str(wrapper)})
    assert proc.returncode == 1, proc.stdout[-3000:]
    summary = (tmp_path / "check" / "summary.md").read_text()
    assert "| bench | failed (exit 3) |" in summary and "| selection | ok |" in summary
    assert "| train |" not in summary  # --only
    assert "boom" in (tmp_path / "check" / "bench.log").read_text()
    assert "1 part(s) failed" in proc.stdout
