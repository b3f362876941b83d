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

**Version 2** (``version=2``; version 1 above stays the default and is reproduced bit for bit) keeps the
events, the three categories, the answer balance and the determinism, and adds what makes token selection
hard on real video:

- *a real token mix*: 224x224 frames, i.e. 64 video tokens per second against 25 audio tokens (72% video;
  Qwen2.5-Omni at its usual settings has 85%). The shipped tiny processor caps frames at 112x112 (16
  tokens per second, 39% video, whatever the frame size), so a v2 folder records the per-frame pixel
  budget its clips need (``video_max_pixels`` in ``synthav.json``) and :func:`configure_processor` raises a
  processor's budget to it;
- *camera motion*: the textured background is larger than the frame and the view pans over it (8-24 px/s,
  reflected at its borders), so consecutive frames are redundant but never identical and "what changed"
  no longer singles out the moving shape;
- *distractors*: 1-3 silent grey shapes (light or dark grey, never one of :data:`COLORS`) of the same kinds,
  sizes and speeds, on screen at random times (half of the clips open with one), drawn under the colored
  shapes. The questions (:data:`QUESTIONS_V2`) say to ignore them, so "first shape" and "shape on screen
  during the high tone" are defined on the colored shapes only, as are the per-token labels;
- *background audio*: pink noise plus a soft melody (notes away from the events' frequencies) under the
  whole track, 10-14 dB below the events (:attr:`ClipSpecV2.snr_db`).

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
from typing import Any, ClassVar

import numpy as np

__all__ = [
    "COLORS",
    "SHAPES",
    "SOUNDS",
    "CATEGORIES",
    "QUESTIONS",
    "QUESTIONS_V2",
    "VERSIONS",
    "DEFAULT_SIZE",
    "DISTRACTOR_GREYS",
    "SAMPLE_RATE",
    "FPS",
    "ClipSpec",
    "ClipSpecV2",
    "Distractor",
    "Camera",
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
    "read_settings",
    "video_max_pixels",
    "configure_processor",
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
#: Version 2's questions (same options and answers): its grey distractors and background sound are excluded.
QUESTIONS_V2: dict[str, tuple[str, tuple[str, ...]]] = {
    "cross-modal": (
        "Ignoring the grey shapes, what color was the shape on screen when the high tone sounded?",
        tuple(COLORS),
    ),
    "audio": ("Ignoring the background, which sound was heard first?", SOUNDS),
    "video": ("Ignoring the grey shapes, what color was the first shape to appear?", tuple(COLORS)),
}
VERSIONS: tuple[int, ...] = (1, 2)
#: Frame side per version: v2's 224 px = 8x8 merged 28 px tokens per frame pair (64 video tokens per second).
DEFAULT_SIZE: dict[int, int] = {1: 112, 2: 224}
#: Version 2's distractor grey levels (R = G = B), outside its background's range (70..180).
DISTRACTOR_GREYS: dict[str, int] = {"light grey": 225, "dark grey": 40}
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
    #: the SynthAV version the spec belongs to (a class constant, so version 1 specs serialise as before)
    version: ClassVar[int] = 1

    @property
    def high_tone_event(self) -> Event:
        return next(e for e in self.events if e.sound == "high tone")


@dataclass
class Distractor:
    """A silent grey shape (version 2) that no question is about: on screen during [start, end), moving like
    an :class:`Event`'s shape (same kinds, sizes and speeds), so motion alone does not single out the asked-about
    shapes; only its grey color does."""

    shape: str
    grey: str  # a DISTRACTOR_GREYS name
    start: float
    end: float
    x0: float = 0.0
    y0: float = 0.0
    vx: float = 0.0
    vy: float = 0.0
    radius: float = 20.0


@dataclass
class Camera:
    """A panning view (version 2): the frame's top-left corner in a background ``span`` pixels larger than
    the frame, starting at (x0, y0) and moving at (vx, vy) px/s, reflected inside [0, span] on each axis."""

    x0: float
    y0: float
    vx: float
    vy: float
    span: int

    def offset(self, t: float) -> tuple[int, int]:
        """Whole-pixel (x, y) offset of the view at time ``t`` (whole pixels: frames are crops, no resampling)."""
        return _reflect(self.x0 + self.vx * t, 0.0, self.span), _reflect(self.y0 + self.vy * t, 0.0, self.span)


@dataclass
class ClipSpecV2(ClipSpec):
    """A version 2 clip: :class:`ClipSpec`'s events plus distractors, a panning camera and a background
    sound ``snr_db`` below the events. ``events`` are still only the asked-about (colored) shapes."""

    distractors: list[Distractor] = field(default_factory=list)
    camera: Camera = field(default_factory=lambda: Camera(0.0, 0.0, 0.0, 0.0, 0))
    snr_db: float = 12.0
    version: ClassVar[int] = 2


def _reflect(p: float, lo: float, hi: float) -> int:
    span = hi - lo
    q = (p - lo) % (2 * span) if span > 0 else 0.0
    return int(round(lo + (q if q <= span else 2 * span - q)))


def _rng(seed: int, split: str, index: int, version: int = 1) -> np.random.Generator:
    if split not in _SPLIT_STREAM:
        raise ValueError(f"unknown split {split!r}; expected one of {tuple(_SPLIT_STREAM)}")
    key = [int(seed), _SPLIT_STREAM[split], int(index)]
    # version 1 keeps its original stream; later versions get disjoint ones
    return np.random.default_rng(key if version == 1 else key + [int(version)])


def _check_args(min_seconds: int, max_seconds: int, size: int | None, version: int) -> int:
    """Validate the layout arguments; return the frame size (``DEFAULT_SIZE[version]`` for ``None``)."""
    if version not in VERSIONS:
        raise ValueError(f"unknown SynthAV version {version!r}; expected one of {VERSIONS}")
    if not (4 <= min_seconds <= max_seconds):
        raise ValueError(f"need 4 <= min_seconds <= max_seconds, got min_seconds={min_seconds}, max_seconds={max_seconds}")
    size = DEFAULT_SIZE[version] if size is None else int(size)
    if size < 56:
        raise ValueError(f"size must be at least 56 pixels, got {size}")
    if version == 2 and (size % 28 or size < 224):
        raise ValueError(
            f"version 2 needs a size that is a multiple of 28 and at least 224 pixels (>= 70% video tokens), got {size}"
        )
    return size


def make_spec(
    seed: int,
    split: str,
    index: int,
    *,
    min_seconds: int = 6,
    max_seconds: int = 20,
    size: int | None = None,
    version: int = 1,
) -> ClipSpec:
    """The random layout of clip ``index`` of ``split``: duration, shapes, colors, sounds and timings (and for
    ``version=2`` distractors, camera and background level: a :class:`ClipSpecV2`). ``size`` defaults to
    ``DEFAULT_SIZE[version]``."""
    size = _check_args(min_seconds, max_seconds, size, version)
    rng = _rng(seed, split, index, version)
    seconds = int(rng.integers(min_seconds, max_seconds + 1))
    events = _draw_events(rng, seconds, size)
    if version == 1:
        return ClipSpec(seconds=seconds, size=size, events=events, background_seed=int(rng.integers(2**31)))
    distractors = _draw_distractors(rng, seconds, size)
    span = size // 2
    x0, y0 = rng.uniform(0, span, size=2)
    speed, angle = rng.uniform(8.0, 24.0) * size / 224, rng.uniform(0, 2 * math.pi)
    camera = Camera(float(x0), float(y0), float(speed * math.cos(angle)), float(speed * math.sin(angle)), span)
    return ClipSpecV2(
        seconds=seconds,
        size=size,
        events=events,
        background_seed=int(rng.integers(2**31)),
        distractors=distractors,
        camera=camera,
        snr_db=float(rng.uniform(10.0, 14.0)),
    )


def _draw_events(rng: np.random.Generator, seconds: int, size: int) -> list[Event]:
    """The asked-about shapes and their sounds (version 1's draws, in version 1's order)."""
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
        radius, x0, y0, vx, vy = _draw_motion(rng, size)
        events.append(
            Event(
                color=colors[k],
                shape=shapes[k],
                start=float(start),
                end=float(end),
                sound=sounds[k],
                sound_start=float(centre - length / 2),
                sound_end=float(centre + length / 2),
                x0=x0,
                y0=y0,
                vx=vx,
                vy=vy,
                radius=radius,
            )
        )
    return events


def _draw_motion(rng: np.random.Generator, size: int) -> tuple[float, float, float, float, float]:
    """A shape's radius, start centre and velocity (px/s), the same law for events and distractors."""
    radius = rng.uniform(0.17, 0.22) * size
    margin = radius + 2
    x0, y0 = rng.uniform(margin, size - margin, size=2)
    speed = rng.uniform(4.0, 12.0) * size / 112
    angle = rng.uniform(0, 2 * math.pi)
    return float(radius), float(x0), float(y0), float(speed * math.cos(angle)), float(speed * math.sin(angle))


def _draw_distractors(rng: np.random.Generator, seconds: int, size: int) -> list[Distractor]:
    """1-3 grey shapes, each on screen for >= 1 s at a random time; half of the clips open with one, so the
    first thing to appear is often not the asked-about first shape."""
    out = []
    for k in range(int(rng.integers(1, 4))):
        opens = k == 0 and rng.random() < 0.5
        start = 0.0 if opens else float(rng.uniform(0.0, seconds - 1.0))
        end = min(float(seconds), start + float(rng.uniform(1.0, max(1.5, 0.6 * seconds))))
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        grey = list(DISTRACTOR_GREYS)[int(rng.integers(len(DISTRACTOR_GREYS)))]
        radius, x0, y0, vx, vy = _draw_motion(rng, size)
        out.append(Distractor(shape, grey, start, end, x0, y0, vx, vy, radius))
    return out


def questions_for(spec: ClipSpec, categories: Sequence[str] = CATEGORIES) -> list[dict]:
    """The clip's questions as generic-schema records (without ``id`` / ``video``); the wording follows the
    spec's version (:data:`QUESTIONS` or :data:`QUESTIONS_V2`), the options and answers do not."""
    answers = {
        "cross-modal": spec.high_tone_event.color,
        "audio": spec.events[0].sound,
        "video": spec.events[0].color,
    }
    table = QUESTIONS_V2 if spec.version == 2 else QUESTIONS
    out = []
    for cat in categories:
        if cat not in table:
            raise ValueError(f"unknown SynthAV category {cat!r}; expected one of {CATEGORIES}")
        question, options = table[cat]
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


def vocabulary_texts(version: int = 1) -> list[str]:
    """Every question, option, instruction and caption word SynthAV uses (to train a tokenizer on).

    ``version=1`` gives exactly the original list (a tokenizer trained on it is unchanged); ``version=2``
    appends version 2's questions."""
    from sift.manifest import ANSWER_INSTRUCTION

    if version not in VERSIONS:
        raise ValueError(f"unknown SynthAV version {version!r}; expected one of {VERSIONS}")
    texts = [ANSWER_INSTRUCTION, CAPTION_PROMPT]
    texts += [f"A {c} {s} appears with a {snd}." for c in COLORS for s in SHAPES for snd in SOUNDS]
    for question, options in QUESTIONS.values():
        texts.append(question)
        texts += [f"{_LETTERS[i]}. {o}" for i, o in enumerate(options)]
    if version == 2:
        texts += [question for question, _ in QUESTIONS_V2.values()]
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


def _position(e: Event | Distractor, t: float, size: int) -> tuple[float, float]:
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
    """Frames (2 fps) and a 16 kHz waveform for ``spec``, as a :class:`sift.testbed.media.Clip`."""
    from sift.testbed.media import Clip

    if spec.version == 2:
        return Clip(frames=_frames_v2(spec), audio=_audio_v2(spec), fps=FPS, sample_rate=SAMPLE_RATE)
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


# ------------------------------------------------------------------------------------------ version 2

#: Version 2's melody notes (Hz): with their second harmonics, well away from the events' 330 and 1760 Hz.
_MELODY_HZ = (110.0, 130.8, 146.8, 196.0, 220.0, 261.6)
#: RMS of an event sound (a 0.5-amplitude sine); the background sits ``snr_db`` below it.
_EVENT_RMS = 0.5 / math.sqrt(2.0)


def _smooth_noise(rng: np.random.Generator, side: int, cell: int) -> np.ndarray:
    """Unit-variance noise with blobs about ``cell`` pixels wide (bilinear upsampling of a coarse grid)."""
    n = side // cell + 2
    coarse = rng.normal(0.0, 1.0, size=(n, n))
    pos = np.linspace(0, n - 1.001, side)
    i, f = pos.astype(int), (pos - pos.astype(int))
    rows = coarse[i] * (1 - f)[:, None] + coarse[i + 1] * f[:, None]
    return rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]


def _background_v2(side: int, seed: int) -> np.ndarray:
    """A ``side`` x ``side`` grey texture at two scales plus grain, clipped to 70..180 so that it never looks
    like a distractor's grey (float32, H x W x 3). Stronger than version 1's, so panning changes every token."""
    rng = np.random.default_rng(seed)
    grey = rng.uniform(105, 145) + 22.0 * _smooth_noise(rng, side, 28) + 10.0 * _smooth_noise(rng, side, 7)
    grey = grey + rng.normal(0.0, 4.0, size=(side, side))
    tint = rng.uniform(-6, 6, size=3)
    return np.clip(grey[..., None] + tint, 70, 180).astype(np.float32)


def _paint(img: np.ndarray, kind: str, cx: float, cy: float, r: float, rgb: tuple[int, int, int]) -> None:
    """Fill a shape, computing its mask on its bounding box only (same pixels as a full-frame mask)."""
    h, w = img.shape[:2]
    y0, y1 = max(0, int(cy - r) - 1), min(h, int(cy + r) + 2)
    x0, x1 = max(0, int(cx - r) - 1), min(w, int(cx + r) + 2)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    img[y0:y1, x0:x1][_shape_mask(kind, yy, xx, cx, cy, r)] = rgb


def _frames_v2(spec: ClipSpecV2) -> np.ndarray:
    """2 fps frames: a crop of the larger background at the camera's offset, then the grey distractors,
    then the colored shapes on top (so an asked-about shape is never hidden)."""
    size, cam = spec.size, spec.camera
    bg = _background_v2(size + cam.span + 1, spec.background_seed)
    frames = np.empty((int(round(spec.seconds * FPS)), size, size, 3), dtype=np.uint8)
    for i in range(len(frames)):
        t = i / FPS
        ox, oy = cam.offset(t)
        img = bg[oy : oy + size, ox : ox + size].copy()
        for d in spec.distractors:
            if d.start <= t < d.end:
                cx, cy = _position(d, t, size)
                _paint(img, d.shape, cx, cy, d.radius, (DISTRACTOR_GREYS[d.grey],) * 3)
        for e in spec.events:
            if e.start <= t < e.end:
                cx, cy = _position(e, t, size)
                _paint(img, e.shape, cx, cy, e.radius, COLORS[e.color])
        frames[i] = img.astype(np.uint8)
    return frames


def _melody(n: int, rng: np.random.Generator) -> np.ndarray:
    """A soft plucked melody over ``n`` samples: back-to-back notes of 0.25-0.6 s with one harmonic."""
    out = np.zeros(n)
    a = 0
    while a < n:
        b = min(n, a + int(rng.uniform(0.25, 0.6) * SAMPLE_RATE))
        hz = _MELODY_HZ[int(rng.integers(len(_MELODY_HZ)))]
        t = np.arange(b - a) / SAMPLE_RATE
        env = np.minimum(1.0, t / 0.02) * np.exp(-3.0 * t)
        out[a:b] = env * (np.sin(2 * np.pi * hz * t) + 0.5 * np.sin(4 * np.pi * hz * t))
        a = b
    return out


def _audio_bed(n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS background: pink noise (1/f power, 50 Hz .. 6 kHz) and :func:`_melody` at equal power."""
    spectrum = np.fft.rfft(rng.normal(0.0, 1.0, size=n))
    f = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
    spectrum *= np.where((f >= 50.0) & (f <= 6000.0), 1.0 / np.sqrt(np.maximum(f, 50.0)), 0.0)
    parts = [np.fft.irfft(spectrum, n), _melody(n, rng)]
    bed = sum(p / max(float(np.sqrt(np.mean(p * p))), 1e-12) for p in parts)
    return bed / max(float(np.sqrt(np.mean(bed * bed))), 1e-12)


def _audio_v2(spec: ClipSpecV2) -> np.ndarray:
    """The events (as in version 1) over :func:`_audio_bed` at ``snr_db`` below an event's RMS."""
    rng = np.random.default_rng(spec.background_seed + 1)
    n_samples = spec.seconds * SAMPLE_RATE
    audio = _audio_bed(n_samples, np.random.default_rng(spec.background_seed + 2))
    audio *= _EVENT_RMS / 10 ** (spec.snr_db / 20)
    for e in spec.events:
        a, b = max(0, int(e.sound_start * SAMPLE_RATE)), min(n_samples, int(e.sound_end * SAMPLE_RATE))
        audio[a:b] += _sound(e.sound, b - a, rng)
    return np.clip(audio, -1.0, 1.0).astype(np.float32)


def cell_labels(spec: ClipSpec, t: float, rows: int, cols: int, *, min_cover: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell ground truth at time ``t`` on a ``rows`` x ``cols`` grid over the frame (e.g. the merged
    28x28-pixel token cells): (color, shape) index arrays, 0 = background, ``k + 1`` = ``COLORS``/``SHAPES``
    entry k where a shape covers at least ``min_cover`` of the cell. Used as dense training labels.

    Only the asked-about shapes (``spec.events``) are labelled: version 2's grey distractors count as
    background (0), and its camera pan moves only the background, so shape positions are frame positions."""
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
    """0 for near-silence (version 2: the background sound), ``k + 1`` for ``SOUNDS[k]`` when a sound covers
    the middle of [t0, t1)."""
    mid = 0.5 * (t0 + t1)
    for e in spec.events:
        if e.sound_start <= mid < e.sound_end:
            return SOUNDS.index(e.sound) + 1
    return 0


def spec_for_video(video: str | os.PathLike) -> ClipSpec | None:
    """The spec of a generated clip ``<root>/videos/<split>-<index>.mp4`` (settings from ``<root>/synthav.json``),
    or ``None`` for a file that is not a SynthAV clip."""
    path = Path(video)
    split, _, index = path.stem.rpartition("-")
    info = read_settings(path.parent.parent)
    if info is None or split not in _SPLIT_STREAM or not index.isdigit():
        return None
    return make_spec(
        info["seed"],
        split,
        int(index),
        min_seconds=info["min_seconds"],
        max_seconds=info["max_seconds"],
        size=info["size"],
        version=info["version"],
    )


#: Settings that folders written before they were recorded implicitly had.
_LEGACY_SETTINGS: dict[str, Any] = {"version": 1, "video_max_pixels": None}


def read_settings(root: str | os.PathLike) -> dict[str, Any] | None:
    """The generation settings of the SynthAV folder ``root`` (``synthav.json``), or ``None`` for no folder.

    Folders written before versions existed read as version 1 (``version``: 1, ``video_max_pixels``: None).
    """
    settings = Path(root) / "synthav.json"
    if not settings.is_file():
        return None
    return {**_LEGACY_SETTINGS, **json.loads(settings.read_text())}


def video_max_pixels(version: int, size: int) -> int | None:
    """The per-frame pixel budget a processor needs to keep a clip's frames whole (``None``: version 1, made
    for the shipped processor's own budget). Why: the tiny processor caps frames at 112x112, which would
    shrink version 2's 224x224 frames to 16 tokens per second and undo its video-heavy token mix."""
    return None if version == 1 else int(size) * int(size)


def configure_processor(processor: Any, settings: dict[str, Any] | None) -> Any:
    """Raise ``processor``'s video pixel budget (in place) to the folder's ``video_max_pixels``; return it.

    ``settings``: :func:`read_settings` of a SynthAV folder. A budget that is already large enough, version 1
    settings and ``None`` leave the processor unchanged. Everything in sift reads the budget from
    ``processor.video_processor.size`` (:func:`sift.testbed.processing.video_size`), so this is all it takes;
    ``save_pretrained`` then records it in the processor config.
    """
    from transformers.image_utils import SizeDict

    from sift.testbed.processing import video_size

    needed = (settings or {}).get("video_max_pixels")
    current = video_size(processor)
    if needed is None or (current is not None and current["longest_edge"] >= int(needed)):
        return processor
    processor.video_processor.size = SizeDict(**video_size(processor, int(needed)))
    return processor


# ------------------------------------------------------------------------------------------ datasets


def _write_one(job: tuple) -> list[dict]:
    seed, split, index, out_dir, min_s, max_s, size, categories, version = job
    from sift.testbed.media import write_clip

    spec = make_spec(seed, split, index, min_seconds=min_s, max_seconds=max_s, size=size, version=version)
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


def _merge_settings(out: Path, info: dict[str, Any], splits: dict[str, int]) -> dict[str, Any]:
    """``info`` plus the split counts already in ``out``; refuses a folder made with other settings, since
    resuming into it would pair old clips with new labels (or mix versions)."""
    old = read_settings(out)
    if old is None:
        return {**info, "splits": dict(splits)}
    clash = {k: (old.get(k), v) for k, v in info.items() if k != "categories" and old.get(k) != v}
    if clash:
        raise ValueError(
            f"{out} holds SynthAV clips generated with other settings {clash} (old, new); "
            "use another folder or delete it"
        )
    return {**info, "splits": {**old.get("splits", {}), **splits}}


def generate(
    out_dir: str | os.PathLike,
    splits: dict[str, int] | None = None,
    *,
    seed: int = 0,
    min_seconds: int = 6,
    max_seconds: int = 20,
    size: int | None = None,
    categories: Sequence[str] = CATEGORIES,
    workers: int | None = None,
    progress: bool = True,
    version: int = 1,
) -> dict[str, Path]:
    """Write SynthAV clips and manifests under ``out_dir``; return ``{split: manifest path}``.

    Layout: ``out_dir/videos/<split>-<index>.mp4`` and ``out_dir/<split>.jsonl`` (generic schema, one record
    per question, ``len(categories)`` questions per clip; ``video`` is relative to ``out_dir``; extra keys
    ``seconds`` and ``caption`` (:func:`caption`), which readers of the generic schema ignore) plus
    ``out_dir/synthav.json`` with the generation settings (including ``version`` and the
    ``video_max_pixels`` a processor needs, :func:`configure_processor`). Clips already on disk are kept
    (resumable). ``workers`` processes render and encode in parallel (default: the number of CPUs). A folder
    made with other settings (version, seed, durations, size) is refused rather than mixed. ``size``
    defaults to ``DEFAULT_SIZE[version]``.
    """
    splits = dict(splits if splits is not None else {"train": 1000, "validation": 100, "test": 200})
    for split, count in splits.items():
        _rng(seed, split, 0)  # validates the split name
        if int(count) < 0:
            raise ValueError(f"split {split!r}: count must be >= 0, got {count}")
    for cat in categories:
        if cat not in QUESTIONS:
            raise ValueError(f"unknown SynthAV category {cat!r}; expected one of {CATEGORIES}")
    size = _check_args(min_seconds, max_seconds, size, version)  # validates version, durations and size
    out = Path(out_dir)
    info = dict(
        version=version,
        seed=seed,
        min_seconds=min_seconds,
        max_seconds=max_seconds,
        size=size,
        fps=FPS,
        sample_rate=SAMPLE_RATE,
        categories=list(categories),
        video_max_pixels=video_max_pixels(version, size),
    )
    info = _merge_settings(out, info, splits)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    workers = workers or os.cpu_count() or 1
    manifests: dict[str, Path] = {}
    for split, count in splits.items():
        jobs = [
            (seed, split, i, str(out), min_seconds, max_seconds, size, tuple(categories), version)
            for i in range(int(count))
        ]
        manifests[split] = _write_split(out / f"{split}.jsonl", jobs, workers, progress)
    (out / "synthav.json").write_text(json.dumps(info, indent=2) + "\n")
    return manifests


def _write_split(path: Path, jobs: list[tuple], workers: int, progress: bool) -> Path:
    """Render/encode one split's clips (``workers`` processes) and write its manifest in clip order."""
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc=f"SynthAV {path.stem}", unit="clip", disable=not progress)
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
    with open(path, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")
    return path


def describe(spec: ClipSpec) -> dict:
    """A JSON-able description of a clip spec (for debugging and tests)."""
    return asdict(spec)
