"""Keyword arguments for calling a ``Qwen2_5OmniProcessor`` the way every part of sift does.

Why: the processor has two costly or surprising defaults that the evaluation, the training data and the
tiny-model helpers all need to override identically:

- its class-level video ``size`` defaults (128*28*28 .. 768*28*28 pixels) take precedence over the video
  processor's own ``size``, so the video processor's pixel budget has to be passed explicitly;
- its Whisper feature extractor pads every audio to ``chunk_length`` (300 s for Qwen2.5-Omni) before the
  STFT, which costs ~0.3 s per short clip on a CPU. Padding to the next multiple of 30 s instead gives
  bit-identical features on the audio's own frames (zero padding never changes the log-mel maximum that
  Whisper normalises with), ~25x faster; the model only ever reads those frames.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["video_size", "audio_kwargs"]


def video_size(processor: Any, max_pixels: int | None = None) -> dict[str, int] | None:
    """The video processor's ``{"shortest_edge", "longest_edge"}`` pixel budget (``max_pixels`` caps it)."""
    size = processor.video_processor.size
    get = size.get if isinstance(size, dict) else (lambda k: getattr(size, k, None))
    shortest, longest = get("shortest_edge"), get("longest_edge")
    if shortest is None or longest is None:  # processors configured with min/max pixels
        shortest, longest = get("min_pixels"), get("max_pixels")
    if max_pixels is not None:
        longest = int(max_pixels)
        shortest = min(int(shortest), longest) if shortest is not None else longest
    if shortest is None or longest is None:
        return None
    return {"shortest_edge": int(shortest), "longest_edge": int(longest)}


def audio_kwargs(processor: Any, audios: Sequence[Any], *, step_seconds: int = 30) -> dict[str, Any]:
    """``audio_kwargs`` that pad the batch's audio to the next ``step_seconds`` multiple, not to 300 s.

    The cap stays the feature extractor's own (``n_samples``: longer audio is cut exactly as before).
    """
    fe = processor.feature_extractor
    cap = int(getattr(fe, "n_samples", 0) or 0)
    sr = int(getattr(fe, "sampling_rate", 16000))
    # at least one STFT window of zeros after the longest audio, as the 300 s padding leaves there
    margin = int(getattr(fe, "n_fft", 400))
    longest = max((len(a) for a in audios), default=0)
    step = step_seconds * sr
    length = max(step, math.ceil((longest + margin) / step) * step)
    if cap:
        length = min(length, cap)
    return {"max_length": int(length)}
