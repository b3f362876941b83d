"""Token saliency: the scores that several methods rank tokens by, in one public place.

Video (STVP's rules; STVP, OmniZip, DyCoke, OmniSelect-style and the learned selector's prior use them):
``spatial_saliency`` (how unlike its frame's mean a token is), ``temporal_saliency`` (how much a cell changed
since the previous frame) and ``frame_saliency`` (the right one of the two for every frame of a window).

Audio: the attention each token receives inside the audio encoder's last self-attention layer
(OmniZip-style), gathered by hooks and stored in ``signals[AUDIO_SALIENCY]``; the rest of this docstring is
about it.

Why: OmniZip ranks audio tokens by how much attention they *receive* inside the audio encoder: a token that
many other frames attend to carries salient acoustic content, and that ranking also guides which video tokens
to keep. The stock encoder never exposes those weights in a usable form: with ``sdpa`` or
``flash_attention_2`` no attention matrix exists at all, and even with ``eager`` the weights are per block
and per head, at encoder resolution (before the 2x average pooling that produces LLM tokens). So instead of
reading attention weights we hook the last layer's attention *input* and recompute, with that layer's own
``q_proj`` / ``k_proj``, ``softmax(q k^T * scaling)`` block by block. This works whatever attention
implementation the model runs and never builds a ``T x T`` matrix over a whole audio.

Definitions (per audio, per encoder call):

* The encoder attends only within blocks given by ``cu_seqlens`` (chunks of ``n_window * 2`` mel frames of
  one audio, i.e. ``n_window`` positions after the stride-2 conv; the last chunk of an audio may be shorter).
* For a position ``j`` in a block ``B`` of length ``n``:
  ``received[j] = mean_{heads h} mean_{queries i in B} softmax_j(q_i^h . k_j^h * scaling)``.
  Each softmax row sums to 1, so ``sum_{j in B} received[j] = 1`` for every block (mean value ``1/n``).
* What is stored is ``received[j] * n`` (the attention ``j`` receives relative to uniform attention in
  its block, mean 1): ranking inside a block is unchanged, and a short last block of an audio does not
  outrank full blocks just because its mean is ``1/n`` with a smaller ``n``.
* The per-position values are then pooled exactly like the encoder's post-pooling, which the model adapter
  describes (``audio_positions``, ``audio_pool``). Qwen2.5-Omni (``get_pool_indices(feature_lens)``): LLM audio
  token ``t`` of audio ``b`` is the mean of positions ``p`` and ``p + 1`` with ``p = offset_b + 2 t``; an odd
  trailing position is dropped, as in the encoder. Qwen3-Omni pools nothing after its last attention: its
  positions are the LLM audio tokens (13 per second), split per audio.

Usage::

    signals = {}
    handles = attach_audio_saliency(thinker, signals)
    thinker(**inputs)                       # or generate(...)
    per_audio = signals[AUDIO_SALIENCY]     # list of float32 (num_audio_tokens_b,) tensors
    for h in handles:
        h.remove()
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from sift.layout import Window, same_cells
from sift.models import adapter_for

__all__ = [
    "AUDIO_SALIENCY",
    "spatial_saliency",
    "temporal_saliency",
    "frame_saliency",
    "mixed_saliency",
    "attach_audio_saliency",
    "block_attention_received",
    "pool_like_encoder",
]

#: The one name of the audio-saliency side signal: the key under which :func:`attach_audio_saliency` stores
#: the per-audio saliency list in ``signals`` (``CompressionBatch.signals``), and every method reads it.
AUDIO_SALIENCY = "audio_saliency"


def spatial_saliency(tokens: torch.Tensor) -> torch.Tensor:
    """1 - cos(token, mean token of its frame): high for tokens unlike the rest of the frame."""
    mean = tokens.mean(dim=0, keepdim=True)
    return 1.0 - F.cosine_similarity(tokens.float(), mean.float(), dim=-1)


def temporal_saliency(tokens: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """1 - cos(token, same cell in the previous frame): high for tokens that changed."""
    return 1.0 - F.cosine_similarity(tokens.float(), previous.float(), dim=-1)


def mixed_saliency(spatial: torch.Tensor, temporal: torch.Tensor) -> torch.Tensor:
    """Sum of a frame's spatial and temporal saliency, each standardised over the frame.

    Why: under camera motion the temporal rule alone ranks moving background over a still object, and the
    spatial rule alone misses an object whose change over time is what a question asks about. Standardising
    puts the two on one scale whatever their spreads (1 - cos is small and frame-dependent); a constant
    score (no spread) contributes nothing.
    """
    return _standardised(spatial.float()) + _standardised(temporal.float())


def _standardised(x: torch.Tensor) -> torch.Tensor:
    if x.numel() < 2:
        return torch.zeros_like(x)
    std = x.std()
    return (x - x.mean()) / std if bool(std > 0) else torch.zeros_like(x)


def frame_saliency(embeds: torch.Tensor, window: Window) -> list[torch.Tensor]:
    """STVP saliency of every frame of a window (embeds: (L, D) of one row).

    The first frame, and any frame whose cells do not line up with the previous one (a grid split across
    windows at fps < 1), get the spatial rule; the others the temporal rule against the previous frame.
    """
    scores = []
    previous = None
    for frame in window.frames:
        tokens = embeds[frame.positions.to(embeds.device)]
        if same_cells(previous, frame):
            scores.append(temporal_saliency(tokens, embeds[previous.positions.to(embeds.device)]))
        else:
            scores.append(spatial_saliency(tokens))
        previous = frame
    return scores


def _project_heads(linear: nn.Linear, hidden_states: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Apply ``linear`` (in the layer's own dtype, like the encoder does) -> float32 ``(num_heads, T, head_dim)``."""
    x = hidden_states.to(dtype=linear.weight.dtype)
    out = linear(x).float()
    return out.reshape(out.shape[0], num_heads, -1).transpose(0, 1)


