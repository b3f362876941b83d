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
per head, in float32, or float64 for a float64 model), whatever attention implementation the model was
loaded with: one such matrix per layer is kept for the backward (`GatedAttention` fuses the gated softmax
with the value product), so memory grows with L^2 per layer. The encoders keep their own implementation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

import torch
from torch import nn

__all__ = ["MASKED_ATTENTION", "GatedAttention", "masked_attention", "register_masked_attention", "key_gates"]

#: The attention implementation name sift registers with transformers.
MASKED_ATTENTION = "sift_masked"

_GATE: ContextVar[torch.Tensor | None] = ContextVar("sift_key_gate", default=None)


class GatedAttention(torch.autograd.Function):
    """softmax-with-gates then @ value, fused so that one (B, H, Lq, Lk) tensor is kept for the backward.

    With q_ij = e_ij / sum_k g_k e_ik (e = exp of the masked scores) and p_ij = g_j q_ij:
    d scores_ij = p_ij (dp_ij - t_i) and d g_j = sum_i q_ij (dp_ij - t_i), t_i = sum_k p_ik dp_ik.
    Autograd through the plain formula keeps three such tensors per layer (exp, weights, normalised weights).
    """

    @staticmethod
    def forward(ctx, scores: torch.Tensor, gate: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        q = (scores - scores.amax(dim=-1, keepdim=True)).exp_()
        g = gate[:, None, None, :]
        q.div_((q * g).sum(dim=-1, keepdim=True).clamp_min_(torch.finfo(q.dtype).tiny))
        ctx.save_for_backward(q, gate, value)
        return torch.matmul((q * g).to(value.dtype), value)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, gate, value = ctx.saved_tensors
        p = q * gate[:, None, None, :]
        grad_value = torch.matmul(p.to(grad_out.dtype).transpose(-1, -2), grad_out)
        dp = torch.matmul(grad_out, value.transpose(-1, -2)).to(p.dtype)
        dp.sub_((p * dp).sum(dim=-1, keepdim=True))
        grad_gate = (q * dp).sum(dim=(1, 2)).to(gate.dtype)
        return p.mul_(dp), grad_gate, grad_value


def masked_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: eager attention whose key weights are multiplied by the keep gates.

    Returns no attention weights (`output_attentions` is not supported in mask mode).
    """
    if dropout > 0.0 and module.training:
        raise NotImplementedError("sift masked attention does not support attention dropout")
    groups = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(groups, dim=1)
    value = value.repeat_interleave(groups, dim=1)
    dtype = torch.promote_types(query.dtype, torch.float32)  # float32 for half types, float64 stays exact
    scores = torch.matmul(query.to(dtype), key.to(dtype).transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask[..., : key.shape[-2]].to(dtype)
    gate = _GATE.get()
    if gate is None:
        gate = scores.new_ones(query.shape[0], key.shape[-2])
    elif gate.shape != (query.shape[0], key.shape[-2]):
        raise RuntimeError(f"key gates of shape {tuple(gate.shape)} for keys of shape {tuple(key.shape)}")
    out = GatedAttention.apply(scores, gate.to(dtype), value)
    return out.transpose(1, 2).contiguous(), None


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
