"""Every transformers internal sift relies on, in one place: what a transformers upgrade can break.

sift adds no modeling file; it hooks the stock Qwen2.5-Omni classes. That works only because a handful of
names, paths and conventions of their code hold. Each one is written down here, with the versions it was
checked on, and each is exercised by ``tests/core/test_hf_internals.py``, so an upgrade that moves one fails there
with a message that names it, not somewhere deep in a method.

Supported: transformers 5.23 to 5.24 (the bound in ``pyproject.toml``). Known moves inside that range:

* 5.24 renamed the KV cache keyword and output field from ``past_key_values`` to ``cache`` (the old keyword
  is accepted with a ``FutureWarning`` until 5.40). :data:`CACHE_KWARG` is the name the installed version
  takes; :func:`cache_in` and :func:`cache_out` read either.

Qwen3-Omni (``models/qwen3_omni_moe``) shares the Qwen2.5 names above (the thinker's inputs, ``model.language_model``,
``model.audio_tower`` and ``model.visual``, the audio attention's call); what it adds is here too: the decoder's
DeepStack keywords (:data:`DEEPSTACK_KWARGS`) and the MoE load-balancing loss (:func:`load_balancing_loss`).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
import transformers
from packaging.version import Version
from torch import nn
from transformers import Qwen2_5OmniThinkerForConditionalGeneration

__all__ = [
    "TRANSFORMERS_VERSION",
    "MIN_TRANSFORMERS",
    "MAX_TRANSFORMERS",
    "CACHE_KWARG",
    "CACHE_NAMES",
    "NEXT_SEQUENCE_LENGTH",
    "MM_ENCODER_OUTPUTS",
    "MEDIA_INPUT_KEYS",
    "THINKER_INPUT_KEYS",
    "LANGUAGE_MODEL_PATH",
    "cache_in",
    "cache_out",
    "language_model",
    "audio_tower",
    "vision_tower",
    "audio_attention",
    "audio_tower_feature_lens",
    "audio_attention_inputs",
    "split_text_positions",
    "with_text_positions",
    "text_positions",
    "rope_deltas",
    "DEEPSTACK_KWARGS",
    "load_balancing_loss",
]

TRANSFORMERS_VERSION = Version(transformers.__version__)
#: The range sift is tested on; ``pyproject.toml`` fences the install to it.
MIN_TRANSFORMERS, MAX_TRANSFORMERS = Version("5.23.0"), Version("5.26.0")


def _cache_kwarg() -> str:
    params = inspect.signature(Qwen2_5OmniThinkerForConditionalGeneration.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


#: The KV-cache keyword the installed thinker's ``forward`` (and ``generate``'s model inputs) use:
#: ``"cache"`` from 5.24, ``"past_key_values"`` before.
CACHE_KWARG: str = _cache_kwarg()
#: Every name a KV cache travels under, the current one first.
CACHE_NAMES: tuple[str, ...] = ("cache", "past_key_values") if CACHE_KWARG == "cache" else ("past_key_values",)

#: ``generate`` tells ``prepare_inputs_for_generation`` how many new tokens to slice with this keyword.
NEXT_SEQUENCE_LENGTH = "next_sequence_length"
#: Pre-computed encoder outputs the thinker accepts instead of pixels/features (``generate`` encodes up front).
MM_ENCODER_OUTPUTS = "mm_encoder_outputs"
#: Thinker inputs that carry media to the encoders.
MEDIA_INPUT_KEYS = ("pixel_values", "pixel_values_videos", "input_features", MM_ENCODER_OUTPUTS)
#: What a thinker forward / generate takes from a processed audio+video batch (``labels`` aside): the keys
#: the training and evaluation apps pass on from their collated batches.
THINKER_INPUT_KEYS: tuple[str, ...] = (
    "input_ids",
    "attention_mask",
    "pixel_values_videos",
    "video_grid_thw",
    "video_second_per_grid",
    "input_features",
    "feature_attention_mask",
    "use_audio_in_video",
)

#: Where the decoder sits in the thinker (also the prefix of LoRA adapter keys, see ``train``).
LANGUAGE_MODEL_PATH = "model.language_model"


def cache_in(kwargs: Mapping[str, Any]) -> Any:
    """The KV cache a forward call was given, under either name (a pre-hook sees the caller's spelling)."""
    for name in CACHE_NAMES:
        if kwargs.get(name) is not None:
            return kwargs[name]
    return None


def cache_out(output: Any) -> Any:
    """The KV cache a model output holds (``output.cache`` from 5.24, ``output.past_key_values`` before).

    Only the installed name is read: from 5.24 ``output.past_key_values`` is a property that logs a
    deprecation warning, even when there is no cache.
    """
    return getattr(output, CACHE_KWARG, None)


def language_model(thinker: nn.Module) -> nn.Module:
    """The thinker's decoder: the module that receives the merged embeddings and 3D positions."""
    return thinker.get_submodule(LANGUAGE_MODEL_PATH)


def audio_tower(thinker: nn.Module) -> nn.Module:
    return thinker.model.audio_tower


def vision_tower(thinker: nn.Module) -> nn.Module:
    return thinker.model.visual


def audio_attention(thinker: nn.Module) -> nn.Module:
    """The audio encoder's last self-attention (its ``q_proj``/``k_proj``/``scaling``/``num_heads`` are read)."""
    return audio_tower(thinker).layers[-1].self_attn


def _arg(args: tuple, kwargs: Mapping[str, Any], name: str, position: int) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[position] if len(args) > position else None


def audio_tower_feature_lens(args: tuple, kwargs: Mapping[str, Any]) -> Any:
    """The mel lengths of an audio-tower call: ``audio_tower(input_features, feature_lens=..., ...)``."""
    return _arg(args, kwargs, "feature_lens", 1)


def audio_attention_inputs(args: tuple, kwargs: Mapping[str, Any]) -> tuple[Any, Any]:
    """``(hidden_states, cu_seqlens)`` of an audio attention call: ``self_attn(hidden_states, cu_seqlens, ...)``."""
    return _arg(args, kwargs, "hidden_states", 0), _arg(args, kwargs, "cu_seqlens", 1)


def split_text_positions(position_ids: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
    """``(text_row, positions_3d)``: the decoder may get 4 rows, row 0 the 1D text position the mask code reads."""
    if position_ids.shape[0] == 4:
        return position_ids[0], position_ids[1:]
    return None, position_ids


def text_positions(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The 1D text-position row for a (B, L) attention mask: contiguous over real tokens, 0 on padding."""
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0).to(dtype)


def with_text_positions(positions_3d: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The 4-row form of :func:`split_text_positions` for a new (possibly shrunk) mask."""
    return torch.cat([text_positions(mask, positions_3d.dtype)[None], positions_3d], dim=0)


def rope_deltas(positions_3d: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, 1) max 3D position + 1 - number of real tokens: ``get_rope_index``'s ``rope_deltas`` convention.

    Decode steps place token ``i`` of the full history at ``i + rope_deltas``; a compressed cache keeps the
    full-sequence convention so decoding continues exactly where the uncompressed model would.
    """
    low = torch.iinfo(positions_3d.dtype).min if not positions_3d.is_floating_point() else -1e9
    masked = positions_3d.masked_fill(~valid[None], low)
    return (masked.amax(dim=(0, 2)) + 1 - valid.sum(1)).unsqueeze(1)


#: Qwen3-Omni's decoder inputs besides embeddings, mask and positions: the (B, L) mask of visual tokens and one
#: tensor of rows per DeepStack level (``Qwen3OmniMoeThinkerTextModel.forward``).
DEEPSTACK_KWARGS = ("visual_pos_masks", "deepstack_visual_embeds")


def load_balancing_loss(router_logits: Any, num_experts: int, top_k: int, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Qwen3-Omni's MoE load-balancing loss (Switch Transformer), transformers' own ``load_balancing_loss_func``."""
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import load_balancing_loss_func

    return load_balancing_loss_func(router_logits, num_experts, top_k, attention_mask)