@torch.no_grad()
def block_attention_received(
    hidden_states: torch.Tensor,
    attn: nn.Module,
    cu_seqlens: torch.Tensor,
    *,
    max_block_group: int = 16,
    max_head_group: int | None = None,
) -> torch.Tensor:
    """Mean attention each position receives within its block (mean over heads and the block's queries).

    Args:
        hidden_states: ``(T, d_model)`` input of ``attn`` (i.e. after the layer's pre-attention LayerNorm).
        attn: the audio attention module whose ``q_proj`` / ``k_proj`` / ``scaling`` / ``num_heads`` are used.
        cu_seqlens: ``(num_blocks + 1,)`` cumulative block boundaries, as passed to ``attn``.
        max_block_group: at most this many blocks are scored at once.
        max_head_group: at most this many heads are scored at once (default: all heads).

    Returns:
        float32 ``(T,)`` on ``hidden_states.device``; within each block the values sum to 1.
        Peak extra memory is ``max_block_group * max_head_group * L_max**2`` floats, ``L_max`` the longest block.
    """
    if hidden_states.dim() != 2:
        raise ValueError(f"hidden_states must be (T, d_model), got {tuple(hidden_states.shape)}")
    if max_block_group < 1:
        raise ValueError(f"max_block_group must be >= 1, got {max_block_group}")
    device = hidden_states.device
    total = hidden_states.shape[0]
    bounds = torch.as_tensor(cu_seqlens, device=device).long().reshape(-1)
    if bounds.numel() < 1 or int(bounds[0]) != 0 or int(bounds[-1]) != total:
        raise ValueError(f"cu_seqlens must run from 0 to T={total}, got {bounds.tolist()}")
    num_heads = int(attn.num_heads)
    head_group = num_heads if max_head_group is None else max(1, min(int(max_head_group), num_heads))

    q = _project_heads(attn.q_proj, hidden_states, num_heads)  # (H, T, d)
    k = _project_heads(attn.k_proj, hidden_states, num_heads)
    scaling = float(attn.scaling)

    starts_all = bounds[:-1]
    lengths_all = bounds[1:] - bounds[:-1]
    if bool((lengths_all < 0).any()):
        raise ValueError(f"cu_seqlens must be non-decreasing, got {bounds.tolist()}")
    out = torch.zeros(total, dtype=torch.float32, device=device)
    lengths_list = lengths_all.tolist()
    num_blocks = len(lengths_list)

    for g0 in range(0, num_blocks, max_block_group):
        g1 = min(g0 + max_block_group, num_blocks)
        max_len = max(lengths_list[g0:g1])
        if max_len == 0:
            continue
        starts = starts_all[g0:g1]
        lengths = lengths_all[g0:g1]
        offs = torch.arange(max_len, device=device)
        valid = offs[None, :] < lengths[:, None]  # (G, L)
        index = (starts[:, None] + offs[None, :]).clamp_(max=max(total - 1, 0))  # (G, L), padded slots clamped
        key_bias = torch.zeros(valid.shape, dtype=torch.float32, device=device)
        key_bias.masked_fill_(~valid, float("-inf"))
        acc = torch.zeros(valid.shape, dtype=torch.float32, device=device)  # (G, L) summed over heads/queries
        for h0 in range(0, num_heads, head_group):
            h1 = min(h0 + head_group, num_heads)
            qg = q[h0:h1][:, index].transpose(0, 1)  # (G, h, L, d)
            kg = k[h0:h1][:, index].transpose(0, 1)
            scores = torch.matmul(qg, kg.transpose(-1, -2)) * scaling  # (G, h, L, L)
            scores = scores + key_bias[:, None, None, :]
            probs = torch.softmax(scores, dim=-1)
            # zero padded query rows, then sum over heads and queries -> attention received per key
            probs = probs * valid[:, None, :, None]
            acc += probs.sum(dim=(1, 2))
            del qg, kg, scores, probs
        acc = acc / (num_heads * lengths.clamp(min=1).to(torch.float32))[:, None]
        out[index[valid]] = acc[valid]
    return out


