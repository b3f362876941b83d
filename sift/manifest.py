"""Audio-visual multiple-choice manifests: records, prompts and answer letters (no torch, no Lightning).

Used by the training application (``train.data``) and by ``sift eval``.

:func:`read_manifest` reads a JSON (a list of records) or JSONL manifest into :class:`AVQASample` s.
Three record schemas are understood (``schema="auto"`` picks one from the first record's keys):

``"generic"`` (this project's own format)::

    {"id": "q1", "video": "clips/q1.mp4", "question": "...", "options": ["...", "..."],
     "answer": "B", "category": "counting"}

``id`` and ``category`` are optional (``id`` defaults to ``"<manifest stem>-<record number>"``);
``video_path`` is accepted instead of ``video``.

``"dailyomni"`` (Daily-Omni's ``qa.json``)::

    {"Question": "...", "Choice": ["A. ...", "B. ...", ...], "Answer": "A", "video_id": "G_VTkkb34gw",
     "Type": "AV Event Alignment", "video_category": "...", "video_duration": "30s", ...}

The video is ``video_path`` when the record has one, else looked up from ``video_id`` (see below);
``category`` is ``Type``; ``id`` is the record's ``id`` if any, else ``"<video_id>-<record number>"``.

``"worldsense"`` (WorldSense, flat rows as in lmms-eval / VLMEvalKit)::

    {"index": 12, "video": "Zh3lbuNbdF8", "video_path": "./videos/Zh3lbuNbdF8.mp4",
     "question": "...", "candidates": ["A. ...", "B. ...", "C. ...", "D. ..."], "answer": "C",
     "task_type": "Audio Recognition", "task_domain": "Recognition", "domain": "Sports", ...}

The video is ``video_path``, else ``video``, else ``video_id``; ``candidates`` may also be given as
``options`` or as the string form of a list (VLMEvalKit's TSV); ``category`` is ``task_type`` (else
``task_domain``, else ``domain``); ``id`` is ``index`` (else ``id``, else ``"<video>-<record number>"``).
The original nested release file ``worldsense_qa.json`` (``{video_id: {"duration", "domain", ...,
"task1": {"question", "candidates", "answer", "task_domain", "task_type"}, "task2": ...}}``) is
flattened into such rows (``id = "<video_id>/<taskN>"``, video looked up from the video id).

Relative video paths are resolved against ``video_root`` (default: the manifest's folder). A bare video
id resolves to the first existing of ``<root>/<id>.mp4``, ``<root>/videos/<id>.mp4`` and
``<root>/<id>/<id>_video.mp4`` (Daily-Omni's release layout), else to ``<root>/<id>.mp4``.

Answers may be a letter (``"B"``, ``"(B)"``, ``"B."``), an option's text (exact, or ignoring case,
surrounding spaces and a final period), a prefixed option (``"B. a dog"``) or a 0-based integer index.
Option prefixes (``"A. "``, ``"A) "``, ``"(A) "``, ``"A: "``) are removed when *every* option carries
one and their letters are exactly the first N letters; options are then re-lettered in list order and a
letter answer is mapped through the original prefixes. A bad record raises :class:`ManifestError` (a
``ValueError``) naming the file, the line (JSONL) or index (JSON) and what is wrong;
:func:`read_manifest_report` (and ``read_manifest(..., strict=False)``) skips such records instead and
reports each one's line and reason (:class:`SkippedRecord`), so one typo does not refuse a whole benchmark.

:func:`build_prompt` renders the question and lettered options in the reference evaluation style, and
:func:`extract_letter` reads the option letter back from a model's reply (reference evaluations: the first
option letter the stripped, upper-cased reply starts with).
"""

from __future__ import annotations

import ast
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "SCHEMAS",
    "ANSWER_INSTRUCTION",
    "AVQASample",
    "ManifestError",
    "ManifestReport",
    "SkippedRecord",
    "read_manifest",
    "read_manifest_report",
    "build_prompt",
    "extract_letter",
]

