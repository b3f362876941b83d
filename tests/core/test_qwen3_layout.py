"""The Qwen3-Omni token layout: 2 s windows of media time, read from inputs laid out as its processor lays them
out, checked against the 3D positions the stock model gives every token."""

import pytest
import torch

from sift.layout import build_layout
from sift.models.qwen3_omni import read_qwen3_layout
from sift.testbed.probes import decoder_inputs
from sift.testbed.tiny_qwen3 import qwen3_av_inputs, tiny_qwen3_thinker


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


def test_the_real_processor_lays_out_a_batch_as_the_reader_reads_it():
    """Inputs from the REAL Qwen3OmniMoeProcessor (offline components), two clips in a left-padded batch."""
    from sift.testbed.media import synth_clip
    from sift.testbed.tiny import omni_inputs
    from sift.testbed.tiny_qwen3 import tiny_qwen3_processor, tiny_qwen3_thinker_config

    processor = tiny_qwen3_processor()
    model = tiny_qwen3_thinker(tiny_qwen3_thinker_config(processor.tokenizer))
    inputs = omni_inputs(processor, [synth_clip(4.0, seed=1), synth_clip(6.0, seed=2)], ["What moves?", "Which colour?"])
    assert inputs["video_second_per_grid"].tolist() == [1.0, 1.0]  # temporal patch 2 at 2 fps
    layout = read_qwen3_layout(inputs, model.config)
    t_rows = decoder_inputs(model, dict(inputs))["position_ids"][0]
    cfg = model.config
    for b, seconds in enumerate((4, 6)):
        ids = inputs["input_ids"][b]
        row = layout.rows[b]
        (segment,) = row.segments
        assert row.num_audio == int((ids == cfg.audio_token_id).sum()) == 13 * seconds
        assert row.num_video == int((ids == cfg.video_token_id).sum()) == 16 * seconds  # one grid per second, 4x4 tokens
        assert len(segment.windows) == seconds // 2
        start = t_rows[b, segment.start]
        for j, window in enumerate(segment.windows):
            times = t_rows[b, torch.cat([window.audio, window.video])] - start
            assert bool(((times >= 26 * j) & (times < 26 * (j + 1))).all())
