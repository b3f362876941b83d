"""Audio-visual multiple-choice QA data for training and evaluating on Qwen2.5-Omni.

Pieces, from files to batches:

- :func:`read_manifest` reads a JSON (a list of records) or JSONL manifest into :class:`AVQASample` s.
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
  letter answer is mapped through the original prefixes. A bad record raises ``ValueError`` naming the
  file, the line (JSONL) or index (JSON) and what is wrong.

- :func:`build_prompt` renders the question and lettered options in the reference evaluation style.
- :class:`AVQADataset` decodes a clip with :func:`sift.media.load_clip` and runs the real
  ``Qwen2_5OmniProcessor`` on frames + waveform. ``train=True`` appends ``"<letter><|im_end|>"`` as the
  assistant turn and sets ``labels`` on exactly those tokens; ``train=False`` ends with the generation
  prompt. Unreadable items (missing/corrupt file, no audio when audio is required) become ``None`` with a
  rate-limited warning.
- :func:`collate` left-pads a list of items into a batch (dropping and counting ``None`` items).
- :class:`AVQADataModule` ties it together for Lightning (and ``LightningCLI`` YAML configs).
"""

from __future__ import annotations

import ast
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

import lightning as L

__all__ = [
    "SCHEMAS",
    "MODEL_KEYS",
    "IGNORE_INDEX",
    "ANSWER_INSTRUCTION",
    "AVQASample",
    "read_manifest",
    "build_prompt",
    "AVQADataset",
    "collate",
    "AVQADataModule",
]

logger = logging.getLogger(__name__)

SCHEMAS: tuple[str, ...] = ("generic", "dailyomni", "worldsense")

#: The keys a thinker forward / generate takes from a batch (``labels`` is separate).
MODEL_KEYS: tuple[str, ...] = (
    "input_ids",
    "attention_mask",
    "pixel_values_videos",
    "video_grid_thw",
    "video_second_per_grid",
    "input_features",
    "feature_attention_mask",
    "use_audio_in_video",
)

IGNORE_INDEX = -100

#: The reference multiple-choice instruction (lmms-eval / Qwen evaluation style).
ANSWER_INSTRUCTION = "Answer with the option's letter from the given choices directly."

#: Qwen's end-of-turn token, the last supervised token of a training target.
END_OF_TURN = "<|im_end|>"

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


# --------------------------------------------------------------------------------------------- readers


class _Where:
    """Location of a record, for error messages: ``"<file>: line 3"`` / ``"<file>: index 2"``."""

    def __init__(self, path: Path, label: str, number: int):
        self.path, self.label, self.number = path, label, number

    def __str__(self) -> str:
        return f"{self.path}: {self.label}"


def _load_records(path: Path) -> list[tuple[_Where, dict]]:
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
        out = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            where = _Where(path, f"line {lineno}", len(out))
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: invalid JSON: {e}") from e
            if not isinstance(rec, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(rec).__name__}")
            out.append((where, rec))
        return out
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
    out = []
    for i, rec in enumerate(data):
        where = _Where(path, f"index {i}", i)
        if not isinstance(rec, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(rec).__name__}")
        out.append((where, rec))
    return out


