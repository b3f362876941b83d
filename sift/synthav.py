"""SynthAV: a procedural audio-visual multiple-choice QA benchmark that is generated, not downloaded.

Why: no Qwen weights and no benchmark videos can be fetched on a CPU-only, offline machine, yet the
learned selector has to be trained and compared against the training-free methods on *something* where
the right tokens matter. SynthAV clips are real mp4 files (H.264 video + AAC audio, written with PyAV)
with a manifest in the generic schema of :mod:`sift.manifest`, so they go through exactly the code paths
real data does (decoding, the real ``Qwen2_5OmniProcessor``, the token layout, ``sift eval``).

A clip (``min_seconds``..``max_seconds`` whole seconds, ``size`` x ``size`` pixels, 2 fps) shows 2-4
shapes, one after another, each in its own time slot, moving over a textured static background (so most
video tokens are spatially and temporally redundant, as in real video). Every shape has its own color
(:data:`COLORS`) and kind (:data:`SHAPES`). While each shape is on screen one sound plays
(:data:`SOUNDS`: a low tone, a high tone, a chirp or a noise burst, each at most once per clip, the high
tone always present); the rest of the track is near-silence. Three questions are asked about every clip
(the ``category`` field):

- ``"cross-modal"``: *What color was the shape on screen when the high tone sounded?* (needs the video at
  the moment of an audio event),
- ``"audio"``: *Which sound was heard first?* (audio only, ordering),
- ``"video"``: *What color was the first shape to appear?* (video only, ordering).

(The video question asks for the first shape's color, not its kind: with the kind, tiny-omni stayed at
chance on it within its CPU training budget while learning the other two, because a 28x28-pixel token
sees only part of a shape; the kinds are still drawn, named in the caption and labelled per token.)

Each question has 4 options in a fixed order (the four colors, sounds or shapes); answers are uniform
over the 4 letters because colors, first sounds and shapes are drawn uniformly. Everything is a pure
function of ``(seed, split, index)``: splits use disjoint random streams, and the same call writes the
same files (up to the codec's own determinism) on any machine.

Command line: ``python -m sift synthav OUT --train 1000 --validation 100 --test 200``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "COLORS",
    "SHAPES",
    "SOUNDS",
    "CATEGORIES",
    "QUESTIONS",
    "SAMPLE_RATE",
    "FPS",
    "ClipSpec",
    "make_spec",
    "render_clip",
    "cell_labels",
    "sound_label",
    "spec_for_video",
    "questions_for",
    "caption",
    "CAPTION_PROMPT",
    "vocabulary_texts",
    "generate",
]

#: Shape colors (name -> RGB). Saturated, far apart, distinct from the grey background.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "green": (30, 190, 60),
    "blue": (40, 80, 235),
    "yellow": (240, 215, 30),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
SOUNDS: tuple[str, ...] = ("low tone", "high tone", "chirp", "noise burst")
CATEGORIES: tuple[str, ...] = ("cross-modal", "audio", "video")
#: category -> (question, options in their fixed order)
QUESTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "cross-modal": ("What color was the shape on screen when the high tone sounded?", tuple(COLORS)),
    "audio": ("Which sound was heard first?", SOUNDS),
    "video": ("What color was the first shape to appear?", tuple(COLORS)),
}
#: The instruction of the clip description that tiny-omni is also trained to write (not a benchmark question).
CAPTION_PROMPT = "Describe the clip."
SAMPLE_RATE = 16000
FPS = 2.0
_SPLIT_STREAM = {"train": 0, "validation": 1, "test": 2}
_LETTERS = "ABCD"


@dataclass
class Event:
    """One shape's time slot: the shape on screen during [start, end) and its sound at [sound_start, sound_end)."""

    color: str
    shape: str
    start: float
    end: float
    sound: str
    sound_start: float
    sound_end: float
    # motion: centre at `start` and velocity in pixels per second, radius in pixels
    x0: float = 0.0
    y0: float = 0.0
    vx: float = 0.0
    vy: float = 0.0
    radius: float = 20.0


