"""One through-the-model matrix over every registered method (kvpress's `default_presses`) and every supported
model family (the tiny real Qwen2.5-Omni and Qwen3-Omni thinkers): a method or a family added is tested here for
free. Method-specific behaviour stays in each method's own test file."""

from __future__ import annotations

import pytest
import torch

import sift
from sift.budget import keep_count
from sift.testbed.media import synth_clip
from sift.testbed.tiny import omni_inputs
from sift.testbed.tiny_qwen3 import qwen3_av_inputs, tiny_qwen3_thinker

METHODS = sift.available_compressors()
RETENTIONS = (0.1, 0.35, 1.0)
FAMILIES = ("qwen2.5-omni", "qwen3-omni")


@pytest.fixture(scope="module", params=FAMILIES)
def model_and_clip(request, processor, thinker):
    """(thinker, inputs of one 5 s clip with its audio track) of each model family."""
    if request.param == "qwen2.5-omni":
        return thinker, omni_inputs(processor, [synth_clip(5.0, tone_hz=700.0)], ["Where is the shape?"])
    q3 = tiny_qwen3_thinker()
    return q3, qwen3_av_inputs(q3.config, seconds=5, fps=2.0, grid_hw=(8, 8))


def _compressor(name: str, retention: float):
    return sift.get_compressor(name) if name == "none" else sift.get_compressor(name, retention=retention)


@pytest.mark.parametrize("retention", RETENTIONS)
@pytest.mark.parametrize("name", METHODS)
def test_every_method_keeps_the_exact_budget_through_generate(model_and_clip, name, retention):
    thinker, clip_inputs = model_and_clip
    with sift.compress(thinker, _compressor(name, retention)) as session, torch.no_grad():
        out = thinker.generate(**clip_inputs, max_new_tokens=2, do_sample=False, return_dict_in_generate=True,
                               output_logits=True)
    s = session.history[0]
    n = s.audio_before[0] + s.video_before[0]
    expected = n if name == "none" else keep_count(n, retention)
    assert s.audio_after[0] + s.video_after[0] == expected
    assert s.tokens_after[0] == s.tokens_before[0] - n + expected  # text and special tokens all kept
    kept = s.kept_positions[0]
    assert kept.numel() == s.tokens_after[0] and bool((kept[1:] > kept[:-1]).all())  # original order
    assert out.sequences.shape[1] == clip_inputs["input_ids"].shape[1] + 2 and len(out.logits) == 2
    assert all(bool(torch.isfinite(step).all()) for step in out.logits)


@pytest.mark.parametrize("name", METHODS)
def test_every_method_at_full_retention_is_the_stock_model(model_and_clip, name):
    thinker, clip_inputs = model_and_clip
    with torch.no_grad():
        reference = thinker(**clip_inputs).logits
        with sift.compress(thinker, _compressor(name, 1.0)) as session:
            logits = thinker(**clip_inputs).logits
    assert session.stats.retention == 1.0
    assert torch.equal(logits, reference)