def _flatten_worldsense_nested(path: Path, data: dict) -> list[tuple[_Where, dict]] | None:
    """WorldSense's ``worldsense_qa.json``: ``{video_id: {..., "task1": {question, ...}, ...}}``."""
    if not data or not all(isinstance(v, dict) for v in data.values()):
        return None
    tasks_found = any(
        isinstance(v, dict) and "question" in v for entry in data.values() for k, v in entry.items() if k.startswith("task")
    )
    if not tasks_found:
        return None
    out = []
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
    raise ValueError(f"{where}: missing key {keys[0]!r}{alts} (schema {schema!r}); record keys: {sorted(rec)}")


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
    raise ValueError(
        f"{where}: cannot detect the manifest schema from keys {sorted(keys)}; expected 'question'/'options' "
        "(generic), 'Question'/'Choice' (dailyomni) or 'question'/'candidates' (worldsense), or pass schema="
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
            raise ValueError(f"{where}: options must be a list of strings, got the string {raw[:60]!r}") from e
        raw = parsed
    if not isinstance(raw, (list, tuple)):
        raise ValueError(f"{where}: options must be a list of strings, got {type(raw).__name__}")
    opts = [str(o) for o in raw]
    raw_opts = list(opts)
    if not 2 <= len(opts) <= len(_LETTERS):
        raise ValueError(f"{where}: need 2 to {len(_LETTERS)} options, got {len(opts)}")
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
            raise ValueError(f"{where}: option {i} is empty")
    return opts, raw_opts, letter_map


def _answer_letter(answer: Any, raw_options: list[str], options: list[str], letter_map: dict[str, int], where: _Where) -> str:
    n = len(options)
    if isinstance(answer, bool) or answer is None:
        raise ValueError(f"{where}: invalid answer {answer!r}")
    if isinstance(answer, (int, np.integer)):
        if not 0 <= int(answer) < n:
            raise ValueError(f"{where}: answer index {answer} out of range for {n} options")
        return _LETTERS[int(answer)]
    s = str(answer).strip()
    m = _LETTER_RE.match(s)

    def by_letter(letter: str) -> str:
        if letter not in letter_map:
            raise ValueError(f"{where}: answer {s!r} is out of range for {n} options (A-{_LETTERS[n - 1]})")
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
        raise ValueError(f"{where}: answer {s!r} matches several options {[_LETTERS[i] for i in hits]}")
    if m:  # a lower-case letter that is not an option's text
        return by_letter(m.group(1).upper())
    m = _PREFIX_RE.match(s)
    if m:
        letter = (m.group(1) or m.group(2)).upper()
        if letter in letter_map:
            return _LETTERS[letter_map[letter]]
    raise ValueError(
        f"{where}: answer {s[:80]!r} is neither a letter A-{_LETTERS[n - 1]} nor the text of one of the {n} options"
    )


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
    path: str | os.PathLike, schema: str = "auto", video_root: str | os.PathLike | None = None
) -> list[AVQASample]:
    """Read a JSON (list of records) or JSONL manifest into :class:`AVQASample` s.

    ``schema`` is ``"auto"`` (detected from the first record's keys: ``Question``/``Choice``/``Answer``
    -> dailyomni; ``candidates``/``task_type``/``task_domain`` -> worldsense; ``question``/``options`` ->
    generic) or one of :data:`SCHEMAS`; see the module docstring for each schema's keys. Relative video
    paths and bare video ids resolve against ``video_root`` (default: the manifest's folder); files are
    not opened here (a missing video is skipped later, by :class:`AVQADataset`).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: unknown schema, unparsable file, or a bad record (message names the file, the line
            or index, and the missing key / bad value).
    """
    if schema != "auto" and schema not in SCHEMAS:
        raise ValueError(f"unknown schema {schema!r}; expected 'auto' or one of {SCHEMAS}")
    path = Path(path)
    root = Path(os.path.expanduser(str(video_root))) if video_root is not None else path.parent
    records = _load_records(path)
    if not records:
        return []
    if schema == "auto":
        schema = _detect_schema(records[0][1], records[0][0])
    samples: list[AVQASample] = []
    seen: dict[str, str] = {}
    for where, rec in records:
        sid, video, question, raw_options, answer, category = _record_fields(rec, schema, where, root)
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"{where}: question must be a non-empty string, got {question!r}")
        options, raw_list, letter_map = _normalize_options(raw_options, where)
        letter = _answer_letter(answer, raw_list, options, letter_map, where)
        if sid in seen:
            raise ValueError(f"{where}: duplicate id {sid!r} (first at {seen[sid]})")
        seen[sid] = str(where)
        samples.append(
            AVQASample(
                id=sid,
                video=video,
                question=question.strip(),
                options=options,
                answer=letter,
                category=None if category is None else str(category),
            )
        )
    return samples


