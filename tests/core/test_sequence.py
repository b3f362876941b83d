"""sift.sequence without a model: dropping and re-padding, slots, and continuing a compressed cache."""

from __future__ import annotations

import pytest
import torch

from sift.models import Qwen25OmniAdapter
from sift.sequence import CacheState, continue_sequence, identity_slots, shrink_sequence, shrink_visual_rows


def _batch(mask: list[list[int]], keep: list[list[int]]):
    mask_t, keep_t = torch.tensor(mask), torch.tensor(keep, dtype=torch.bool) & torch.tensor(mask, dtype=torch.bool)
    B, L = mask_t.shape
    embeds = torch.arange(B * L * 2, dtype=torch.float32).view(B, L, 2)
    positions = torch.arange(3 * B * L).view(3, B, L) * 10
    return embeds, positions, mask_t, keep_t


def test_left_padded_rows_are_re_padded_on_the_left_with_their_tokens_and_positions():
    embeds, positions, mask, keep = _batch([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]], [[1, 1, 0, 1, 0], [1, 0, 0, 1, 1]])
    out = shrink_sequence(embeds, positions, mask, keep)
    assert out.attention_mask.tolist() == [[0, 1, 1], [1, 1, 1]]  # row 0 keeps 2 of its 4 tokens, row 1 keeps 3
    rows, src, dst = out.slots.rows, out.slots.src, out.slots.dst
    assert list(zip(rows.tolist(), src.tolist(), dst.tolist())) == [(0, 1, 1), (0, 3, 2), (1, 0, 0), (1, 3, 1), (1, 4, 2)]
    assert torch.equal(out.inputs_embeds[rows, dst], embeds[rows, src])
    assert torch.equal(out.position_ids[:, rows, dst], positions[:, rows, src])  # survivors keep their positions
    assert out.inputs_embeds[0, 0].abs().sum() == 0


def test_right_padded_rows_stay_right_padded():
    embeds, positions, mask, keep = _batch([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], [[1, 0, 1, 1, 0], [0, 0, 1, 1, 0]])
    out = shrink_sequence(embeds, positions, mask, keep)
    assert out.attention_mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert out.slots.dst.tolist() == [0, 1, 2, 0, 1]


def test_the_text_row_is_rebuilt_contiguous_over_the_kept_sequence():
    embeds, positions, mask, keep = _batch([[0, 1, 1, 1], [1, 1, 1, 1]], [[1, 1, 0, 1], [1, 1, 1, 0]])
    out = shrink_sequence(embeds, positions, mask, keep, Qwen25OmniAdapter().with_text_positions)
    assert out.position_ids.shape == (4, 2, 3)
    assert out.position_ids[0].tolist() == [[0, 0, 1], [0, 1, 2]]  # padding 0, then 0, 1, ... over kept tokens
    assert torch.equal(out.position_ids[1:, 0, 1:], positions[:, 0, [1, 3]])


def test_slots_find_kept_positions_and_refuse_dropped_ones():
    embeds, positions, mask, keep = _batch([[1, 1, 1, 1]], [[1, 0, 1, 1]])
    slots = shrink_sequence(embeds, positions, mask, keep).slots
    assert slots.lookup((1, 4), torch.tensor([0, 0]), torch.tensor([2, 3])).tolist() == [1, 2]
    with pytest.raises(RuntimeError, match="dropped"):
        slots.lookup((1, 4), torch.tensor([0]), torch.tensor([1]))
    same = identity_slots(mask.bool())
    assert same.lookup((1, 4), torch.tensor([0, 0]), torch.tensor([1, 3])).tolist() == [1, 3]


def _state() -> CacheState:
    # A left-padded prefill of 6 tokens (1 pad) compressed to 4 (1 pad): the cache holds 2 fewer tokens.
    return CacheState(
        full_len=6, full_mask=torch.tensor([[0, 1, 1, 1, 1, 1]]), kept_mask=torch.tensor([[0, 1, 1, 1]]),
        rope_deltas=torch.tensor([[7]]),
    )


