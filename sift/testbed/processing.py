"""Keyword arguments for calling a ``Qwen2_5OmniProcessor`` the way every part of sift does.

Why: the processor has two costly or surprising defaults that the evaluation, the training data and the
tiny-model helpers all need to override identically:

- its class-level video ``size`` defaults (128*28*28 .. 768*28*28 pixels) take precedence over the video
  processor's own ``size``, so the video processor's pixel budget has to be passed explicitly;
- its Whisper feature extractor pads every audio to ``chunk_length`` (300 s for Qwen2.5-Omni) before the
  STFT, which costs ~0.3 s per short clip on a CPU. Padding to the next multiple of 30 s instead gives
  bit-identical features on the audio's own frames (zero padding never changes the log-mel maximum that
  Whisper normalises with), ~25x faster; the model only ever reads those frames.

Audio longer than the feature extractor's cap (``n_samples``: 300 s for Qwen2.5-Omni) is cut there by the
processor while the video goes on; ``audio_kwargs`` warns about it (``truncated_audio`` says by how much),
since nothing downstream (token layout, compressors, ``CompressionStats``) can tell a cut clip apart.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

__all__ = ["video_size", "audio_kwargs", "audio_cap_seconds", "truncated_audio", "warn_truncated_audio"]


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


def audio_cap_seconds(processor: Any) -> float | None:
    """The longest audio (seconds) the processor's feature extractor keeps, or None when it has no cap."""
    fe = processor.feature_extractor
    cap = int(getattr(fe, "n_samples", 0) or 0)
    return cap / int(getattr(fe, "sampling_rate", 16000)) if cap else None


def truncated_audio(processor: Any, audios: Sequence[Any]) -> list[float]:
    """Seconds cut from the end of each waveform by the feature extractor's cap (0.0 where it fits).

    Why: the processor cuts silently, so callers that want to record it (``sift.testbed.tiny.omni_inputs``) ask here.
    """
    cap = audio_cap_seconds(processor)
    sr = int(getattr(processor.feature_extractor, "sampling_rate", 16000))
    return [0.0 if cap is None else max(0.0, len(a) / sr - cap) for a in audios]


def warn_truncated_audio(processor: Any, audios: Sequence[Any]) -> list[float]:
    """``truncated_audio``, plus one warning for the whole call when any clip is cut."""
    cut = truncated_audio(processor, audios)
    if any(c > 0 for c in cut):
        cap = audio_cap_seconds(processor)
        sr = int(getattr(processor.feature_extractor, "sampling_rate", 16000))
        clips = ", ".join(f"clip {i}: {len(a) / sr:.1f} s" for i, (a, c) in enumerate(zip(audios, cut)) if c > 0)
        warnings.warn(
            f"audio longer than the feature extractor's cap of {cap:g} s is cut to {cap:g} s ({clips}); "
            "the video is kept whole, so the model hears only the first part",
            UserWarning,
            stacklevel=3,
        )
    return cut


def audio_kwargs(processor: Any, audios: Sequence[Any], *, step_seconds: int = 30) -> dict[str, Any]:
    """``audio_kwargs`` that pad the batch's audio to the next ``step_seconds`` multiple, not to 300 s.

    The cap stays the feature extractor's own (``n_samples``: longer audio is cut exactly as before, with a
    warning naming the clips and the cap, once per call).
    """
    fe = processor.feature_extractor
    cap = int(getattr(fe, "n_samples", 0) or 0)
    sr = int(getattr(fe, "sampling_rate", 16000))
    warn_truncated_audio(processor, audios)
    # at least one STFT window of zeros after the longest audio, as the 300 s padding leaves there
    margin = int(getattr(fe, "n_fft", 400))
    longest = max((len(a) for a in audios), default=0)
    step = step_seconds * sr
    length = max(step, math.ceil((longest + margin) / step) * step)
    if cap:
        length = min(length, cap)
    return {"max_length": int(length)}
