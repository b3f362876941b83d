"""Real processor output -> layout -> compression -> generate, on files decoded with PyAV."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sift
from sift.testbed.media import load_clip, sample_clip_path, synth_clip, write_clip
from sift.testbed.tiny import omni_inputs


def _layout(model, inputs):
    return sift.layout_of(inputs, model.config)


def _compress_and_generate(model, inputs, retention=0.35):
    with sift.compress(model, "random", retention=retention) as session:
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 4
    return session.stats


def test_synthesized_mp4_with_audio(thinker, processor, tmp_path):
    path = write_clip(synth_clip(6.0, tone_hz=660.0), tmp_path / "clip.mp4")
    clip = load_clip(path)
    inputs = omni_inputs(processor, [clip], ["What color is the square?"])
    layout = _layout(thinker, inputs)
    (segment,) = layout.rows[0].segments
    assert segment.kind == "audio_in_video"
    assert len(segment.windows) == 3  # 6 s in 2 s windows
    assert [w.num_audio for w in segment.windows] == [50, 50, 50]
    assert [len(w.frames) for w in segment.windows] == [2, 2, 2]
    stats = _compress_and_generate(thinker, inputs)
    n = layout.num_tokens
    assert stats.audio_after[0] + stats.video_after[0] == round(0.35 * n)


def test_bigbuckbunny(thinker, processor):
    clip = load_clip(sample_clip_path(), size=(112, 112))
    inputs = omni_inputs(processor, [clip], ["Describe the scene."])
    layout = _layout(thinker, inputs)
    row = layout.rows[0]
    assert row.num_audio == int(((inputs["feature_attention_mask"].sum() - 1) // 2 + 1 - 2) // 2 + 1)
    assert row.num_video == int(inputs["video_grid_thw"].prod(-1).sum()) // 4
    # 5.3 s: windows of 2 s, the trailing one holds the last 1.3 s of audio
    assert len(row.windows) == 3
    assert [w.num_audio for w in row.windows] == [50, 50, row.num_audio - 100]
    stats = _compress_and_generate(thinker, inputs, retention=0.25)
    assert stats.retention == pytest.approx(0.25, abs=1 / row.num_tokens)


def test_video_without_audio(thinker, processor, tmp_path):
    path = write_clip(synth_clip(4.0, with_audio=False), tmp_path / "silent.mp4")
    clip = load_clip(path)
    assert clip.audio is None
    inputs = omni_inputs(processor, [clip], ["What moves?"], use_audio_in_video=False)
    layout = _layout(thinker, inputs)
    (segment,) = layout.rows[0].segments
    assert segment.kind == "video" and all(w.num_audio == 0 for w in segment.windows)
    stats = _compress_and_generate(thinker, inputs, retention=0.5)
    assert stats.audio_before == [0] and stats.video_after[0] == round(0.5 * stats.video_before[0])


def test_audio_alone(thinker, processor):
    clip = synth_clip(5.0)
    text = processor.tokenizer.apply_chat_template(
        [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "Which pitch?"}]}],
        tokenize=False,
        add_generation_prompt=True,
    )
    inputs = processor(text=[text], audio=[clip.audio], return_tensors="pt")
    layout = _layout(thinker, inputs)
    (segment,) = layout.rows[0].segments
    assert segment.kind == "audio"
    assert [w.num_audio for w in segment.windows] == [50, 50, 25]
    stats = _compress_and_generate(thinker, inputs, retention=0.4)
    assert stats.audio_after == [round(0.4 * 125)]


def test_image_is_left_alone(thinker, processor):
    clip = synth_clip(4.0)
    image = np.full((56, 56, 3), 200, dtype=np.uint8)
    tok = processor.tokenizer
    text = tok.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "video"}, {"type": "text", "text": "Same?"}]}],
        tokenize=False,
        add_generation_prompt=True,
    )
    inputs = processor(
        text=[text],
        images=[image],
        videos=[clip.frames],
        audio=[clip.audio],
        load_audio_from_video=True,
        audio_from_video_indices=[0],
        videos_kwargs=dict(fps=2.0, do_sample_frames=False, size=dict(processor.video_processor.size)),
        return_tensors="pt",
    )
    inputs["use_audio_in_video"] = True
    image_positions = (inputs["input_ids"][0] == thinker.config.image_token_id).nonzero().squeeze(1)
    assert image_positions.numel() > 0
    with sift.compress(thinker, "random", retention=0.3) as session:
        with torch.no_grad():
            thinker(**inputs)
    assert torch.isin(image_positions, session.stats.kept_positions[0]).all()
    assert session.stats.retention == pytest.approx(0.3, abs=0.01)
