"""The Qwen3-Omni token layout: 2 s windows of media time, read from inputs laid out as its processor lays them
out, checked against the 3D positions the stock model gives every token."""

import pytest
import torch

from sift.layout import build_layout
from sift.models.qwen3_omni import read_qwen3_layout
from sift.testbed.tiny_qwen3 import decoder_inputs, qwen3_av_inputs, tiny_qwen3_thinker


@pytest.fixture(scope="module")
def thinker():
    return tiny_qwen3_thinker()


@pytest.mark.parametrize(
    "seconds, fps, with_audio, windows",
    [(4, 2.0, True, 2), (5, 2.0, True, 3), (6, 1.0, True, 3), (4, 2.0, False, 2), (3, 4.0, True, 2)],
)
def test_windows_are_two_seconds_of_media_time(thinker, seconds, fps, with_audio, windows):
    inputs = qwen3_av_inputs(thinker.config, seconds=seconds, fps=fps, with_audio=with_audio)
    layout = read_qwen3_layout(inputs, thinker.config)
    t_row = decoder_inputs(thinker, inputs)["position_ids"][0, 0]
    (segment,) = layout.rows[0].segments
    assert segment.kind == ("audio_in_video" if with_audio else "video")
    assert len(segment.windows) == windows
    start = t_row[segment.start]  # the first token of the run sits at time 0
    ids = inputs["input_ids"][0]
    media = (ids == thinker.config.audio_token_id) | (ids == thinker.config.video_token_id)
    assert layout.rows[0].num_tokens == int(media.sum())
    per_window = 2 * thinker.config.position_id_per_seconds
    for j, window in enumerate(segment.windows):
        times = t_row[torch.cat([window.audio, window.video])] - start
        assert bool(((times >= j * per_window) & (times < (j + 1) * per_window)).all()), (j, times.tolist())
        assert all(bool((ids[f.positions] == thinker.config.video_token_id).all()) for f in window.frames)
        assert bool((ids[window.audio] == thinker.config.audio_token_id).all())
    if with_audio:
        assert layout.rows[0].num_audio == 13 * seconds


def test_qwen25_rule_refuses_qwen3_tokens(thinker):
    inputs = qwen3_av_inputs(thinker.config, seconds=4, fps=2.0)
    with pytest.raises(ValueError, match="not interleaved in 2-second chunks"):
        build_layout(inputs["input_ids"], thinker.config, video_grid_thw=inputs["video_grid_thw"],
                     video_second_per_grid=inputs["video_second_per_grid"], use_audio_in_video=True)


def test_audio_count_is_checked_with_qwen3s_encoder_rule(thinker):
    inputs = qwen3_av_inputs(thinker.config, seconds=4, fps=2.0)
    inputs["feature_attention_mask"] = inputs["feature_attention_mask"][:, :300]  # 3 s of mel: 39 tokens, not 52
    with pytest.raises(ValueError, match="audio #0 has 52 tokens in input_ids but its features give 39"):
        read_qwen3_layout(inputs, thinker.config)
