"""One through-the-model matrix over every registered method (kvpress's `default_presses`): a method added
to the registry is tested here for free. Method-specific behaviour stays in each method's own test file."""

from __future__ import annotations

import pytest
import torch

import sift
from sift.budget import keep_count
from sift.testbed.media import synth_clip
from sift.testbed.tiny import omni_inputs

METHODS = sift.available_compressors()
RETENTIONS = (0.1, 0.35, 1.0)


@pytest.fixture(scope="module")
def clip_inputs(processor):
    return omni_inputs(processor, [synth_clip(5.0, tone_hz=700.0)], ["Where is the shape?"])


def _compressor(name: str, retention: float):
    return sift.get_compressor(name) if name == "none" else sift.get_compressor(name, retention=retention)


@pytest.mark.parametrize("retention", RETENTIONS)
@pytest.mark.parametrize("name", METHODS)
def test_every_method_keeps_the_exact_budget_through_generate(thinker, clip_inputs, name, retention):
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
def test_every_method_at_full_retention_is_the_stock_model(thinker, clip_inputs, name):
    with torch.no_grad():
        reference = thinker(**clip_inputs).logits
        with sift.compress(thinker, _compressor(name, 1.0)) as session:
            logits = thinker(**clip_inputs).logits
    assert session.stats.retention == 1.0
    assert torch.equal(logits, reference)