@pytest.mark.parametrize("given", ["full", "kept"])
def test_a_decode_step_gets_the_compressed_mask_whichever_history_the_caller_keeps(given):
    state = _state()
    past_len = 4  # the cache: the 4 kept prefill slots
    full = torch.tensor([[0, 1, 1, 1, 1, 1, 1]])
    mask = full if given == "full" else torch.tensor([[0, 1, 1, 1, 1]])
    kept, full_mask = continue_sequence(state, past_len, new_tokens=1, batch=1, mask=mask)
    assert kept.tolist() == [[0, 1, 1, 1, 1]]
    assert torch.equal(full_mask, full)
    # the new token is the 6th real token of the full history: text position 5 + rope delta 7
    assert Qwen25OmniAdapter().continuation_positions(full_mask, state.rope_deltas, 1).tolist() == [[[12]]] * 3


def test_no_mask_needs_none_only_when_nothing_was_padded():
    unpadded = CacheState(full_len=3, full_mask=torch.ones(1, 3), kept_mask=torch.ones(1, 2), rope_deltas=torch.zeros(1, 1))
    assert continue_sequence(unpadded, 2, 1, 1, None)[0] is None
    kept, _ = continue_sequence(_state(), 4, 1, 1, None)
    assert kept.tolist() == [[0, 1, 1, 1, 1]]


def test_a_mask_of_another_length_is_refused():
    with pytest.raises(ValueError, match="full history \\(7 tokens\\) or the compressed one \\(5 tokens\\)"):
        continue_sequence(_state(), 4, 1, 1, torch.ones(1, 6))


# ---------------------------------------------------------------- DeepStack rows (Qwen3-Omni)


def _deepstack_case():
    """Two left-padded rows; visual tokens (video or image) at known positions, rows numbered by token."""
    mask = torch.tensor([[0, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])
    visual = torch.tensor([[0, 0, 1, 1, 0, 1, 0], [0, 1, 1, 0, 1, 1, 0]], dtype=torch.bool)
    keep = mask.bool() & ~torch.tensor([[0, 0, 1, 0, 0, 0, 0], [0, 0, 1, 0, 1, 1, 0]], dtype=torch.bool)
    # level rows carry the (row, position) they belong to, so a misplaced row is visible
    tags = torch.stack(torch.nonzero(visual, as_tuple=True), 1).float()
    return mask, visual, keep, [tags, tags * 10]


def test_shrink_visual_rows_drops_the_rows_of_dropped_tokens_at_every_level():
    mask, visual, keep, levels = _deepstack_case()
    embeds = torch.zeros(2, 7, 1)
    positions = torch.arange(7).float().expand(3, 2, 7)
    shrunk = shrink_sequence(embeds, positions, mask, keep)
    new_mask, new_levels = shrink_visual_rows(visual, levels, keep, shrunk.slots, shrunk.attention_mask.shape[1])
    # independent: the visual tokens that survive, in row-major order of the shrunk sequence
    kept_visual = torch.stack(torch.nonzero(visual & keep, as_tuple=True), 1).float()
    assert torch.equal(new_levels[0], kept_visual)
    assert torch.equal(new_levels[1], kept_visual * 10)
    assert new_mask.shape == shrunk.attention_mask.shape
    # the shrunk mask marks exactly the slots where the surviving visual tokens went
    slot_positions = shrunk.position_ids[0][new_mask]
    assert torch.equal(slot_positions, kept_visual[:, 1])


def test_shrink_visual_rows_refuses_levels_that_do_not_fit_the_mask():
    mask, visual, keep, levels = _deepstack_case()
    shrunk = shrink_sequence(torch.zeros(2, 7, 1), torch.zeros(3, 2, 7), mask, keep)
    with pytest.raises(ValueError, match="DeepStack level 1 has 3 rows but visual_pos_masks marks 7"):
        shrink_visual_rows(visual, [levels[0], levels[1][:3]], keep, shrunk.slots, shrunk.attention_mask.shape[1])