logger = logging.getLogger(__name__)

SCHEMAS: tuple[str, ...] = ("generic", "dailyomni", "worldsense")

#: The reference multiple-choice instruction (lmms-eval / Qwen evaluation style).
ANSWER_INSTRUCTION = "Answer with the option's letter from the given choices directly."

_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_VIDEO_EXTS = {".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".flv", ".mpg", ".mpeg", ".ts", ".wmv"}
# "A. x", "A) x", "A: x", "A、x", "(A) x" -- the letter must be followed by punctuation.
_PREFIX_RE = re.compile(r"^\s*(?:\(\s*([A-Za-z])\s*\)|([A-Za-z])\s*[.．:：)、])\s*(.*)$", re.DOTALL)
_LETTER_RE = re.compile(r"^\(?\s*([A-Za-z])\s*\)?\s*[.．:：)]?$")

# --------------------------------------------------------------------------------------------- samples


@dataclass
class AVQASample:
    """One multiple-choice question about one video.

    Attributes:
        id: unique id (string).
        video: path of the video file.
        question: the question text.
        options: the option texts, without letter prefixes; option ``i`` has letter ``"ABC..."[i]``.
        answer: the correct option's letter, ``"A"`` .. ``"Z"``.
        category: question type / category for per-category metrics, or ``None``.
    """

    id: str
    video: str
    question: str
    options: list[str]
    answer: str
    category: str | None = None

    @property
    def num_options(self) -> int:
        return len(self.options)

    @property
    def answer_index(self) -> int:
        return _LETTERS.index(self.answer)


def build_prompt(sample: AVQASample) -> str:
    """The question, one ``"A. option"`` line per option, then :data:`ANSWER_INSTRUCTION`."""
    lines = [sample.question.strip()]
    lines += [f"{_LETTERS[i]}. {opt}" for i, opt in enumerate(sample.options)]
    lines.append(ANSWER_INSTRUCTION)
    return "\n".join(lines)


def extract_letter(reply: str, num_options: int) -> str | None:
    """The first option letter (``"A"`` .. the ``num_options``-th) that the stripped, upper-cased reply starts with.

    >>> extract_letter(" b. a dog", 4)
    'B'
    >>> extract_letter("The answer is B", 4) is None  # only the start of the reply counts, as in the reference evals
    True
    """
    text = str(reply).strip().upper()
    for letter in _LETTERS[: max(0, min(int(num_options), len(_LETTERS)))]:
        if text.startswith(letter):
            return letter
    return None


# --------------------------------------------------------------------------------------------- readers


class ManifestError(ValueError):
    """One bad manifest record; a ``ValueError`` whose message names the file, the place and the problem.

    Carries the parts separately so that lenient readers can report them (``sift eval``'s ``skipped_records``):
    ``location`` (``"<file>: line 3"``), ``line`` (1-based line in the file, ``None`` where unknown),
    ``index`` (0-based record number) and ``reason`` (the message without the location).
    """

    def __init__(self, reason: str, *, location: str, line: int | None = None, index: int | None = None):
        super().__init__(f"{location}: {reason}")
        self.reason, self.location, self.line, self.index = reason, location, line, index

    @property
    def place(self) -> str:
        """``location``, plus the line where the location is not one (``"<file>: index 2 (line 9)"``)."""
        return _place(self.location, self.line)


@dataclass(frozen=True)
class SkippedRecord:
    """A record :func:`read_manifest_report` left out, and why (``line``: 1-based, ``None`` where unknown)."""

    line: int | None
    index: int | None
    location: str
    reason: str

    @property
    def place(self) -> str:
        """``location``, plus the line where the location is not one (``"<file>: index 2 (line 9)"``)."""
        return _place(self.location, self.line)

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "index": self.index, "location": self.location, "reason": self.reason}


def _place(location: str, line: int | None) -> str:
    return location if line is None or location.endswith(f"line {line}") else f"{location} (line {line})"