# --------------------------------------------------------------------------------------------- dataset


class _RateLimitedWarner:
    """Log the first ``first`` messages, then one in every ``every`` (with the running count)."""

    def __init__(self, first: int = 10, every: int = 100):
        self.first, self.every, self.count = first, every, 0

    def __call__(self, msg: str) -> None:
        self.count += 1
        if self.count <= self.first:
            suffix = " (further skip warnings are rate-limited)" if self.count == self.first else ""
            logger.warning("%s%s", msg, suffix)
        elif self.count % self.every == 0:
            logger.warning("%s [%d items skipped so far in this process]", msg, self.count)


class AVQADataset(torch.utils.data.Dataset):
    """Decoded and processed audio-visual MCQ items for a Qwen2.5-Omni thinker.

    The sample metadata is kept in a Hugging Face ``datasets.Dataset`` (:attr:`data`). ``__getitem__``
    decodes the video with :func:`sift.media.load_clip` (``fps``, square ``frame_size`` resize,
    ``max_frames``) and runs ``processor`` (a real ``Qwen2_5OmniProcessor``) on the frames and, with
    ``use_audio_in_video``, the 16 kHz waveform as the video's own audio track.

    Each item is a dict of unbatched tensors: ``input_ids`` / ``attention_mask`` (L,), ``labels`` (L,;
    train only: ``-100`` except the answer letter and ``<|im_end|>``), ``pixel_values_videos``
    (patches, dim), ``video_grid_thw`` (1, 3), ``video_second_per_grid`` (1,), and with audio
    ``input_features`` (mel, frames) / ``feature_attention_mask`` (frames,) trimmed to the clip's own
    audio length; plus ``use_audio_in_video`` and the metadata ``id``, ``answer``, ``category``,
    ``num_options``. An item that cannot be used (missing or corrupt file, no audio track while
    ``use_audio_in_video``, a processing failure) is ``None``; a warning with the id and the reason is
    logged (rate-limited) and the reason is kept in :attr:`skip_reasons` (per process).
    """

    def __init__(
        self,
        samples: Sequence[AVQASample],
        processor: Any,
        *,
        train: bool = True,
        fps: float = 2.0,
        frame_size: int | None = None,
        max_pixels: int | None = None,
        max_frames: int | None = None,
        use_audio_in_video: bool = True,
        system_prompt: str | None = None,
    ):
        import datasets

        self.data = datasets.Dataset.from_list([asdict(s) for s in samples])
        self.processor = processor
        self.train = bool(train)
        self.fps = float(fps)
        self.frame_size = frame_size
        self.max_pixels = max_pixels
        self.max_frames = max_frames
        self.use_audio_in_video = bool(use_audio_in_video)
        self.system_prompt = system_prompt
        self.skip_reasons: dict[str, str] = {}
        self._warn = _RateLimitedWarner()
        tok = processor.tokenizer
        self._end_id = tok.convert_tokens_to_ids(END_OF_TURN)
        if self._end_id is None or self._end_id == tok.unk_token_id:
            raise ValueError(f"the processor's tokenizer has no {END_OF_TURN} token")

    def __len__(self) -> int:
        return len(self.data)

    def sample(self, idx: int) -> AVQASample:
        return AVQASample(**self.data[int(idx)])

    # -- pieces

    def _video_size(self) -> dict[str, int]:
        size = self.processor.video_processor.size
        get = size.get if isinstance(size, dict) else (lambda k: getattr(size, k, None))
        shortest, longest = get("shortest_edge"), get("longest_edge")
        if shortest is None or longest is None:  # processors configured with min/max pixels
            shortest, longest = get("min_pixels"), get("max_pixels")
        if self.max_pixels is not None:
            longest = int(self.max_pixels)
            shortest = min(int(shortest), longest) if shortest is not None else longest
        return {"shortest_edge": int(shortest), "longest_edge": int(longest)}

    def chat_text(self, sample: AVQASample) -> str:
        """The rendered chat: user turn ``<video><prompt>``, generation prompt, and (train) the answer."""
        messages: list[dict] = []
        if self.system_prompt is not None:
            messages.append({"role": "system", "content": [{"type": "text", "text": self.system_prompt}]})
        messages.append({"role": "user", "content": [{"type": "video"}, {"type": "text", "text": build_prompt(sample)}]})
        renderer = self.processor if getattr(self.processor, "chat_template", None) else self.processor.tokenizer
        text = renderer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if self.train:
            text += sample.answer + END_OF_TURN
        return text

    def _skip(self, sample_id: str, reason: str) -> None:
        self.skip_reasons[sample_id] = reason
        self._warn(f"skipping sample {sample_id!r}: {reason}")

    def __getitem__(self, idx: int) -> dict[str, Any] | None:
        from sift.media import load_clip

        sample = self.sample(idx)
        size = None if self.frame_size is None else (int(self.frame_size), int(self.frame_size))
        try:
            clip = load_clip(sample.video, fps=self.fps, size=size, max_frames=self.max_frames)
        except FileNotFoundError:
            self._skip(sample.id, f"video file not found: {sample.video}")
            return None
        except Exception as e:  # corrupt / undecodable / no video stream
            self._skip(sample.id, f"cannot decode video {sample.video}: {e}")
            return None
        if self.use_audio_in_video and (clip.audio is None or len(clip.audio) == 0):
            self._skip(sample.id, f"video has no audio track but use_audio_in_video=True: {sample.video}")
            return None
        try:
            item = self._process(sample, clip)
        except Exception as e:
            self._skip(sample.id, f"processing failed: {type(e).__name__}: {e}")
            return None
        return item

    def _process(self, sample: AVQASample, clip: Any) -> dict[str, Any]:
        kwargs: dict[str, Any] = dict(
            text=[self.chat_text(sample)],
            videos=[np.ascontiguousarray(clip.frames, dtype=np.uint8)],
            return_tensors="pt",
            padding=False,
            videos_kwargs=dict(fps=clip.fps, do_sample_frames=False, size=self._video_size()),
        )
        if self.use_audio_in_video:
            kwargs.update(
                audio=[np.asarray(clip.audio, dtype=np.float32)],
                load_audio_from_video=True,
                audio_from_video_indices=[0],
            )
        out = self.processor(**kwargs)
        input_ids = out["input_ids"][0]
        item: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": out["attention_mask"][0],
            "pixel_values_videos": out["pixel_values_videos"],
            "video_grid_thw": out["video_grid_thw"],
            "video_second_per_grid": torch.as_tensor(out["video_second_per_grid"], dtype=torch.float32).reshape(-1),
        }
        if self.use_audio_in_video:
            mask = out["feature_attention_mask"][0]
            valid = int(mask.sum())  # the processor pads to its max length; keep the clip's own frames
            item["input_features"] = out["input_features"][0, :, :valid]
            item["feature_attention_mask"] = mask[:valid]
        if self.train:
            target = self.processor.tokenizer(sample.answer + END_OF_TURN, add_special_tokens=False)["input_ids"]
            n = len(target)
            if input_ids[-n:].tolist() != list(target) or target[-1] != self._end_id:
                raise RuntimeError(
                    f"answer tokens {target} are not the end of the processed sequence "
                    f"{input_ids[-n:].tolist()} (tokenizer merges across the assistant prompt?)"
                )
            labels = torch.full_like(input_ids, IGNORE_INDEX)
            labels[-n:] = input_ids[-n:]
            item["labels"] = labels
        item["use_audio_in_video"] = self.use_audio_in_video
        item["id"] = sample.id
        item["answer"] = sample.answer
        item["category"] = sample.category
        item["num_options"] = sample.num_options
        return item


