"""The adapter interface and its registry.

An adapter answers, for one model family, the questions the rest of sift would otherwise answer by naming
classes and attribute paths: where the thinker and its language model are, how a prefill's token layout is
read, how positions are laid out and continued, which token ids carry media, where the audio encoder's last
attention is. kvpress keeps its per-model knowledge in one place the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from sift.layout import TokenLayout

__all__ = [
    "OmniAdapter",
    "adapter_for",
    "adapter_for_config",
    "layout_of",
    "load_thinker",
    "register_adapter",
    "registered_adapters",
    "thinker_config_of",
]

_ADAPTERS: list[type[OmniAdapter]] = []


class OmniAdapter:
    """What sift needs to know about one omni model family. Subclass, fill in, `register_adapter`."""

    #: Short name in messages ("qwen2.5-omni").
    name: ClassVar[str]
    #: The thinker classes (input ids + media in, logits out) and the full models that hold one as `.thinker`.
    thinker_classes: ClassVar[tuple[type, ...]] = ()
    wrapper_classes: ClassVar[tuple[type, ...]] = ()
    #: Thinker inputs besides `input_ids` that `read_layout` needs (kept through `generate`, which drops some).
    layout_keys: ClassVar[tuple[str, ...]] = ()
    #: What a thinker forward / generate takes from a processed audio+video batch (`labels` aside).
    input_keys: ClassVar[tuple[str, ...]] = ()
    #: Where the decoder sits in the thinker (also the prefix of LoRA adapter keys in the training app).
    language_model_path: ClassVar[str]

    @classmethod
    def handles(cls, model: nn.Module) -> bool:
        return isinstance(model, cls.thinker_classes + cls.wrapper_classes)

    @classmethod
    def handles_config(cls, config: Any) -> bool:
        """Whether a (full or thinker) config's ``model_type`` is one of this family's."""
        types = {c.config_class.model_type for c in cls.thinker_classes + cls.wrapper_classes}
        return getattr(config, "model_type", None) in types

    def thinker(self, model: nn.Module) -> nn.Module:
        """The module `sift.compress` hooks: the model itself, or the thinker a full model holds."""
        return model.thinker if isinstance(model, self.wrapper_classes) else model

    def language_model(self, thinker: nn.Module) -> nn.Module:
        """The decoder: the module that receives the merged embeddings and the positions."""
        return thinker.get_submodule(self.language_model_path)

    def read_layout(self, inputs: Mapping[str, Any], config: Any) -> TokenLayout:
        """The audio/video token layout of a prefill's inputs (`input_ids`, `attention_mask`, `layout_keys`)."""
        raise NotImplementedError

    def split_positions(self, position_ids: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(text row or None, media positions) of what the language model receives."""
        raise NotImplementedError

    def rope_deltas(self, positions: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(B, 1) offset that places decode step i of the full history at i + delta."""
        raise NotImplementedError

    def with_text_positions(self, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Media positions plus the text row `generate` adds, rebuilt for a new (shrunk) attention mask."""
        raise NotImplementedError

    def continuation_positions(self, full_mask: torch.Tensor, rope_deltas: torch.Tensor, new_tokens: int) -> torch.Tensor:
        """Positions of `new_tokens` appended to a compressed cache, as the uncompressed model would give them."""
        raise NotImplementedError

    def media_token_ids(self, config: Any) -> list[int]:
        """Placeholder ids of audio, video and image tokens: new media on top of a cache are refused by them."""
        raise NotImplementedError

    def hidden_size(self, config: Any) -> int:
        """Width of the language model's embeddings (what a selector must be sized to)."""
        return int(config.get_text_config().hidden_size)

    def audio_tower(self, thinker: nn.Module) -> nn.Module:
        raise NotImplementedError

    def vision_tower(self, thinker: nn.Module) -> nn.Module:
        raise NotImplementedError

    def audio_attention(self, thinker: nn.Module) -> nn.Module:
        """The audio encoder's last self-attention, whose inputs the audio saliency recomputes from."""
        raise NotImplementedError

    def audio_feature_lens(self, args: tuple, kwargs: Mapping[str, Any]) -> Any:
        """The mel lengths of one audio-tower call, from its arguments."""
        raise NotImplementedError

    def audio_attention_inputs(self, args: tuple, kwargs: Mapping[str, Any]) -> tuple[Any, Any]:
        """(hidden_states, cu_seqlens) of one call of `audio_attention`, from its arguments."""
        raise NotImplementedError

    #: Encoder positions averaged into one LLM audio token after the last attention (1: none are pooled).
    audio_pool: ClassVar[int] = 1

    def audio_positions(self, feature_lens: torch.Tensor, config: Any) -> torch.Tensor:
        """Positions each audio has at the encoder's last attention, for its mel lengths."""
        raise NotImplementedError

    def defer_router_loss(self, kwargs: dict[str, Any], config: Any) -> bool:
        """For a mixture-of-experts thinker asked for router logits: stop it computing the load-balancing loss.

        Why: the stock thinker computes that loss with the attention mask it was given, the full-length one, over
        router logits of the kept tokens only. Returns whether `router_loss` must compute it after the call.
        """
        return False

    def router_loss(self, thinker: nn.Module, output: Any, kept_mask: torch.Tensor, with_labels: bool) -> None:
        """The load-balancing loss over the kept tokens, into ``output`` (and into its loss when there were labels)."""

    def shrink_decoder_extras(self, kwargs: dict[str, Any], keep: torch.Tensor, slots: Any, length: int) -> None:
        """Drop dropped tokens' rows from decoder inputs besides embeddings, mask and positions, in place.

        Why: some decoders take per-token side inputs (Qwen3-Omni's DeepStack rows); a shrunk sequence must lose
        them with their tokens. ``slots`` and ``length`` describe the shrunk sequence (`sift.sequence.Slots`).
        """


def register_adapter(cls: type[OmniAdapter]) -> type[OmniAdapter]:
    """Class decorator: make `adapter_for` find models this adapter handles."""
    if cls not in _ADAPTERS:
        _ADAPTERS.append(cls)
    return cls


def registered_adapters() -> list[type[OmniAdapter]]:
    return list(_ADAPTERS)


def thinker_config_of(config: Any) -> Any:
    """The thinker config of a full omni config (``.thinker_config``), or the thinker config itself."""
    return getattr(config, "thinker_config", config)


def adapter_for_config(config: Any) -> OmniAdapter:
    """The adapter of the family a (full or thinker) config belongs to; ValueError naming what is supported."""
    for cls in _ADAPTERS:
        if cls.handles_config(config):
            return cls()
    names = ", ".join(sorted({c.config_class.model_type for cls in _ADAPTERS for c in cls.thinker_classes + cls.wrapper_classes}))
    raise ValueError(f"sift supports model types {names}; got {getattr(config, 'model_type', type(config).__name__)!r}")


def layout_of(inputs: Mapping[str, Any], config: Any) -> TokenLayout:
    """The layout of a processor output (or any dict of thinker inputs), read by its model family's rule."""
    thinker_config = thinker_config_of(config)
    return adapter_for_config(thinker_config).read_layout(inputs, thinker_config)


def load_thinker(name_or_path: str, **kwargs: Any) -> nn.Module:
    """The thinker of a checkpoint of any supported family (a full omni checkpoint or a thinker-only one).

    Why: ``Qwen/Qwen2.5-Omni-7B`` and ``Qwen/Qwen3-Omni-30B-A3B-Instruct`` need different thinker classes; the
    checkpoint's config.json says which (``AutoConfig``), so the apps take any supported model id. ``kwargs`` go
    to ``from_pretrained`` (``dtype``, ``attn_implementation``, ``device_map`` ...).
    """
    from transformers import AutoConfig

    adapter = adapter_for_config(AutoConfig.from_pretrained(name_or_path))
    return adapter.thinker_classes[0].from_pretrained(name_or_path, **kwargs)


def adapter_for(model: nn.Module) -> OmniAdapter:
    """The adapter of `model` (a thinker or a full omni model); TypeError naming what is supported otherwise."""
    for cls in _ADAPTERS:
        if cls.handles(model):
            return cls()
    names = ", ".join(c.__name__ for cls in _ADAPTERS for c in cls.thinker_classes + cls.wrapper_classes)
    raise TypeError(f"sift supports {names}; got {type(model).__name__}")
