"""`sift eval` does not lose a run to one bad input: failed answers, interrupted runs (--resume), bad manifest
records (skipped, or refused with --strict), empty manifests, and one-line command-line errors.

Everything runs on the tiny model (sift.testbed.tiny) with 2 s / 4 s synthesized clips and 2 new tokens. Failures
are provoked with real inputs: a compressor that refuses clips longer than 2 s (so only the 4 s clip
fails, inside `generate`), one that raises KeyboardInterrupt once (Ctrl-C mid-run), and junk bytes
as a video.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import pytest

import sift
from sift.apps.cli import main as cli_main
from sift.compressors.random_drop import RandomCompressor
from sift.apps.evaluate import EvalError, UsageError, run_eval
from sift.compressors import unregister
from sift.manifest import ManifestError, read_manifest, read_manifest_report
from sift.testbed.media import synth_clip, write_clip

REPO = Path(__file__).resolve().parents[2]
RAISES = "test-raises-on-long-clips"
INTERRUPTS = "test-interrupts-once"
FAST = dict(model="tiny", frame_size=112, max_new_tokens=2, threads=1, quiet=True)


class RaisesOnLongClips(RandomCompressor):
    """`random`, except that it raises on more than 2 s of video (the 4 s clip: 8 frames, 64 video tokens)."""

    name: ClassVar[str] = RAISES

    def select(self, batch):
        if batch.layout.rows[0].num_video > 32:  # a 2 s clip at 2 fps: 4 frames -> 2 x 4 x 4 patches
            raise RuntimeError("this test compressor refuses clips longer than 2 s")
        return super().select(batch)


class InterruptsOnce(RandomCompressor):
    """`random`, except that its `countdown`-th call raises KeyboardInterrupt (then never again)."""

    name: ClassVar[str] = INTERRUPTS
    countdown: ClassVar[int | None] = None

    def select(self, batch):
        if InterruptsOnce.countdown is not None:
            InterruptsOnce.countdown -= 1
            if InterruptsOnce.countdown <= 0:
                InterruptsOnce.countdown = None
                raise KeyboardInterrupt
        return super().select(batch)


@pytest.fixture(scope="module", autouse=True)
def test_compressors():
    """Registered at run time, not at import, so other modules' method lists are collected without them."""
    sift.register(RAISES)(RaisesOnLongClips)
    sift.register(INTERRUPTS)(InterruptsOnce)
    yield
    unregister(RAISES)
    unregister(INTERRUPTS)


def _record(sid: str, video: str, answer: str = "A", category: str = "motion") -> dict:
    return {"id": sid, "video": video, "question": "What moves?", "options": ["a square", "a circle"],
            "answer": answer, "category": category}