# --------------------------------------------------------------------------------------------- collate


def _left_pad(seqs: list[torch.Tensor], value: int) -> torch.Tensor:
    length = max(int(s.shape[0]) for s in seqs)
    out = seqs[0].new_full((len(seqs), length), value)
    for i, s in enumerate(seqs):
        if s.shape[0]:
            out[i, length - s.shape[0] :] = s
    return out


def _right_pad_time(tensors: list[torch.Tensor], value: float = 0) -> torch.Tensor:
    """Stack (..., T_i) tensors into (B, ..., max T), padding at the end of the last dim."""
    length = max(int(t.shape[-1]) for t in tensors)
    out = tensors[0].new_full((len(tensors), *tensors[0].shape[:-1], length), value)
    for i, t in enumerate(tensors):
        out[i, ..., : t.shape[-1]] = t
    return out


def collate(items: Sequence[dict[str, Any] | None], pad_token_id: int) -> dict[str, Any]:
    """Batch :class:`AVQADataset` items; ``None`` items are dropped and counted in ``"skipped"``.

    ``input_ids`` / ``attention_mask`` / ``labels`` are left-padded (``pad_token_id`` / 0 / -100);
    ``pixel_values_videos``, ``video_grid_thw`` and ``video_second_per_grid`` are concatenated along dim
    0; ``input_features`` (B, mel, T) and ``feature_attention_mask`` (B, T) are stacked, zero-padded at
    the end to the longest audio. Also ``use_audio_in_video`` (bool) and the lists ``answer``,
    ``category``, ``num_options`` and ``id``. If every item was skipped, returns
    ``{"skipped": n, "empty": True}``.
    """
    kept = [it for it in items if it is not None]
    skipped = len(items) - len(kept)
    if not kept:
        return {"skipped": skipped, "empty": True}
    flags = {bool(it.get("use_audio_in_video", False)) for it in kept}
    if len(flags) > 1:
        raise ValueError("cannot batch items with different use_audio_in_video")
    batch: dict[str, Any] = {
        "input_ids": _left_pad([it["input_ids"] for it in kept], int(pad_token_id)),
        "attention_mask": _left_pad([it["attention_mask"] for it in kept], 0),
    }
    if all("labels" in it for it in kept):
        batch["labels"] = _left_pad([it["labels"] for it in kept], IGNORE_INDEX)
    elif any("labels" in it for it in kept):
        raise ValueError("cannot batch training items (with labels) with evaluation items")
    for key in ("pixel_values_videos", "video_grid_thw", "video_second_per_grid"):
        if any(key in it for it in kept):
            batch[key] = torch.cat([it[key] for it in kept], dim=0)
    has_audio = ["input_features" in it for it in kept]
    if any(has_audio):
        if not all(has_audio):
            raise ValueError("cannot batch items with and without audio features")
        batch["input_features"] = _right_pad_time([it["input_features"] for it in kept], 0.0)
        batch["feature_attention_mask"] = _right_pad_time([it["feature_attention_mask"] for it in kept], 0)
    batch["use_audio_in_video"] = flags.pop()
    batch["answer"] = [it["answer"] for it in kept]
    batch["category"] = [it["category"] for it in kept]
    batch["num_options"] = [int(it["num_options"]) for it in kept]
    batch["id"] = [it["id"] for it in kept]
    batch["skipped"] = skipped
    return batch