def pool_like_encoder(saliency: torch.Tensor, positions: torch.Tensor | Sequence[int], pool: int = 2) -> list[torch.Tensor]:
    """Split per-position saliency ``(T,)`` per audio and average it ``pool`` positions at a time, as the encoder does.

    ``positions`` are the position counts of the audios at the last attention layer, in the order the encoder
    received them (the model adapter's ``audio_positions``), and must sum to ``T``. Qwen2.5-Omni pools by 2 after
    that layer (an odd trailing position is dropped, as in the encoder); Qwen3-Omni does not pool (``pool=1``).
    Returns one float32 tensor per audio with one value per LLM audio token.
    """
    counts = torch.as_tensor(positions, dtype=torch.long).reshape(-1).cpu()
    if int(counts.sum()) != saliency.shape[0]:
        raise ValueError(f"saliency has {saliency.shape[0]} positions but the audios have {counts.tolist()}")
    result: list[torch.Tensor] = []
    for piece, n in zip(saliency.float().split(counts.tolist()), counts.tolist()):
        tokens = (n - pool) // pool + 1 if n >= pool else 0
        result.append(piece[: pool * tokens].reshape(tokens, pool).mean(dim=1))
    return result


def attach_audio_saliency(
    thinker: nn.Module,
    signals: dict,
    *,
    max_block_group: int = 16,
) -> list[RemovableHandle]:
    """Hook ``thinker``'s audio encoder so each encoder call stores per-audio saliency in ``signals``.

    After every audio-tower call, ``signals[AUDIO_SALIENCY]`` is overwritten with a list of float32 1-D
    tensors of block-relative saliency (see the module docstring) (detached, on the encoder's device), one per audio in the order the encoder received them
    (the rows of ``feature_attention_mask``), each with one value per LLM audio token of that audio.
    Returns the hook handles; call ``.remove()`` on each to detach.
    """
    adapter = adapter_for(thinker)
    tower, attn = adapter.audio_tower(thinker), adapter.audio_attention(thinker)
    state: dict[str, Any] = {}

    def tower_pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        state.clear()
        state["feature_lens"] = adapter.audio_feature_lens(args, kwargs)

    def attn_pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        if "feature_lens" not in state:  # attention called outside an audio-tower call
            return
        hidden_states, cu_seqlens = adapter.audio_attention_inputs(args, kwargs)
        with torch.no_grad():
            received = block_attention_received(
                hidden_states.detach(), module, cu_seqlens, max_block_group=max_block_group
            )
            # x block length: 1.0 means "as much as uniform attention", comparable across blocks. The raw
            # mean is 1/n in a block of n, so an audio's short last block would otherwise outrank the rest.
            bounds = torch.as_tensor(cu_seqlens, device=received.device).long().reshape(-1)
            lengths = bounds[1:] - bounds[:-1]
            state["positions"] = received * torch.repeat_interleave(lengths, lengths).to(received.dtype)

    def tower_hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        feature_lens = state.pop("feature_lens", None)
        positions = state.pop("positions", None)
        state.clear()
        if feature_lens is None or positions is None:
            raise RuntimeError("audio saliency: the last encoder layer's attention did not run in this call")
        with torch.no_grad():
            counts = adapter.audio_positions(torch.as_tensor(feature_lens).reshape(-1).cpu(), thinker.config)
            signals[AUDIO_SALIENCY] = pool_like_encoder(positions, counts, adapter.audio_pool)

    return [
        tower.register_forward_pre_hook(tower_pre_hook, with_kwargs=True),
        attn.register_forward_pre_hook(attn_pre_hook, with_kwargs=True),
        tower.register_forward_hook(tower_hook, with_kwargs=True),
    ]
