"""Shared fixtures: the tiny offline Qwen2.5-Omni (see sift.tiny)."""

from __future__ import annotations

import pytest

from sift.media import synth_clip
from sift.tiny import omni_inputs, tiny_processor, tiny_thinker, tiny_thinker_config, tiny_tokenizer


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
