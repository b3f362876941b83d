"""How a compressed prefill maps onto the language model's inputs, as pure functions of tensors.

`shrink_sequence` drops what a selection did not keep and re-pads the batch; `continue_sequence` turns the
full-length attention mask that `generate` and chat loops keep growing into the compressed cache's mask.
What is model-specific (the text-position row, how positions continue) comes from the model adapter. The plug-in calls both from its hooks; being free of models and hooks, they are tested alone
(`tests/core/test_sequence.py`), and `Slots` is the one record of where each kept token went, which the plug-in's
label shrinking, its sparse embedding updates and the training app's distillation all read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = [
    "Slots",
    "Shrunk",
    "CacheState",
    "shrink_sequence",
    "identity_slots",
    "continue_sequence",
    "shrink_visual_rows",
]


@dataclass(frozen=True)
class Slots:
    """Where kept tokens sit in the decoder input: token (rows[i], src[i]) of the input is at (rows[i], dst[i])."""

    rows: torch.Tensor
    src: torch.Tensor
    dst: torch.Tensor

    def lookup(self, shape: tuple[int, int], rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Slots of input positions (rows, positions) in a (B, L) input; raises if one was dropped."""
        slot = torch.full(shape, -1, dtype=torch.long, device=self.dst.device)
        slot[self.rows, self.src] = self.dst
        found = slot[rows.to(slot.device), positions.to(slot.device)]
        if bool((found < 0).any()):
            raise RuntimeError("a position that was dropped by the compressor has no slot (only media may be dropped)")
        return found


@dataclass(frozen=True)
class Shrunk:
    """The decoder input after dropping: embeddings, mask and 3D positions of the kept tokens, and their slots."""

    inputs_embeds: torch.Tensor  # (B, K, D)
    attention_mask: torch.Tensor  # (B, K)
    position_ids: torch.Tensor  # (3, B, K), or (4, B, K) with generate's text row
    slots: Slots


def identity_slots(valid: torch.Tensor) -> Slots:
    """Every valid token stays where it is (nothing dropped, or mask mode, where the full sequence runs)."""
    rows, src = torch.nonzero(valid, as_tuple=True)
    return Slots(rows, src, src)


TextPositions = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def shrink_sequence(
    embeds: torch.Tensor,
    positions: torch.Tensor,
    mask: torch.Tensor,
    keep: torch.Tensor,
    text_positions: TextPositions | None = None,
) -> Shrunk:
    """Drop the tokens `keep` (B, L) leaves out and re-pad rows to the longest kept row.

    Padding goes on the input's side: right when the input is right-padded, else left (what `generate`
    needs). Kept tokens keep their original 3D positions (`positions`: (3, B, L)); `text_positions`
    (the model adapter's `with_text_positions`, when the input had the text row `generate` adds) rebuilds
    that row for the kept sequence.
    """
    B, _ = keep.shape
    counts = keep.sum(1)
    K = int(counts.max())
    right_padded = bool((mask[:, -1] == 0).any()) and not bool((mask[:, 0] == 0).any())
    slot = keep.long().cumsum(1) - 1
    if not right_padded:
        slot = slot + (K - counts)[:, None]
    rows, src = torch.nonzero(keep, as_tuple=True)
    dst = slot[rows, src]
    new_embeds = embeds.new_zeros(B, K, embeds.shape[-1]).index_put((rows, dst), embeds[rows, src])
    new_mask = torch.zeros(B, K, dtype=mask.dtype, device=mask.device)
    new_mask[rows, dst] = 1
    new_pos = torch.ones(3, B, K, dtype=positions.dtype, device=positions.device)
    new_pos[:, rows, dst] = positions[:, rows, src]
    if text_positions is not None:
        new_pos = text_positions(new_pos, new_mask)
    return Shrunk(new_embeds, new_mask, new_pos, Slots(rows, src, dst))


def shrink_visual_rows(
    visual_pos_masks: torch.Tensor, level_embeds: list[torch.Tensor], keep: torch.Tensor, slots: Slots, length: int
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Qwen3-Omni's DeepStack inputs for a shrunk sequence: the mask over the kept tokens, and the kept rows.

    Why: the decoder adds ``level_embeds[i]`` row by row to the hidden states at ``visual_pos_masks`` (row-major
    over (B, L)), so a dropped video token must lose its row at every level, in the same order, or the rows
    land on the wrong tokens (silently) or no longer fit (a crash). ``slots`` and ``length`` (K) describe the
    shrunk sequence, as :func:`shrink_sequence` made it.
    """
    visual = visual_pos_masks.bool()
    for i, rows in enumerate(level_embeds):
        if rows.shape[0] != int(visual.sum()):
            raise ValueError(f"DeepStack level {i} has {rows.shape[0]} rows but visual_pos_masks marks {int(visual.sum())} tokens")
    kept_rows = keep.to(visual.device)[visual]  # (n_visual,) in the decoder's row order
    new_mask = torch.zeros(visual.shape[0], length, dtype=torch.bool, device=visual.device)
    src_visual = visual[slots.rows, slots.src]
    new_mask[slots.rows[src_visual], slots.dst[src_visual]] = True
    return new_mask, [rows[kept_rows.to(rows.device)] for rows in level_embeds]


@dataclass
class CacheState:
    """How a compressed KV cache relates to the full-length history `generate` keeps track of."""

    full_len: int  # input length of the compressed prefill
    full_mask: torch.Tensor  # (B, full_len)
    kept_mask: torch.Tensor  # (B, K)
    rope_deltas: torch.Tensor  # (B, 1)

    @property
    def offset(self) -> int:
        """Tokens the cache holds fewer than the full history."""
        return self.full_len - self.kept_mask.shape[1]


def continue_sequence(
    state: CacheState, past_len: int, new_tokens: int, batch: int, mask: torch.Tensor | None
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(attention mask over the compressed cache + the new tokens, or None if none is needed; full-history mask).

    `mask` may cover the full history (what `generate` keeps), the compressed one (a caller that follows
    the cache), or be None (no padding anywhere after the prefill).
    """
    full_len, kept_len = past_len + state.offset + new_tokens, past_len + new_tokens
    if mask is None:
        full_mask = torch.cat([state.full_mask, state.full_mask.new_ones(batch, full_len - state.full_len)], 1)
        if bool(state.kept_mask.all()):
            return None, full_mask  # the plain causal mask over the cache is right
    elif mask.shape[1] == full_len:
        full_mask = mask
    elif mask.shape[1] == kept_len:
        full_mask = torch.cat([state.full_mask, mask[:, state.kept_mask.shape[1] :]], 1)
    else:
        raise ValueError(
            f"attention_mask has length {mask.shape[1]}; with this compressed cache it must cover the full "
            f"history ({full_len} tokens) or the compressed one ({kept_len} tokens)"
        )
    tail = full_mask[:, state.full_len :]
    return torch.cat([state.kept_mask.to(tail.dtype), tail], dim=1), full_mask