# --------------------------------------------------------------------------------------------- datamodule


class AVQADataModule(L.LightningDataModule):
    """Lightning data module for audio-visual MCQ manifests (see :func:`read_manifest`).

    Args:
        train_manifest: JSON/JSONL manifest for training (``None``: no training data).
        val_manifest: manifest for validation (``None``: no validation).
        schema: ``"auto"``, ``"generic"``, ``"dailyomni"`` or ``"worldsense"``.
        video_root: folder that relative video paths / video ids resolve against (default: each
            manifest's folder).
        processor: ``"tiny"`` for :func:`sift.tiny.tiny_processor` (offline tests), else a path or hub
            name for ``Qwen2_5OmniProcessor.from_pretrained``.
        fps: frame sampling rate.
        frame_size: square resize of decoded frames (e.g. 112 for the tiny processor); ``None`` keeps
            the decoded size and lets the processor apply its own pixel budget.
        max_pixels: per-frame pixel budget override for the video processor.
        max_frames: cap on decoded frames (the audio is cut to the same span).
        use_audio_in_video: feed the video's audio track (videos without audio are then skipped).
        batch_size: items per batch.
        num_workers: data loader workers.
        val_limit: keep only the first ``val_limit`` validation samples.
        system_prompt: optional system turn (``None``: the chat template's default).
    """

    def __init__(
        self,
        train_manifest: str | None = None,
        val_manifest: str | None = None,
        schema: str = "auto",
        video_root: str | None = None,
        processor: str = "tiny",
        fps: float = 2.0,
        frame_size: int | None = None,
        max_pixels: int | None = None,
        max_frames: int | None = None,
        use_audio_in_video: bool = True,
        batch_size: int = 1,
        num_workers: int = 0,
        val_limit: int | None = None,
        system_prompt: str | None = None,
    ):
        super().__init__()
        if schema != "auto" and schema not in SCHEMAS:
            raise ValueError(f"unknown schema {schema!r}; expected 'auto' or one of {SCHEMAS}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.save_hyperparameters()
        self.train_manifest = train_manifest
        self.val_manifest = val_manifest
        self.schema = schema
        self.video_root = video_root
        self.processor_name = processor
        self.fps = fps
        self.frame_size = frame_size
        self.max_pixels = max_pixels
        self.max_frames = max_frames
        self.use_audio_in_video = use_audio_in_video
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_limit = val_limit
        self.system_prompt = system_prompt
        self._processor: Any = None
        self.train_dataset: AVQADataset | None = None
        self.val_dataset: AVQADataset | None = None

    @property
    def processor(self) -> Any:
        """The ``Qwen2_5OmniProcessor`` (built on first use)."""
        if self._processor is None:
            if self.processor_name == "tiny":
                from sift.tiny import tiny_processor

                self._processor = tiny_processor()
            else:
                from transformers import Qwen2_5OmniProcessor

                self._processor = Qwen2_5OmniProcessor.from_pretrained(self.processor_name)
        return self._processor

    @property
    def pad_token_id(self) -> int:
        tok = self.processor.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        if pad is None:
            raise ValueError("the tokenizer has neither a pad nor an eos token")
        return int(pad)

    def _dataset(self, manifest: str, *, train: bool, limit: int | None = None) -> AVQADataset:
        samples = read_manifest(manifest, schema=self.schema, video_root=self.video_root)
        if limit is not None:
            samples = samples[: max(0, int(limit))]
        return AVQADataset(
            samples,
            self.processor,
            train=train,
            fps=self.fps,
            frame_size=self.frame_size,
            max_pixels=self.max_pixels,
            max_frames=self.max_frames,
            use_audio_in_video=self.use_audio_in_video,
            system_prompt=self.system_prompt,
        )

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_manifest and self.train_dataset is None:
            self.train_dataset = self._dataset(self.train_manifest, train=True)
        if stage in (None, "fit", "validate") and self.val_manifest and self.val_dataset is None:
            self.val_dataset = self._dataset(self.val_manifest, train=False, limit=self.val_limit)

    def _loader(self, dataset: AVQADataset, *, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=partial(collate, pad_token_id=self.pad_token_id),
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            self.setup("fit")
        if self.train_dataset is None:
            raise ValueError("AVQADataModule: no train_manifest given")
        return self._loader(self.train_dataset, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_dataset is None:
            self.setup("validate")
        if self.val_dataset is None:
            return []
        return self._loader(self.val_dataset, shuffle=False)