@dataclass
class ManifestReport:
    """What :func:`read_manifest_report` read: the usable samples, the skipped records, the schema used."""

    samples: list[AVQASample]
    skipped: list[SkippedRecord]
    schema: str


class _Where:
    """Location of a record, for error messages: ``"<file>: line 3"`` / ``"<file>: index 2"``."""

    def __init__(self, path: Path, label: str, number: int, line: int | None = None):
        self.path, self.label, self.number, self.line = path, label, number, line

    def __str__(self) -> str:
        return f"{self.path}: {self.label}"


def _bad(where: _Where, reason: str) -> ManifestError:
    return ManifestError(reason, location=str(where), line=where.line, index=where.number)


_Entry = tuple[_Where, dict | ManifestError]  # a record, or why its line could not be read as one


def _load_records(path: Path) -> list[_Entry]:
    """The file's records in order; a JSONL line that is not a JSON object is kept as its ManifestError.

    Whole-file problems (missing file, a JSON document that does not parse) raise: no record can be located.
    """
    if not path.is_file():
        raise FileNotFoundError(f"no such manifest file: {path}")
    text = path.read_text(encoding="utf-8")
    jsonl = path.suffix.lower() in {".jsonl", ".ndjson"}
    data: Any = None
    if not jsonl:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            if not text.lstrip().startswith("{"):
                raise ValueError(f"{path}: invalid JSON: {e}") from e
            jsonl = True  # several objects, one per line: JSONL under a .json name
    if jsonl:
        return _jsonl_records(path, text)
    if isinstance(data, dict):
        nested = _flatten_worldsense_nested(path, data)
        if nested is None:
            raise ValueError(
                f"{path}: expected a JSON list of records, JSONL, or WorldSense's nested "
                "{video_id: {'task1': {...}, ...}} file; got an object with keys "
                f"{sorted(data)[:8]}"
            )
        return nested
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    lines = _element_lines(text)
    out: list[_Entry] = []
    for i, rec in enumerate(data):
        where = _Where(path, f"index {i}", i, lines[i] if i < len(lines) else None)
        out.append((where, rec if isinstance(rec, dict) else _bad(where, f"expected a JSON object, got {type(rec).__name__}")))
    return out


def _jsonl_records(path: Path, text: str) -> list[_Entry]:
    out: list[_Entry] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = _Where(path, f"line {lineno}", len(out), lineno)
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            out.append((where, _bad(where, f"invalid JSON: {e}")))
            continue
        out.append((where, rec if isinstance(rec, dict) else _bad(where, f"expected a JSON object, got {type(rec).__name__}")))
    return out


def _element_lines(text: str) -> list[int]:
    """The 1-based line each element of a top-level JSON list starts on, so skipped records can be found.

    A second, positional pass (``json.loads`` keeps no positions); ``[]`` if the text defeats it.
    """
    decoder, gap = json.JSONDecoder(), re.compile(r"[\s,]*")
    lines: list[int] = []
    try:
        pos = text.index("[") + 1
        line, counted = 1, 0
        while True:
            pos = gap.match(text, pos).end()  # type: ignore[union-attr]
            if pos >= len(text) or text[pos] == "]":
                return lines
            line += text.count("\n", counted, pos)
            counted = pos
            lines.append(line)
            _, pos = decoder.raw_decode(text, pos)
    except ValueError:
        return []


def _flatten_worldsense_nested(path: Path, data: dict) -> list[_Entry] | None:
    """WorldSense's ``worldsense_qa.json``: ``{video_id: {..., "task1": {question, ...}, ...}}``."""
    if not data or not all(isinstance(v, dict) for v in data.values()):
        return None
    tasks_found = any(
        isinstance(v, dict) and "question" in v for entry in data.values() for k, v in entry.items() if k.startswith("task")
    )
    if not tasks_found:
        return None
    out: list[_Entry] = []
    for vid, entry in data.items():
        shared = {k: v for k, v in entry.items() if not (k.startswith("task") and isinstance(v, dict))}
        for key, task in entry.items():
            if not (key.startswith("task") and isinstance(task, dict)):
                continue
            rec = {**shared, **task, "video_id": str(vid), "index": f"{vid}/{key}"}
            out.append((_Where(path, f"video {vid!r} {key}", len(out)), rec))
    return out


