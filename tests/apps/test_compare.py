"""`sift compare`: Wilson intervals and exact McNemar p-values against known values, and the pairing of answers
files written by sift eval's own `AnswerLog`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sift.apps.cli import main as cli_main
from sift.apps.compare import compare, load_systems, mcnemar_p, wilson_interval
from sift.apps.evaluate import AnswerLog, UsageError


def test_wilson_interval_matches_published_values():
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson_interval(176, 180)[0] == pytest.approx(0.9442, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo90, hi90 = wilson_interval(5, 10, 0.90)
    assert 0.2366 < lo90 and hi90 < 0.7634  # a lower level gives a narrower interval
    with pytest.raises(ValueError, match="confidence"):
        wilson_interval(5, 10, 95)
    with pytest.raises(ValueError, match="correct <= n"):
        wilson_interval(11, 10)


def test_mcnemar_p_is_the_exact_binomial_test():
    assert mcnemar_p(0, 5) == 0.0625  # 2 * 0.5**5
    assert mcnemar_p(1, 3) == mcnemar_p(3, 1) == 0.625  # 2 * (1 + 4) / 16
    assert mcnemar_p(0, 10) == 2 / 1024
    assert mcnemar_p(3, 3) == mcnemar_p(0, 0) == 1.0
    with pytest.raises(ValueError):
        mcnemar_p(-1, 2)


def _run(folder: Path, answers: dict[tuple[str, float], dict[str, bool | None]]) -> Path:
    """An eval output folder whose answers.jsonl holds ``answers``: (method, r) -> question -> right (None: failed)."""
    log = AnswerLog.open(folder / "answers.jsonl", settings={"model": "tiny"})
    for (method, r), by_q in answers.items():
        for qid, right in by_q.items():
            status = {"status": "error", "error": "boom"} if right is None else {"status": "ok", "correct": right}
            log.write({"id": qid, "method": method, "retention": r, "category": "video", **status})
    log.close()
    return folder


@pytest.fixture
def runs(tmp_path) -> tuple[Path, Path]:
    a = _run(tmp_path / "a", {
        ("none", 1.0): {"q1": True, "q2": True, "q3": True, "q4": True, "q5": True},
        ("sel", 0.25): {"q1": True, "q2": True, "q3": True, "q4": False, "q5": None},
        ("stvp", 0.25): {"q1": False, "q2": False, "q3": True, "q4": True, "q5": True},
    })
    b = _run(tmp_path / "b", {("sel", 0.25): {"q1": True, "q2": False, "q3": True, "q4": True, "q9": True}})
    return a, b


def test_compare_pairs_by_question_and_leaves_failed_answers_out(runs):
    systems = load_systems(runs)
    assert set(systems) == {"a/none", "a/sel", "a/stvp", "b/sel"}
    assert "q5" not in systems["a/sel"][0.25]  # failed: in neither side of any pair
    rows = {row["system"]: row for row in compare(systems, "a/sel")}
    assert set(rows) == {"a/none (r = 1)", "a/stvp", "b/sel"}
    stvp = rows["a/stvp"]  # q1-q4: sel right on q1 q2 q3, stvp on q3 q4
    assert (stvp["n"], stvp["only_reference"], stvp["only_other"]) == (4, 2, 1)
    assert (stvp["reference_accuracy"], stvp["accuracy"]) == (0.75, 0.5)
    assert stvp["p"] == 1.0 and stvp["interval"] == list(wilson_interval(2, 4))
    other = rows["b/sel"]  # q1-q4 in both runs (q9 only in b, q5 failed in a)
    assert (other["n"], other["only_reference"], other["only_other"], other["p"]) == (4, 1, 1, 1.0)
    full = rows["a/none (r = 1)"]
    assert (full["n"], full["only_reference"], full["only_other"], full["accuracy"]) == (4, 0, 1, 1.0)


def test_the_reference_is_named_or_a_unique_method(runs):
    systems = load_systems(runs)
    assert {row["system"] for row in compare(systems, "stvp")} == {"a/none (r = 1)", "a/sel", "b/sel"}
    with pytest.raises(UsageError, match=r"'sel' is in 2 runs \(a/sel, b/sel\)"):
        compare(systems, "sel")
    with pytest.raises(UsageError, match="'dycoke' is not in these runs; systems: a/none, a/sel"):
        compare(systems, "dycoke")


def test_run_names_must_differ_and_files_must_be_answers(runs, tmp_path):
    with pytest.raises(UsageError, match="two runs are both named 'a'"):
        load_systems([runs[0], runs[0] / "answers.jsonl"])
    assert set(load_systems([runs[0], runs[0]], names=["x", "y"])) >= {"x/sel", "y/sel"}
    with pytest.raises(UsageError, match="--names gives 1 names for 2 runs"):
        load_systems(runs, names=["x"])
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "answers.jsonl").write_text('{"not": "answers"}\n')
    with pytest.raises(UsageError, match="is not a sift eval answers file"):
        load_systems([tmp_path / "c"])
    with pytest.raises(FileNotFoundError, match="no sift eval answers at"):
        load_systems([tmp_path / "nothing"])


def test_cli_writes_the_table_and_refuses_a_bad_reference_in_one_line(runs, tmp_path, capsys):
    out = tmp_path / "cmp" / "compare.md"
    assert cli_main(["compare", str(runs[0]), str(runs[1]), "--reference", "a/sel", "--out", str(out)]) == 0
    md = out.read_text()
    assert md in capsys.readouterr().out
    assert "| 0.25 | a/stvp | 4 | 75.0 | 50.0 | 15.0-85.0 | 2 | 1 | 1 |" in md
    rows = json.loads(out.with_suffix(".json").read_text())
    assert rows["reference"] == "a/sel" and len(rows["rows"]) == 3
    with pytest.raises(SystemExit) as done:
        cli_main(["compare", str(runs[0]), "--reference", "nope"])
    assert done.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sift compare: error: reference 'nope' is not in these runs")
