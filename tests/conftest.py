"""Shared fixtures: the tiny offline Qwen2.5-Omni (see sift.testbed.tiny), and the benchmark scripts as modules."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

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


@contextlib.contextmanager
def _benchmark_script(name: str) -> Iterator[ModuleType]:
    """benchmarks/<name>.py imported as a module for the duration of the block (it is a script, not a package)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_bench", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


@pytest.fixture(scope="session")
def benchmark_script():
    """`with benchmark_script("train_step") as module:` runs benchmarks/train_step.py's code as a module."""
    return _benchmark_script