def _require(rec: dict, keys: Sequence[str], where: _Where, schema: str) -> Any:
    for k in keys:
        if k in rec and rec[k] is not None:
            return rec[k]
    alts = " (or " + ", ".join(repr(k) for k in keys[1:]) + ")" if len(keys) > 1 else ""
    raise _bad(where, f"missing key {keys[0]!r}{alts} (schema {schema!r}); record keys: {sorted(rec)}")


def _first(rec: dict, keys: Sequence[str]) -> Any:
    for k in keys:
        if rec.get(k) is not None and rec.get(k) != "":
            return rec[k]
    return None


def _detect_schema(rec: dict, where: _Where) -> str:
    keys = set(rec)
    if keys & {"Question", "Choice", "Answer"}:
        return "dailyomni"
    if keys & {"candidates", "task_type", "task_domain"}:
        return "worldsense"
    if keys & {"options", "question"}:
        return "generic"
    raise _bad(
        where,
        f"cannot detect the manifest schema from keys {sorted(keys)}; expected 'question'/'options' "
        "(generic), 'Question'/'Choice' (dailyomni) or 'question'/'candidates' (worldsense), or pass schema=",
    )


def _resolve_video(value: Any, root: Path, *, as_id: bool) -> str:
    s = str(value).strip()
    if not as_id:
        p = Path(os.path.expanduser(s))
        return os.path.normpath(p if p.is_absolute() else root / p)
    candidates = [root / f"{s}.mp4", root / "videos" / f"{s}.mp4", root / s / f"{s}_video.mp4"]
    for c in candidates:
        if c.is_file():
            return str(c)
    return str(candidates[0])


def _looks_like_path(value: Any) -> bool:
    s = str(value)
    return Path(s).suffix.lower() in _VIDEO_EXTS or "/" in s or os.sep in s


def _norm_text(s: str) -> str:
    return " ".join(s.split()).rstrip(".").casefold()


def _normalize_options(raw: Any, where: _Where) -> tuple[list[str], list[str], dict[str, int]]:
    """(option texts without prefixes, the raw option strings, map from each answer letter to its index)."""
    if isinstance(raw, str):
        try:
            parsed = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError) as e:
            raise _bad(where, f"options must be a list of strings, got the string {raw[:60]!r}") from e
        raw = parsed
    if not isinstance(raw, (list, tuple)):
        raise _bad(where, f"options must be a list of strings, got {type(raw).__name__}")
    opts = [str(o) for o in raw]
    raw_opts = list(opts)
    if not 2 <= len(opts) <= len(_LETTERS):
        raise _bad(where, f"need 2 to {len(_LETTERS)} options, got {len(opts)}")
    matches = [_PREFIX_RE.match(o) for o in opts]
    if all(matches):
        prefix = [(m.group(1) or m.group(2)).upper() for m in matches]
        if sorted(prefix) == list(_LETTERS[: len(opts)]):
            texts = [m.group(3).strip() for m in matches]
            letter_map = {p: i for i, p in enumerate(prefix)}
            opts = texts
        else:
            letter_map = {_LETTERS[i]: i for i in range(len(opts))}
    else:
        letter_map = {_LETTERS[i]: i for i in range(len(opts))}
    opts = [o.strip() for o in opts]
    for i, o in enumerate(opts):
        if not o:
            raise _bad(where, f"option {i} is empty")
    return opts, raw_opts, letter_map


