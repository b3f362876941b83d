"""Qwen3-Omni end to end with the REAL Qwen3OmniMoeProcessor (offline components): an mp4 with its audio, audio
alone, an image beside a video (its tokens and DeepStack rows are never dropped)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sift
from sift.models.qwen3_omni import qwen3_audio_tokens
from sift.testbed.media import load_clip, synth_clip, write_clip
from sift.testbed.probes import DecoderCalls
from sift.testbed.tiny import omni_inputs
from sift.testbed.tiny_qwen3 import tiny_qwen3_processor, tiny_qwen3_thinker, tiny_qwen3_thinker_config


@pytest.fixture(scope="module")
def processor():
    return tiny_qwen3_processor()


@pytest.fixture(scope="module")
def q3(processor):
    return tiny_qwen3_thinker(tiny_qwen3_thinker_config(processor.tokenizer))


def test_an_mp4_with_its_audio(q3, processor, tmp_path):
    clip = load_clip(write_clip(synth_clip(5.0, seed=3), tmp_path / "clip.mp4"))
    inputs = omni_inputs(processor, [clip], ["What moves?"])
    with sift.compress(q3, "stvp", retention=0.3) as session, torch.no_grad():
        out = q3.generate(**inputs, max_new_tokens=3, do_sample=False)
    stats = session.history[0]
    n = stats.audio_before[0] + stats.video_before[0]
    assert stats.audio_before[0] == int(qwen3_audio_tokens(inputs["feature_attention_mask"].sum(-1))[0])
    assert stats.audio_after[0] + stats.video_after[0] == round(0.3 * n)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3


def test_audio_alone(q3, processor):
    clip = synth_clip(5.0)
    text = processor.tokenizer.apply_chat_template(
        [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "Which pitch?"}]}],
        tokenize=False, add_generation_prompt=True,
    )
    inputs = processor(text=[text], audio=[clip.audio], return_tensors="pt")
    layout = sift.layout_of(inputs, q3.config)
    (segment,) = layout.rows[0].segments
    assert segment.kind == "audio" and layout.rows[0].num_audio == 65  # 13 per second
    with sift.compress(q3, "omnizip", retention=0.4) as session, torch.no_grad():
        q3.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert session.history[0].audio_after == [round(0.4 * 65)]


def test_an_image_beside_a_video_keeps_its_tokens_and_deepstack_rows(q3, processor):
    clip = synth_clip(4.0)
    text = processor.tokenizer.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "video"}, {"type": "text", "text": "Same?"}]}],
        tokenize=False, add_generation_prompt=True,
    )
    inputs = processor(
        text=[text], images=[np.full((64, 64, 3), 200, dtype=np.uint8)], videos=[clip.frames], audio=[clip.audio],
        load_audio_from_video=True, audio_from_video_indices=[0],
        videos_kwargs=dict(fps=2.0, do_sample_frames=False, size=dict(processor.video_processor.size)), return_tensors="pt",
    )
    inputs["use_audio_in_video"] = True
    ids = inputs["input_ids"][0]
    image = (ids == q3.config.image_token_id).nonzero().squeeze(1)
    assert image.numel() > 0
    with sift.compress(q3, "random", retention=0.3) as session, DecoderCalls(q3) as calls, torch.no_grad():
        q3(**inputs)
    kept = session.stats.kept_positions[0]
    assert torch.isin(image, kept).all() and session.stats.retention == pytest.approx(0.3, abs=0.01)
    seen = calls.calls[0]
    visual = (ids == q3.config.image_token_id) | (ids == q3.config.video_token_id)
    assert int(seen["visual_pos_masks"].sum()) == int(visual[kept].sum())
    assert all(level.shape[0] == int(visual[kept].sum()) for level in seen["deepstack_visual_embeds"])
