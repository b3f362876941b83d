"""The tiny Qwen3-Omni thinker and its inputs: the stock model accepts them and places every token where
the processor's rule says (video grid t at t * second_per_grid * 13, audio token k at k)."""

import pytest
import torch
from transformers.models.qwen3_omni_moe import modeling_qwen3_omni_moe as q3

from sift.layout import grid_interleaving
from sift.models.qwen3_omni import qwen3_audio_tokens
from sift.testbed.probes import decoder_inputs
from sift.testbed.tiny_qwen3 import qwen3_av_inputs, tiny_qwen3_thinker


@pytest.fixture(scope="module")
def thinker():
    return tiny_qwen3_thinker()


@pytest.mark.parametrize("frames", [1, 99, 100, 101, 250, 400, 1234])
def test_audio_token_count_is_the_encoders(frames):
    lengths = torch.tensor([frames])
    assert qwen3_audio_tokens(lengths).tolist() == q3._get_feat_extract_output_lengths(lengths, 50).tolist()


def test_interleave_puts_each_grid_before_the_audio_at_or_after_its_time():
    order = grid_interleaving(grid_t=3, tokens_per_grid=2, audio_tokens=30, grid_positions=13.0)
    expected = [False] * 2 + [True] * 13 + [False] * 2 + [True] * 13 + [False] * 2 + [True] * 4
    assert order.tolist() == expected


@pytest.mark.parametrize("with_audio", [True, False])
def test_stock_model_places_tokens_by_time(thinker, with_audio):
    inputs = qwen3_av_inputs(thinker.config, seconds=4, fps=2.0, with_audio=with_audio)
    seen = decoder_inputs(thinker, inputs)
    ids, t_row = inputs["input_ids"][0], seen["position_ids"][0, 0]
    assert seen["position_ids"].dtype == torch.float32
    start = 2.0 if with_audio else 1.0  # after <vision_bos> (and <audio_bos>)
    video = ids == thinker.config.video_token_id
    audio = ids == thinker.config.audio_token_id
    assert int(video.sum()) == 4 * 4  # 4 grids (8 frames at 2 fps) of 2x2 merged cells
    grid = torch.arange(4).repeat_interleave(4).float()
    assert torch.equal(t_row[video], start + grid * 1.0 * 13)
    if with_audio:
        assert int(audio.sum()) == 52  # 4 s of audio, 13 tokens per second
        assert torch.equal(t_row[audio], start + torch.arange(52).float())
    # DeepStack: one row per video token at each of the 2 levels
    assert torch.equal(seen["visual_pos_masks"], video[None])
    assert [tuple(d.shape) for d in seen["deepstack_visual_embeds"]] == [(16, 64), (16, 64)]