def _answer_letter(answer: Any, raw_options: list[str], options: list[str], letter_map: dict[str, int], where: _Where) -> str:
    n = len(options)
    if isinstance(answer, bool) or answer is None:
        raise _bad(where, f"invalid answer {answer!r}")
    if isinstance(answer, (int, np.integer)):
        if not 0 <= int(answer) < n:
            raise _bad(where, f"answer index {answer} out of range for {n} options")
        return _LETTERS[int(answer)]
    s = str(answer).strip()
    m = _LETTER_RE.match(s)

    def by_letter(letter: str) -> str:
        if letter not in letter_map:
            raise _bad(where, f"answer {s!r} is out of range for {n} options (A-{_LETTERS[n - 1]})")
        return _LETTERS[letter_map[letter]]

    if m and m.group(1).isupper():  # "B", "(B)", "B." -- a letter first, even if an option reads "B"
        return by_letter(m.group(1))
    for cands in (options, raw_options):
        hits = [i for i, o in enumerate(cands) if o.strip() == s]
        if len(hits) == 1:
            return _LETTERS[hits[0]]
    hits = [i for i, o in enumerate(options) if _norm_text(o) == _norm_text(s)]
    if len(hits) == 1:
        return _LETTERS[hits[0]]
    if len(hits) > 1:
        raise _bad(where, f"answer {s!r} matches several options {[_LETTERS[i] for i in hits]}")
    if m:  # a lower-case letter that is not an option's text
        return by_letter(m.group(1).upper())
    m = _PREFIX_RE.match(s)
    if m:
        letter = (m.group(1) or m.group(2)).upper()
        if letter in letter_map:
            return _LETTERS[letter_map[letter]]
    raise _bad(where, f"answer {s[:80]!r} is neither a letter A-{_LETTERS[n - 1]} nor the text of one of the {n} options")


def _record_fields(rec: dict, schema: str, where: _Where, root: Path) -> tuple[str, str, Any, Any, Any, Any]:
    """(id, video path, question, options, answer, category) of one record, by schema."""
    n = where.number
    stem = where.path.stem
    if schema == "generic":
        video = _require(rec, ("video", "video_path"), where, schema)
        question = _require(rec, ("question",), where, schema)
        options = _require(rec, ("options",), where, schema)
        answer = _require(rec, ("answer",), where, schema)
        sid = _first(rec, ("id",))
        sid = f"{stem}-{n}" if sid is None else sid
        return str(sid), _resolve_video(video, root, as_id=False), question, options, answer, rec.get("category")
    if schema == "dailyomni":
        question = _require(rec, ("Question",), where, schema)
        options = _require(rec, ("Choice",), where, schema)
        answer = _require(rec, ("Answer",), where, schema)
        if _first(rec, ("video_path",)) is not None:
            video = _resolve_video(rec["video_path"], root, as_id=False)
            vid = Path(str(rec["video_path"])).stem
        else:
            vid = str(_require(rec, ("video_id", "video_path"), where, schema))
            video = _resolve_video(vid, root, as_id=False) if _looks_like_path(vid) else _resolve_video(vid, root, as_id=True)
        sid = _first(rec, ("id", "qa_id", "question_id"))
        sid = f"{vid}-{n}" if sid is None else sid
        return str(sid), video, question, options, answer, _first(rec, ("Type", "type"))
    if schema == "worldsense":
        question = _require(rec, ("question",), where, schema)
        options = _require(rec, ("candidates", "options"), where, schema)
        answer = _require(rec, ("answer",), where, schema)
        ref = _first(rec, ("video_path",))
        if ref is not None:
            video = _resolve_video(ref, root, as_id=False)
            vid = Path(str(ref)).stem
        else:
            vid = str(_require(rec, ("video_path", "video", "video_id"), where, schema))
            video = _resolve_video(vid, root, as_id=not _looks_like_path(vid))
            vid = Path(vid).stem
        sid = _first(rec, ("index", "id"))
        sid = f"{vid}-{n}" if sid is None else sid
        return str(sid), video, question, options, answer, _first(rec, ("task_type", "task_domain", "domain"))
    raise ValueError(f"unknown schema {schema!r}; expected 'auto' or one of {SCHEMAS}")


