"""Qwen2.5-Omni (`Qwen2_5OmniThinkerForConditionalGeneration`, or the full model with its thinker).

Layout: `sift.layout.build_layout` (2 s windows of `get_rope_index`'s chunks). Positions: 3D mrope rows,
plus the 1-D text row that `generate` prepends; decoding continues at full-history index + rope delta.
The transformers names and argument positions involved are in `sift.hf_internals`, checked per version.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from transformers import Qwen2_5OmniForConditionalGeneration, Qwen2_5OmniThinkerForConditionalGeneration

from sift import hf_internals as hf
from sift.layout import LAYOUT_KEYS, TokenLayout, build_layout
from sift.models.base import OmniAdapter, register_adapter

__all__ = ["Qwen25OmniAdapter"]


@register_adapter
class Qwen25OmniAdapter(OmniAdapter):
    name = "qwen2.5-omni"
    thinker_classes = (Qwen2_5OmniThinkerForConditionalGeneration,)
    wrapper_classes = (Qwen2_5OmniForConditionalGeneration,)
    layout_keys = LAYOUT_KEYS
    input_keys = hf.THINKER_INPUT_KEYS
    language_model_path = hf.LANGUAGE_MODEL_PATH

    def read_layout(self, inputs: Mapping[str, Any], config: Any) -> TokenLayout:
        return build_layout(inputs["input_ids"], config, **{k: inputs.get(k) for k in self.layout_keys})

    def split_positions(self, position_ids: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        return hf.split_text_positions(position_ids)

    def rope_deltas(self, positions: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return hf.rope_deltas(positions, valid)

    def with_text_positions(self, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return hf.with_text_positions(positions, mask)

    def continuation_positions(self, full_mask: torch.Tensor, rope_deltas: torch.Tensor, new_tokens: int) -> torch.Tensor:
        """Text positions in all three rows: full-history index + rope delta."""
        text = (full_mask.long().cumsum(-1) - 1)[:, -new_tokens:] + rope_deltas.to(full_mask.device)
        return text[None].expand(3, -1, -1)

    def media_token_ids(self, config: Any) -> list[int]:
        return [config.audio_token_id, config.video_token_id, config.image_token_id]

    def audio_tower(self, thinker: nn.Module) -> nn.Module:
        return hf.audio_tower(thinker)

    def audio_attention(self, thinker: nn.Module) -> nn.Module:
        return hf.audio_attention(thinker)

    def vision_tower(self, thinker: nn.Module) -> nn.Module:
        return hf.vision_tower(thinker)

    def audio_feature_lens(self, args: tuple, kwargs: Mapping[str, Any]) -> Any:
        return hf.audio_tower_feature_lens(args, kwargs)

    def audio_attention_inputs(self, args: tuple, kwargs: Mapping[str, Any]) -> tuple[Any, Any]:
        return hf.audio_attention_inputs(args, kwargs)

    #: the encoder average-pools pairs of positions after its last attention layer
    audio_pool = 2

    def audio_positions(self, feature_lens: torch.Tensor, config: Any) -> torch.Tensor:
        """One position per 2 mel frames (the stride-2 convolution)."""
        return (feature_lens - 1) // 2 + 1
