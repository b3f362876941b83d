"""Qwen3-Omni (`qwen3_omni_moe`): what sift knows about its token layout.

Checked in transformers 5.23-5.24 (``models/qwen3_omni_moe``):

- the audio encoder runs three stride-2 convolutions on each window of ``2 * n_window`` (100) mel frames, so
  one second of audio gives 13 LLM tokens, and nothing is pooled after its attention layers;
- a video with its audio track is interleaved per temporal grid by time (:func:`sift.layout.grid_interleaving`),
  at ``position_id_per_seconds`` (13 in the real processor and checkpoint; the config class defaults to 25);
- windows are 2 s of media time, so every method has the unit it has on Qwen2.5-Omni (the papers' time groups).

The decoder's DeepStack inputs are dropped with their tokens by :func:`sift.sequence.shrink_visual_rows`;
:class:`Qwen3OmniAdapter` puts all of this behind the model seam (`sift.compress`, the compressors, training).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from transformers import Qwen3OmniMoeForConditionalGeneration, Qwen3OmniMoeThinkerForConditionalGeneration

from sift import hf_internals as hf
from sift.layout import LAYOUT_KEYS, Interleaving, TokenLayout, build_layout
from sift.models.base import register_adapter
from sift.models.qwen2_5_omni import Qwen25OmniAdapter
from sift.sequence import Slots, shrink_visual_rows

__all__ = ["qwen3_audio_tokens", "QWEN3_INTERLEAVING", "read_qwen3_layout", "Qwen3OmniAdapter"]


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


@register_adapter
class Qwen3OmniAdapter(Qwen25OmniAdapter):
    """Qwen3-Omni (`Qwen3OmniMoeThinkerForConditionalGeneration`, or the full model with its thinker).

    Why a subclass: the decoder seam is Qwen2.5-Omni's (``model.language_model`` receives embeddings, 4-row
    M-RoPE positions and a 2D mask; decoding continues at full-history index + rope delta; the audio tower and
    its last attention are called the same way), so only what differs is written here: the layout, float
    positions, the unpooled audio encoder and the DeepStack rows.
    """

    name = "qwen3-omni"
    thinker_classes = (Qwen3OmniMoeThinkerForConditionalGeneration,)
    wrapper_classes = (Qwen3OmniMoeForConditionalGeneration,)
    audio_pool = 1

    def read_layout(self, inputs: Mapping[str, Any], config: Any) -> TokenLayout:
        return read_qwen3_layout(inputs, config)

    def audio_positions(self, feature_lens: torch.Tensor, config: Any) -> torch.Tensor:
        """Nothing is pooled after the encoder's attention: its positions are the LLM audio tokens."""
        return qwen3_audio_tokens(feature_lens, config.audio_config.n_window)

    def shrink_decoder_extras(self, kwargs: dict[str, Any], keep: torch.Tensor, slots: Slots, length: int) -> None:
        """The DeepStack rows of dropped visual tokens go with them (`sift.sequence.shrink_visual_rows`)."""
        mask_key, rows_key = hf.DEEPSTACK_KWARGS
        if kwargs.get(mask_key) is None or kwargs.get(rows_key) is None:
            return
        mask, levels = shrink_visual_rows(kwargs[mask_key], list(kwargs[rows_key]), keep, slots, length)
        kwargs.update({mask_key: mask, rows_key: levels})

    def defer_router_loss(self, kwargs: dict[str, Any], config: Any) -> bool:
        wanted = kwargs.get("output_router_logits")
        if wanted is None:
            wanted = config.get_text_config().output_router_logits
        if wanted:
            kwargs["output_router_logits"] = False  # the thinker would pair a full-length mask with kept tokens
        return bool(wanted)

    def router_loss(self, thinker: nn.Module, output: Any, kept_mask: torch.Tensor, with_labels: bool) -> None:
        """The stock formula (Switch Transformer, transformers' ``load_balancing_loss_func``) over the kept tokens."""
        text = thinker.config.get_text_config()
        aux = hf.load_balancing_loss(output.router_logits, text.num_experts, text.num_experts_per_tok, kept_mask)
        output.aux_loss = aux
        if with_labels and output.loss is not None:
            output.loss = output.loss + text.router_aux_loss_coef * aux.to(output.loss.device)