def read_manifest(
    path: str | os.PathLike,
    schema: str = "auto",
    video_root: str | os.PathLike | None = None,
    *,
    strict: bool = True,
) -> list[AVQASample]:
    """Read a JSON (list of records) or JSONL manifest into :class:`AVQASample` s.

    ``schema`` is ``"auto"`` (detected from the first record's keys: ``Question``/``Choice``/``Answer``
    -> dailyomni; ``candidates``/``task_type``/``task_domain`` -> worldsense; ``question``/``options`` ->
    generic) or one of :data:`SCHEMAS`; see the module docstring for each schema's keys. Relative video
    paths and bare video ids resolve against ``video_root`` (default: the manifest's folder); files are
    not opened here (a missing video is skipped later, by :class:`AVQADataset`).

    ``strict=False`` skips bad records (logged with ``logging.warning``) instead of raising; use
    :func:`read_manifest_report` to also get which ones and why.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: unknown schema or unparsable file; with ``strict``, a bad record (a :class:`ManifestError`
            naming the file, the line or index, and the missing key / bad value).
    """
    return read_manifest_report(path, schema, video_root, strict=strict).samples


def read_manifest_report(
    path: str | os.PathLike,
    schema: str = "auto",
    video_root: str | os.PathLike | None = None,
    *,
    strict: bool = False,
) -> ManifestReport:
    """:func:`read_manifest`, lenient by default: one bad record of thousands should not cost the rest.

    Each bad record (unparsable JSONL line, missing key, bad options or answer, duplicate id) is left out,
    logged, and listed in :attr:`ManifestReport.skipped` with its line and reason; ``strict=True`` raises
    the first one as a :class:`ManifestError` instead. Whole-file problems always raise. With
    ``schema="auto"`` the schema comes from the first record whose keys identify one.
    """
    if schema != "auto" and schema not in SCHEMAS:
        raise ValueError(f"unknown schema {schema!r}; expected 'auto' or one of {SCHEMAS}")
    path = Path(path)
    root = Path(os.path.expanduser(str(video_root))) if video_root is not None else path.parent
    records = _load_records(path)
    report = ManifestReport(samples=[], skipped=[], schema=schema)
    if not records:
        return report
    if schema == "auto":
        report.schema = schema = _auto_schema(records, strict)
    seen: dict[str, str] = {}
    for where, rec in records:
        try:
            sample = _sample(rec, schema, where, root)
            if sample.id in seen:
                raise _bad(where, f"duplicate id {sample.id!r} (first at {seen[sample.id]})")
        except ManifestError as e:
            if strict:
                raise
            report.skipped.append(SkippedRecord(e.line, e.index, e.location, e.reason))
            logger.warning("skipping manifest record %s: %s", e.place, e.reason)
            continue
        seen[sample.id] = str(where)
        report.samples.append(sample)
    return report


def _auto_schema(records: list[_Entry], strict: bool) -> str:
    """The schema of the first record (strict), or of the first record that names one (lenient)."""
    first_error: ManifestError | None = None
    for where, rec in records:
        try:
            if isinstance(rec, ManifestError):
                raise rec
            return _detect_schema(rec, where)
        except ManifestError as e:
            if strict:
                raise
            first_error = first_error or e
    raise ValueError(f"{records[0][0].path}: no record identifies the schema; first: {first_error}")


def _sample(rec: dict | ManifestError, schema: str, where: _Where, root: Path) -> AVQASample:
    """One record as a sample; raises its :class:`ManifestError` when it is not a valid one."""
    if isinstance(rec, ManifestError):
        raise rec
    sid, video, question, raw_options, answer, category = _record_fields(rec, schema, where, root)
    if not isinstance(question, str) or not question.strip():
        raise _bad(where, f"question must be a non-empty string, got {question!r}")
    options, raw_list, letter_map = _normalize_options(raw_options, where)
    letter = _answer_letter(answer, raw_list, options, letter_map, where)
    return AVQASample(
        id=sid,
        video=video,
        question=question.strip(),
        options=options,
        answer=letter,
        category=None if category is None else str(category),
    )
