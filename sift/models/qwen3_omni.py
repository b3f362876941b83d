"""Qwen3-Omni (`qwen3_omni_moe`): what sift knows about its token layout.

Checked in transformers 5.23-5.24 (``models/qwen3_omni_moe``):

- the audio encoder runs three stride-2 convolutions on each window of ``2 * n_window`` (100) mel frames, so
  one second of audio gives 13 LLM tokens, and nothing is pooled after its attention layers;
- a video with its audio track is interleaved per temporal grid by time (:func:`sift.layout.grid_interleaving`),
  at ``position_id_per_seconds`` (13 in the real processor and checkpoint; the config class defaults to 25);
- windows are 2 s of media time, so every method has the unit it has on Qwen2.5-Omni (the papers' time groups).

The decoder's DeepStack inputs are dropped with their tokens by :func:`sift.sequence.shrink_visual_rows`. The
adapter that puts these behind the model seam (`sift.compress`, the compressors, training) is issue 14's next step.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from sift.layout import LAYOUT_KEYS, Interleaving, TokenLayout, build_layout

__all__ = ["qwen3_audio_tokens", "QWEN3_INTERLEAVING", "read_qwen3_layout"]


def qwen3_audio_tokens(feature_lengths: torch.Tensor, n_window: int = 50) -> torch.Tensor:
    """LLM audio tokens for mel lengths: 13 per full window of ``2 * n_window`` frames, plus the last window's."""
    window = 2 * n_window
    rest = (feature_lengths % window - 1) // 2 + 1
    return ((rest - 1) // 2 + 1 - 1) // 2 + 1 + (feature_lengths // window) * 13


QWEN3_INTERLEAVING = Interleaving(
    "qwen3-omni", lambda lengths, cfg: qwen3_audio_tokens(lengths, cfg.audio_config.n_window), by_grid=True
)


def read_qwen3_layout(inputs: Mapping[str, Any], config: Any) -> TokenLayout:
    """The 2 s windows of a Qwen3-Omni thinker input (`input_ids` and the `sift.layout.LAYOUT_KEYS`)."""
    return build_layout(inputs["input_ids"], config, interleaving=QWEN3_INTERLEAVING,
                        **{k: inputs.get(k) for k in LAYOUT_KEYS})
