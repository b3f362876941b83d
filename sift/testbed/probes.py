"""What a thinker hands its decoder, recorded at the one seam sift hooks (the language model's inputs).

Why in the testbed: the plug-in and layout tests of both model families compare sift's view of a call with the
stock model's own; one recorder serves them all, and the one-call form (:func:`decoder_inputs`) gives the stock
reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from sift import hf_internals as hf
from sift.models import adapter_for

__all__ = ["DecoderCalls", "decoder_inputs", "greedy_from_decoder_inputs"]


class DecoderCalls:
    """``with DecoderCalls(thinker) as calls:``: ``calls.calls`` holds the keyword inputs of every decoder call.

    Entered inside ``sift.compress``, its hook runs after sift's, so it sees the compressed inputs. ``keys``
    limits what is kept (default: everything).
    """

    def __init__(self, thinker: torch.nn.Module, keys: Sequence[str] | None = None):
        self.thinker, self.keys = thinker, keys
        self.calls: list[dict[str, Any]] = []
        self._handle: Any = None

    def _record(self, module: Any, args: tuple, kwargs: dict) -> None:
        self.calls.append(dict(kwargs) if self.keys is None else {k: kwargs.get(k) for k in self.keys})

    def __enter__(self) -> "DecoderCalls":
        language_model = adapter_for(self.thinker).language_model(self.thinker)
        self._handle = language_model.register_forward_pre_hook(self._record, with_kwargs=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._handle.remove()


def decoder_inputs(thinker: torch.nn.Module, inputs: dict[str, Any]) -> dict[str, Any]:
    """What the thinker hands its decoder for one no-grad forward on ``inputs`` (embeddings, positions, ...)."""
    with DecoderCalls(thinker) as recorder, torch.no_grad():
        thinker(**inputs)
    return recorder.calls[0]


def greedy_from_decoder_inputs(thinker: torch.nn.Module, prefill: dict[str, Any], steps: int) -> torch.Tensor:
    """(B, steps) greedy tokens from a decoder prefill, with an explicit KV cache and no sift hook.

    Why: the reference ``generate`` on a compressed prompt must equal: the decoder run on exactly what sift handed
    it (``prefill``: the recorded keyword inputs, DeepStack rows included), then one token at a time at the next
    position of every M-RoPE row, the mask growing by one.
    """
    from transformers import DynamicCache

    decoder = adapter_for(thinker).language_model(thinker)
    embed, head = thinker.get_input_embeddings(), thinker.lm_head
    cache = DynamicCache(config=thinker.config.get_text_config())
    mask = prefill["attention_mask"]
    _, positions = adapter_for(thinker).split_positions(prefill["position_ids"])
    step_positions, tokens = positions[:, :, -1:], []
    with torch.no_grad():
        hidden = decoder(**prefill, **{hf.CACHE_KWARG: cache}).last_hidden_state
        token = head(hidden[:, -1]).argmax(-1)
        for _ in range(steps):
            tokens.append(token)
            step_positions = step_positions + 1
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            out = decoder(inputs_embeds=embed(token[:, None]), position_ids=step_positions, attention_mask=mask,
                          **{hf.CACHE_KWARG: cache})
            token = head(out.last_hidden_state[:, -1]).argmax(-1)
    return torch.stack(tokens, dim=1)
