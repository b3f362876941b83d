"""Masked attention: a training signal for every media token, dropped ones included.

Why: when dropped tokens leave the sequence (what inference does, and what `sift.compress` does by
default), a selector trained through the LM loss only ever learns about the tokens it kept: nothing in the
forward pass depends on a dropped token, so its score gets no gradient. Here the full sequence runs and
every attention layer of the language model weighs each key by its keep gate, DynamicViT's masked softmax:

    p_ij = g_j exp(s_ij) / sum_k g_k exp(s_ik)

The gates are straight-through: their value is the hard keep decision (0 or 1), so every kept token
computes exactly what it computes in the shrunk sequence (survivors keep their 3D positions in both), while
d p_ij / d g_j = exp(s_ij) / Z_i is the effect of letting token j back in, also where g_j = 0.

Cost: the language model runs on the full sequence with an eager-style attention (an L x L weight matrix
per head, in float32), whatever attention implementation the model was loaded with; memory grows with L^2
per layer, as with `attn_implementation="eager"`. The encoders keep their own implementation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

import torch
from torch import nn

__all__ = ["MASKED_ATTENTION", "masked_attention", "register_masked_attention", "key_gates"]

#: The attention implementation name sift registers with transformers.
MASKED_ATTENTION = "sift_masked"

_GATE: ContextVar[torch.Tensor | None] = ContextVar("sift_key_gate", default=None)


def masked_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: object,
) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers attention function: eager attention whose key weights are multiplied by the keep gates."""
    groups = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(groups, dim=1)
    value = value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query.float(), key.float().transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask[..., : key.shape[-2]].float()
    scores = scores - scores.amax(dim=-1, keepdim=True).detach()
    weights = scores.exp()
    gate = _GATE.get()
    if gate is not None:
        if gate.shape != (query.shape[0], key.shape[-2]):
            raise RuntimeError(f"key gates of shape {tuple(gate.shape)} for keys of shape {tuple(key.shape)}")
        weights = weights * gate[:, None, None, :].float()
    weights = weights / weights.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    out = torch.matmul(weights.to(value.dtype), value)
    return out.transpose(1, 2).contiguous(), weights


def register_masked_attention() -> None:
    """Make `MASKED_ATTENTION` a valid attention implementation (idempotent; eager's 4D float mask)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register(MASKED_ATTENTION, masked_attention)
    AttentionMaskInterface.register(MASKED_ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["eager"])


@contextlib.contextmanager
def key_gates(config: object, gate: torch.Tensor) -> Iterator[None]:
    """Within the block, the model built on `config` attends with masked attention weighted by `gate` (B, L)."""
    register_masked_attention()
    previous = config._attn_implementation
    token = _GATE.set(gate)
    config._attn_implementation = MASKED_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = previous
        _GATE.reset(token)