@dataclass
class ClipSpec:
    """Everything needed to render one clip and answer its questions (a pure function of the seed)."""

    seconds: int
    size: int
    events: list[Event] = field(default_factory=list)
    background_seed: int = 0

    @property
    def high_tone_event(self) -> Event:
        return next(e for e in self.events if e.sound == "high tone")


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    if split not in _SPLIT_STREAM:
        raise ValueError(f"unknown split {split!r}; expected one of {tuple(_SPLIT_STREAM)}")
    return np.random.default_rng([int(seed), _SPLIT_STREAM[split], int(index)])


def make_spec(
    seed: int, split: str, index: int, *, min_seconds: int = 6, max_seconds: int = 20, size: int = 112
) -> ClipSpec:
    """The random layout of clip ``index`` of ``split``: duration, shapes, colors, sounds and timings."""
    if not (4 <= min_seconds <= max_seconds):
        raise ValueError(f"need 4 <= min_seconds <= max_seconds, got min_seconds={min_seconds}, max_seconds={max_seconds}")
    if size < 56:
        raise ValueError(f"size must be at least 56 pixels, got {size}")
    rng = _rng(seed, split, index)
    seconds = int(rng.integers(min_seconds, max_seconds + 1))
    n = int(rng.integers(2, min(4, max(2, seconds // 3)) + 1))
    colors = [list(COLORS)[i] for i in rng.permutation(4)[:n]]
    shapes = [SHAPES[i] for i in rng.permutation(4)[:n]]
    # sounds: the first is uniform over all four (balanced "first sound" answers); the high tone is always in
    first = SOUNDS[int(rng.integers(4))]
    rest = [s for s in SOUNDS if s != first]
    rest = [rest[i] for i in rng.permutation(len(rest))]
    if first != "high tone" and "high tone" not in rest[: n - 1]:
        rest.remove("high tone")
        rest.insert(int(rng.integers(n - 1)), "high tone")
    sounds = [first] + rest[: n - 1]

    slot = seconds / n
    events = []
    for k in range(n):
        s0 = k * slot
        start = s0 + rng.uniform(0.0, 0.2) * slot
        end = s0 + slot - rng.uniform(0.0, 0.2) * slot
        length = min(rng.uniform(0.5, 0.9), 0.7 * (end - start))  # the sound always ends on screen
        centre = rng.uniform(start + 0.35 * (end - start), end - 0.35 * (end - start))
        radius = rng.uniform(0.17, 0.22) * size
        margin = radius + 2
        x0, y0 = rng.uniform(margin, size - margin, size=2)
        speed = rng.uniform(4.0, 12.0) * size / 112
        angle = rng.uniform(0, 2 * math.pi)
        events.append(
            Event(
                color=colors[k],
                shape=shapes[k],
                start=float(start),
                end=float(end),
                sound=sounds[k],
                sound_start=float(centre - length / 2),
                sound_end=float(centre + length / 2),
                x0=float(x0),
                y0=float(y0),
                vx=float(speed * math.cos(angle)),
                vy=float(speed * math.sin(angle)),
                radius=float(radius),
            )
        )
    return ClipSpec(seconds=seconds, size=size, events=events, background_seed=int(rng.integers(2**31)))


def questions_for(spec: ClipSpec, categories: Sequence[str] = CATEGORIES) -> list[dict]:
    """The clip's questions as generic-schema records (without ``id`` / ``video``)."""
    answers = {
        "cross-modal": spec.high_tone_event.color,
        "audio": spec.events[0].sound,
        "video": spec.events[0].color,
    }
    out = []
    for cat in categories:
        if cat not in QUESTIONS:
            raise ValueError(f"unknown SynthAV category {cat!r}; expected one of {CATEGORIES}")
        question, options = QUESTIONS[cat]
        out.append(
            {
                "question": question,
                "options": list(options),
                "answer": _LETTERS[options.index(answers[cat])],
                "category": cat,
            }
        )
    return out


def caption(spec: ClipSpec) -> str:
    """What happens, in order: ``"A red circle appears with a low tone. A blue square appears with a high tone."``

    Stored in each manifest record (``caption``) as dense supervision for training a model from scratch:
    it names every shape, color and sound in the order they occur and pairs each sound with its shape.
    """
    return " ".join(f"A {e.color} {e.shape} appears with a {e.sound}." for e in spec.events)


def vocabulary_texts() -> list[str]:
    """Every question, option, instruction and caption word SynthAV uses (to train a tokenizer on)."""
    from sift.manifest import ANSWER_INSTRUCTION

    texts = [ANSWER_INSTRUCTION, CAPTION_PROMPT]
    texts += [f"A {c} {s} appears with a {snd}." for c in COLORS for s in SHAPES for snd in SOUNDS]
    for question, options in QUESTIONS.values():
        texts.append(question)
        texts += [f"{_LETTERS[i]}. {o}" for i, o in enumerate(options)]
    return texts


# ------------------------------------------------------------------------------------------ rendering


def _background(size: int, seed: int) -> np.ndarray:
    """A static, low-contrast grey texture: smooth blobs plus fine grain (float32, H x W x 3)."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(0.0, 1.0, size=(size // 8 + 2, size // 8 + 2))
    # bilinear upsampling of the coarse noise gives smooth blobs
    ys = np.linspace(0, coarse.shape[0] - 1.001, size)
    xs = np.linspace(0, coarse.shape[1] - 1.001, size)
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    c = coarse
    smooth = (
        c[y0][:, x0] * (1 - fy) * (1 - fx)
        + c[y0 + 1][:, x0] * fy * (1 - fx)
        + c[y0][:, x0 + 1] * (1 - fy) * fx
        + c[y0 + 1][:, x0 + 1] * fy * fx
    )
    base = rng.uniform(90, 150)
    grey = base + 14.0 * smooth + rng.normal(0.0, 5.0, size=(size, size))
    tint = rng.uniform(-8, 8, size=3)
    return np.clip(grey[..., None] + tint, 0, 255).astype(np.float32)


def _shape_mask(kind: str, yy: np.ndarray, xx: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    dx, dy = xx - cx, yy - cy
    if kind == "circle":
        return dx * dx + dy * dy <= r * r
    if kind == "square":
        s = 0.82 * r
        return (np.abs(dx) <= s) & (np.abs(dy) <= s)
    if kind == "triangle":  # apex up, base at cy + 0.8 r
        top, bottom = cy - r, cy + 0.8 * r
        half = (yy - top) / (bottom - top) * r
        return (yy >= top) & (yy <= bottom) & (np.abs(dx) <= half)
    if kind == "cross":
        w = 0.33 * r
        return ((np.abs(dx) <= w) & (np.abs(dy) <= r)) | ((np.abs(dy) <= w) & (np.abs(dx) <= r))
    raise ValueError(f"unknown shape {kind!r}")


def _position(e: Event, t: float, size: int) -> tuple[float, float]:
    """Centre at time t: linear motion reflected at the frame borders."""
    lo, hi = e.radius + 1, size - e.radius - 1

    def bounce(p: float) -> float:
        span = hi - lo
        q = (p - lo) % (2 * span)
        return lo + (q if q <= span else 2 * span - q)

    dt = t - e.start
    return bounce(e.x0 + e.vx * dt), bounce(e.y0 + e.vy * dt)


def _sound(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n, dtype=np.float64) / SAMPLE_RATE
    if kind == "low tone":
        wave = np.sin(2 * np.pi * 330.0 * t)
    elif kind == "high tone":
        wave = np.sin(2 * np.pi * 1760.0 * t)
    elif kind == "chirp":  # exponential sweep 400 -> 3200 Hz
        dur = max(t[-1], 1e-3) if n else 1.0
        k = math.log(3200.0 / 400.0) / dur
        wave = np.sin(2 * np.pi * 400.0 * (np.exp(k * t) - 1) / k)
    elif kind == "noise burst":
        wave = rng.uniform(-1.0, 1.0, size=n)
    else:
        raise ValueError(f"unknown sound {kind!r}")
    fade = min(n // 2, int(0.01 * SAMPLE_RATE))
    env = np.ones(n)
    if fade:
        ramp = np.linspace(0.0, 1.0, fade)
        env[:fade], env[n - fade :] = ramp, ramp[::-1]
    return 0.5 * wave * env


def render_clip(spec: ClipSpec):
    """Frames (2 fps) and a 16 kHz waveform for ``spec``, as a :class:`sift.media.Clip`."""
    from sift.media import Clip

    size = spec.size
    bg = _background(size, spec.background_seed)
    n_frames = int(round(spec.seconds * FPS))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    frames = np.empty((n_frames, size, size, 3), dtype=np.uint8)
    for i in range(n_frames):
        t = i / FPS
        img = bg.copy()
        for e in spec.events:
            if e.start <= t < e.end:
                cx, cy = _position(e, t, size)
                img[_shape_mask(e.shape, yy, xx, cx, cy, e.radius)] = COLORS[e.color]
        frames[i] = img.astype(np.uint8)

    rng = np.random.default_rng(spec.background_seed + 1)
    n_samples = spec.seconds * SAMPLE_RATE
    audio = rng.normal(0.0, 0.003, size=n_samples)  # near-silence, not digital zero
    for e in spec.events:
        a, b = int(e.sound_start * SAMPLE_RATE), int(e.sound_end * SAMPLE_RATE)
        a, b = max(0, a), min(n_samples, b)
        audio[a:b] += _sound(e.sound, b - a, rng)
    return Clip(frames=frames, audio=audio.astype(np.float32), fps=FPS, sample_rate=SAMPLE_RATE)


def cell_labels(spec: ClipSpec, t: float, rows: int, cols: int, *, min_cover: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell ground truth at time ``t`` on a ``rows`` x ``cols`` grid over the frame (e.g. the merged
    28x28-pixel token cells): (color, shape) index arrays, 0 = background, ``k + 1`` = ``COLORS``/``SHAPES``
    entry k where a shape covers at least ``min_cover`` of the cell. Used as dense training labels."""
    size = spec.size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    color = np.zeros((rows, cols), dtype=np.int64)
    shape = np.zeros((rows, cols), dtype=np.int64)
    ch, cw = size / rows, size / cols
    for e in spec.events:
        if e.start <= t < e.end:
            cx, cy = _position(e, t, size)
            mask = _shape_mask(e.shape, yy, xx, cx, cy, e.radius).astype(np.float32)
            for i in range(rows):
                for j in range(cols):
                    cover = mask[int(i * ch) : int((i + 1) * ch), int(j * cw) : int((j + 1) * cw)].mean()
                    if cover >= min_cover:
                        color[i, j] = list(COLORS).index(e.color) + 1
                        shape[i, j] = SHAPES.index(e.shape) + 1
    return color, shape


def sound_label(spec: ClipSpec, t0: float, t1: float) -> int:
    """0 for near-silence, ``k + 1`` for ``SOUNDS[k]`` when a sound covers the middle of [t0, t1)."""
    mid = 0.5 * (t0 + t1)
    for e in spec.events:
        if e.sound_start <= mid < e.sound_end:
            return SOUNDS.index(e.sound) + 1
    return 0


def spec_for_video(video: str | os.PathLike) -> ClipSpec | None:
    """The spec of a generated clip ``<root>/videos/<split>-<index>.mp4`` (settings from ``<root>/synthav.json``),
    or ``None`` for a file that is not a SynthAV clip."""
    path = Path(video)
    settings = path.parent.parent / "synthav.json"
    split, _, index = path.stem.rpartition("-")
    if not settings.is_file() or split not in _SPLIT_STREAM or not index.isdigit():
        return None
    info = json.loads(settings.read_text())
    return make_spec(
        info["seed"], split, int(index), min_seconds=info["min_seconds"], max_seconds=info["max_seconds"], size=info["size"]
    )


# ------------------------------------------------------------------------------------------ datasets


def _write_one(job: tuple) -> list[dict]:
    seed, split, index, out_dir, min_s, max_s, size, categories = job
    from sift.media import write_clip

    spec = make_spec(seed, split, index, min_seconds=min_s, max_seconds=max_s, size=size)
    name = f"{split}-{index:05d}"
    rel = f"videos/{name}.mp4"
    path = Path(out_dir) / rel
    if not path.is_file():  # resumable: an interrupted run keeps what it already wrote
        tmp = path.with_suffix(".tmp.mp4")
        write_clip(render_clip(spec), tmp)
        os.replace(tmp, path)
    records = []
    for q in questions_for(spec, categories):
        records.append(
            {"id": f"{name}-{q['category']}", "video": rel, **q, "seconds": spec.seconds, "caption": caption(spec)}
        )
    return records


def generate(
    out_dir: str | os.PathLike,
    splits: dict[str, int] | None = None,
    *,
    seed: int = 0,
    min_seconds: int = 6,
    max_seconds: int = 20,
    size: int = 112,
    categories: Sequence[str] = CATEGORIES,
    workers: int | None = None,
    progress: bool = True,
) -> dict[str, Path]:
    """Write SynthAV clips and manifests under ``out_dir``; return ``{split: manifest path}``.

    Layout: ``out_dir/videos/<split>-<index>.mp4`` and ``out_dir/<split>.jsonl`` (generic schema, one record
    per question, ``len(categories)`` questions per clip; ``video`` is relative to ``out_dir``; extra keys
``seconds`` and ``caption`` (:func:`caption`), which readers of the generic schema ignore) plus
    ``out_dir/synthav.json`` with the generation settings. Clips already on disk are kept (resumable).
    ``workers`` processes render and encode in parallel (default: the number of CPUs). A folder made with
    other settings (seed, durations, size) is refused rather than mixed.
    """
    from tqdm import tqdm

    splits = dict(splits if splits is not None else {"train": 1000, "validation": 100, "test": 200})
    for split, count in splits.items():
        _rng(seed, split, 0)  # validates the split name
        if int(count) < 0:
            raise ValueError(f"split {split!r}: count must be >= 0, got {count}")
    for cat in categories:
        if cat not in QUESTIONS:
            raise ValueError(f"unknown SynthAV category {cat!r}; expected one of {CATEGORIES}")
    make_spec(seed, "train", 0, min_seconds=min_seconds, max_seconds=max_seconds, size=size)  # validates sizes
    out = Path(out_dir)
    info = dict(
        seed=seed,
        min_seconds=min_seconds,
        max_seconds=max_seconds,
        size=size,
        fps=FPS,
        sample_rate=SAMPLE_RATE,
        categories=list(categories),
    )
    settings = out / "synthav.json"
    if settings.is_file():  # resuming into a folder made with other settings would mix old clips with new labels
        old = json.loads(settings.read_text())
        clash = {k: (old.get(k), v) for k, v in info.items() if k != "categories" and old.get(k) != v}
        if clash:
            raise ValueError(
                f"{out} holds SynthAV clips generated with other settings {clash} (old, new); "
                "use another folder or delete it"
            )
        info["splits"] = {**old.get("splits", {}), **splits}
    else:
        info["splits"] = dict(splits)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    workers = workers or os.cpu_count() or 1
    manifests: dict[str, Path] = {}
    for split, count in splits.items():
        jobs = [(seed, split, i, str(out), min_seconds, max_seconds, size, tuple(categories)) for i in range(int(count))]
        bar = tqdm(total=len(jobs), desc=f"SynthAV {split}", unit="clip", disable=not progress)
        records: list[dict] = []
        if workers > 1 and len(jobs) > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for recs in pool.map(_write_one, jobs, chunksize=4):
                    records += recs
                    bar.update(1)
        else:
            for job in jobs:
                records += _write_one(job)
                bar.update(1)
        bar.close()
        path = out / f"{split}.jsonl"
        with open(path, "w", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec) + "\n")
        manifests[split] = path
    (out / "synthav.json").write_text(json.dumps(info, indent=2) + "\n")
    return manifests


def describe(spec: ClipSpec) -> dict:
    """A JSON-able description of a clip spec (for debugging and tests)."""
    return asdict(spec)
