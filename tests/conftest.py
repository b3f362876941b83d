"""Shared fixtures: the tiny offline Qwen2.5-Omni (see sift.testbed.tiny)."""

from __future__ import annotations

import pytest
import torch

import sift

from sift.testbed.media import synth_clip
from sift.testbed.tiny import omni_inputs, tiny_processor, tiny_thinker, tiny_thinker_config, tiny_tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="session")
def processor(tokenizer):
    return tiny_processor(tokenizer)


@pytest.fixture(scope="session")
def thinker_config(tokenizer):
    return tiny_thinker_config(tokenizer)


@pytest.fixture(scope="session")
def thinker(thinker_config):
    return tiny_thinker(thinker_config, seed=0, attn_implementation="eager")


@pytest.fixture(scope="session")
def synth_inputs(processor):
    """Processed 4 s synthetic 112x112 clip at 2 fps with a 440 Hz tone (batch 1, use_audio_in_video)."""
    return omni_inputs(processor, [synth_clip(4.0)], ["Describe the video."], use_audio_in_video=True)


@pytest.fixture(scope="session")
def interleaved(tokenizer, processor, thinker_config):
    """Builder of (input_ids, layout) for text + ONE audio-in-video segment, interleaved by the real
    processor's own rule (`replace_video_with_audio_token`), without decoding any media."""

    def make(n_audio: int, grid=(2, 8, 8), spg: float = 1.0, prefix: str = "q", suffix: str = "?"):
        grid_t = torch.tensor([list(grid)])
        media = processor.replace_video_with_audio_token(
            {"video_grid_thw": grid_t, "video_second_per_grid": [spg]},
            0,
            {"num_audio_tokens": [n_audio]},
            0,
            position_id_per_seconds=25,
            seconds_per_chunk=2.0,
        )
        text = prefix + "<|vision_bos|>" + media + "<|vision_eos|>" + suffix
        ids = tokenizer(text, return_tensors="pt").input_ids
        layout = sift.build_layout(ids, thinker_config, video_grid_thw=grid_t, video_second_per_grid=torch.tensor([spg]))
        return ids, layout

    return make