def _write_jsonl(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("robust")
    write_clip(synth_clip(2.0, size=(112, 112), seed=0), d / "a.mp4")
    write_clip(synth_clip(2.0, size=(112, 112), seed=1, tone_hz=660.0), d / "b.mp4")
    write_clip(synth_clip(4.0, size=(112, 112), seed=2), d / "long.mp4")
    (d / "junk.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))  # not a decodable video
    return d


@pytest.fixture(scope="module")
def manifest(media) -> Path:
    return _write_jsonl(media / "m.jsonl", [
        _record("q1", "a.mp4", "A"), _record("q2", "long.mp4", "B", "sound"), _record("q3", "b.mp4", "B", "sound"),
    ])


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _accuracies(result: dict) -> dict:
    return {(r["method"], r["retention"]): (r["n"], r["failed"], r["accuracy"]) for r in result["results"]}


# --------------------------------------------------------------------------------------------- failed answers


def test_a_failing_answer_is_recorded_and_counted_and_the_run_finishes(media, manifest, tmp_path, capsys):
    bad = _write_jsonl(media / "junk.jsonl", [_record("q1", "a.mp4"), _record("q2", "long.mp4"), _record("qj", "junk.mp4")])
    out = tmp_path / "eval"
    result = run_eval(manifest=bad, methods=["none", RAISES], retentions=[0.5], out=str(out), **{**FAST, "quiet": False})
    assert (result["samples"], result["evaluated"], result["skipped"], result["failed"]) == (3, 2, 1, 1)
    assert result["skip_reasons"]["qj"]  # junk bytes: skipped with the decoder's reason, the run goes on
    (failure,) = result["failures"]
    assert (failure["id"], failure["method"], failure["retention"]) == ("q2", RAISES, 0.5)
    assert failure["error"] == "RuntimeError: this test compressor refuses clips longer than 2 s"
    rows = _accuracies(result)
    assert rows[("none", 1.0)][:2] == (2, 0) and rows[(RAISES, 0.5)][:2] == (1, 1)
    assert 0.0 <= rows[(RAISES, 0.5)][2] <= 1.0
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["failed"] == 1 and on_disk["failures"] == result["failures"]
    answers = _lines(out / "answers.jsonl")
    assert "settings" in answers[0] and len(answers) == 1 + 4  # 2 samples x 2 configs, the failed one included
    assert [a["status"] for a in answers[1:]].count("failed") == 1
    md = (out / "results.md").read_text()
    assert "Failed answers (not in the accuracy): 1." in md and "## Failed answers" in md
    assert f"`q2` {RAISES} @ 0.5: RuntimeError" in md
    assert "Failed answers (not in the accuracy): 1." in capsys.readouterr().out  # the printed summary


# --------------------------------------------------------------------------------------------- resume


def test_an_interrupted_run_keeps_its_answers_and_resume_completes_it(manifest, tmp_path):
    options = dict(manifest=manifest, methods=["none", INTERRUPTS], retentions=[0.5, 0.25], **FAST)
    full = run_eval(out=str(tmp_path / "full"), **options)
    out = tmp_path / "resumed"
    InterruptsOnce.countdown = 4  # Ctrl-C inside the 4th compressed generate (sample 2, after 5 answers)
    with pytest.raises(KeyboardInterrupt):
        run_eval(out=str(out), **options)
    assert not (out / "results.json").exists()
    assert len(_lines(out / "answers.jsonl")) == 1 + 5  # settings + the finished answers, flushed one by one
    result = run_eval(out=str(out), resume=True, **options)
    assert result["resumed"] == 5 and len(result["predictions"]) == 9
    assert _accuracies(result) == _accuracies(full)
    strip = lambda ps: [{k: v for k, v in p.items() if k != "status"} for p in ps]  # noqa: E731
    assert strip(result["predictions"]) == strip(full["predictions"])
    assert len(_lines(out / "answers.jsonl")) == 1 + 9  # nothing was answered twice


def test_limit_then_resume_extends_the_run(manifest, tmp_path):
    options = dict(manifest=manifest, methods=["none"], out=str(tmp_path), **FAST)
    assert run_eval(limit=1, **options)["samples"] == 1
    result = run_eval(resume=True, **options)
    assert (result["samples"], result["resumed"], len(result["predictions"])) == (3, 1, 3)


def test_resume_refuses_other_settings_and_a_new_run_needs_overwrite(manifest, tmp_path, capsys):
    out = tmp_path / "eval"
    run_eval(manifest=manifest, methods=["none"], limit=1, out=str(out), **FAST)
    with pytest.raises(UsageError, match="already holds 1 answers of an earlier run: pass --resume"):
        run_eval(manifest=manifest, methods=["none"], out=str(out), **FAST)
    with pytest.raises(UsageError, match="pass one"):
        run_eval(manifest=manifest, methods=["none"], out=str(out), resume=True, overwrite=True, **FAST)
    with pytest.raises(UsageError, match=r"cannot --resume .*other settings \(max_new_tokens: 2 there, 3 now\)"):
        run_eval(manifest=manifest, methods=["none"], out=str(out), resume=True, **{**FAST, "max_new_tokens": 3})
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["eval", "--manifest", str(manifest), "--methods", "none", "random", "--out", str(out), "--resume"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "cannot --resume" in err and "methods" in err
    result = run_eval(manifest=manifest, methods=["random"], retentions=[0.5], limit=1, out=str(out), overwrite=True, **FAST)
    assert result["resumed"] == 0 and len(_lines(out / "answers.jsonl")) == 1 + 1  # started over


# --------------------------------------------------------------------------------------------- manifests


def test_a_bad_manifest_record_is_skipped_and_reported_with_its_line(media, tmp_path, caplog):
    path = _write_jsonl(media / "bad.jsonl", [
        _record("q1", "a.mp4"),
        {"id": "q2", "video": "b.mp4", "question": "What?", "answer": "A"},  # line 2: no options
        _record("q3", "b.mp4", "B"),
        "{not json",  # line 4
    ])
    with caplog.at_level(logging.WARNING):
        result = run_eval(manifest=path, methods=["none"], out=str(tmp_path), **FAST)
    assert (result["samples"], result["evaluated"]) == (2, 2)
    lines = [(r["line"], r["reason"].split(":")[0]) for r in result["skipped_records"]]
    assert lines == [(2, "missing key 'options' (schema 'generic'); record keys"), (4, "invalid JSON")]
    assert json.loads((tmp_path / "results.json").read_text())["skipped_records"] == result["skipped_records"]
    assert "bad.jsonl: line 2: missing key 'options'" in caplog.text and "line 4: invalid JSON" in caplog.text
    assert "## Skipped manifest records" in (tmp_path / "results.md").read_text()


def test_json_list_records_are_located_by_line_and_strict_read_still_raises(tmp_path):
    path = tmp_path / "m.json"
    path.write_text('[\n  {"id": "a", "video": "a.mp4", "question": "q", "options": ["x", "y"], "answer": "A"},\n'
                    '  {"id": "b", "video": "a.mp4",\n   "question": "q", "answer": "A"}\n]\n')
    report = read_manifest_report(path)
    assert [s.id for s in report.samples] == ["a"]
    (skip,) = report.skipped
    assert (skip.line, skip.index, skip.place) == (3, 1, f"{path}: index 1 (line 3)")
    with pytest.raises(ManifestError, match="index 1: missing key 'options'") as info:
        read_manifest(path)  # the training data module's default: refuse
    assert info.value.line == 3
    assert [s.id for s in read_manifest(path, strict=False)] == ["a"]


def test_strict_refuses_a_bad_manifest_in_one_line(media, tmp_path, capsys):
    path = _write_jsonl(media / "strict.jsonl", [_record("q1", "a.mp4"), _record("q2", "b.mp4", "E")])
    with pytest.raises(UsageError, match=r"strict.jsonl: line 2: answer 'E' is out of range"):
        run_eval(manifest=path, methods=["none"], out=str(tmp_path), strict=True, **FAST)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["eval", "--manifest", str(path), "--methods", "none", "--strict", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "line 2" in err and "out of range" in err
    assert not (tmp_path / "answers.jsonl").exists()  # refused before anything ran


def test_an_empty_or_all_bad_manifest_exits_nonzero(media, tmp_path, capsys):
    empty = _write_jsonl(media / "empty.jsonl", [])
    all_bad = _write_jsonl(media / "allbad.jsonl", ["[1, 2]", {"id": "x", "video": "a.mp4", "question": "q"}])
    for path, why in ((empty, "it has no records"), (all_bad, "all 2 records are bad (first: ")):
        with pytest.raises(SystemExit) as exit_info:
            cli_main(["eval", "--manifest", str(path), "--methods", "none", "--out", str(tmp_path)])
        err = capsys.readouterr().err
        assert exit_info.value.code != 0 and "nothing to evaluate" in err and why in err and "Traceback" not in err
    # every video missing: results.json keeps the reasons, but the run is an error, not NaN accuracies
    missing = _write_jsonl(media / "missing.jsonl", [_record("q1", "nope.mp4")])
    with pytest.raises(EvalError, match="no answer to score: 1 of 1 samples skipped"):
        run_eval(manifest=missing, methods=["none"], out=str(tmp_path / "m"), **FAST)
    assert "video file not found" in json.loads((tmp_path / "m" / "results.json").read_text())["skip_reasons"]["q1"]


# --------------------------------------------------------------------------------------------- command line


def _run(module: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), **env}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=300)


@pytest.mark.slow
def test_sift_errors_are_one_line_and_sift_debug_shows_the_traceback(tmp_path, monkeypatch, capsys):
    proc = _run("sift", "eval", "--manifest", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"sift eval: error: no such manifest file: {tmp_path / 'nope.jsonl'}"
    monkeypatch.setenv("SIFT_DEBUG", "1")
    with pytest.raises(FileNotFoundError):  # in-process: the exception itself, for a traceback
        cli_main(["eval", "--manifest", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path)])


@pytest.mark.slow
def test_train_errors_are_one_line(tmp_path):
    proc = _run("train", "fit", "--model.model", "tiny", "--data.train_manifest", str(tmp_path / "nope.json"),
                "--trainer.accelerator", "cpu", "--trainer.logger", "false", "--trainer.enable_checkpointing", "false",
                "--trainer.default_root_dir", str(tmp_path))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]  # Lightning's own warnings come before it
    assert last == f"python -m train fit: error: no such manifest file: {tmp_path / 'nope.json'}"
