"""The tiny offline Qwen2.5-Omni: tokenizer, config, processor, input layout, forward and generate."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2_5OmniProcessor, Qwen2_5OmniThinkerConfig

from sift.testbed.media import synth_clip
from sift.testbed.tiny import SPECIAL_TOKENS, omni_inputs, tiny_thinker, tiny_thinker_config


def _audio_tokens(feature_lengths: torch.Tensor) -> torch.Tensor:
    # Qwen2.5-Omni audio encoder: conv stride 2, then 2x average pooling
    n = (feature_lengths - 1) // 2 + 1
    return (n - 2) // 2 + 1


def test_special_tokens_are_single_ids(tokenizer):
    ids = set()
    for t in SPECIAL_TOKENS:
        enc = tokenizer.encode(t, add_special_tokens=False)
        assert len(enc) == 1, t
        assert tokenizer.convert_ids_to_tokens(enc[0]) == t
        ids.add(enc[0])
    assert len(ids) == len(SPECIAL_TOKENS)
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.padding_side == "left"


def test_tokenizer_attributes_for_processor(tokenizer):
    expected = {
        "image_token": "<|IMAGE|>",
        "audio_token": "<|AUDIO|>",
        "video_token": "<|VIDEO|>",
        "vision_bos_token": "<|vision_bos|>",
        "vision_eos_token": "<|vision_eos|>",
        "audio_bos_token": "<|audio_bos|>",
        "audio_eos_token": "<|audio_eos|>",
    }
    for attr, tok in expected.items():
        assert getattr(tokenizer, attr) == tok
    for name in ("image", "audio", "video"):
        assert getattr(tokenizer, f"{name}_token_id") == tokenizer.convert_tokens_to_ids(expected[f"{name}_token"])


def test_any_text_round_trips(tokenizer):
    text = "héllo wörld 🎬 user assistant\n\t<|VIDEO|>"
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text
    assert len(tokenizer.encode("user", add_special_tokens=False)) == 1


def test_chat_template(tokenizer):
    msgs = [
        {
            "role": "user",
            "content": [
                {"type": "video"},
                {"type": "audio"},
                {"type": "image"},
                {"type": "text", "text": "What happens?"},
            ],
        }
    ]
    text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_bos|><|VIDEO|><|vision_eos|><|audio_bos|><|AUDIO|><|audio_eos|>"
        "<|vision_bos|><|IMAGE|><|vision_eos|>What happens?<|im_end|>\n<|im_start|>assistant\n"
    )
    sys_msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}]
    text = tokenizer.apply_chat_template(sys_msgs, tokenize=False, add_generation_prompt=False)
    assert text == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"


def test_config_token_ids_and_round_trip(tokenizer, thinker_config, tmp_path):
    cfg = thinker_config
    assert cfg.vision_start_token_id == tokenizer.convert_tokens_to_ids("<|vision_bos|>")
    assert cfg.vision_end_token_id == tokenizer.convert_tokens_to_ids("<|vision_eos|>")
    assert cfg.video_token_id == tokenizer.video_token_id
    assert cfg.audio_token_id == tokenizer.audio_token_id
    assert cfg.image_token_id == tokenizer.image_token_id
    assert cfg.audio_start_token_id == tokenizer.convert_tokens_to_ids("<|audio_bos|>")
    assert cfg.text_config.pad_token_id == tokenizer.pad_token_id
    assert cfg.text_config.vocab_size >= len(tokenizer)
    head_dim = cfg.text_config.hidden_size // cfg.text_config.num_attention_heads
    assert sum(cfg.text_config.rope_parameters["mrope_section"]) * 2 == head_dim
    assert cfg._attn_implementation == "eager"

    cfg.save_pretrained(tmp_path)
    loaded = Qwen2_5OmniThinkerConfig.from_pretrained(tmp_path)
    assert loaded.vision_start_token_id == cfg.vision_start_token_id
    assert loaded.text_config.rope_parameters["mrope_section"] == cfg.text_config.rope_parameters["mrope_section"]
    assert loaded.to_dict()["audio_config"] == cfg.to_dict()["audio_config"]
    assert tiny_thinker_config(tokenizer, attn_implementation="sdpa")._attn_implementation == "sdpa"


def test_processor_round_trip(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    loaded = Qwen2_5OmniProcessor.from_pretrained(tmp_path)
    assert loaded.chat_template == processor.chat_template
    assert loaded.tokenizer.video_token_id == processor.tokenizer.video_token_id
    assert loaded.video_processor.size == processor.video_processor.size
    assert loaded.feature_extractor.feature_size == 128
    clip = synth_clip(2.0, seed=3)
    a = omni_inputs(processor, [clip], ["x"])
    b = omni_inputs(loaded, [clip], ["x"])
    assert torch.equal(a["input_ids"], b["input_ids"])
    assert torch.equal(a["pixel_values_videos"], b["pixel_values_videos"])


def test_omni_inputs_interleaved_layout(tokenizer, synth_inputs):
    inp = synth_inputs
    for key in ("input_ids", "attention_mask", "pixel_values_videos", "video_grid_thw",
                "video_second_per_grid", "input_features", "feature_attention_mask"):
        assert key in inp, key
    assert inp["use_audio_in_video"] is True
    assert inp["video_grid_thw"].tolist() == [[4, 8, 8]]  # 8 frames at 2 fps, 112x112 -> 8x8 patches
    assert inp["video_second_per_grid"].tolist() == [1.0]

    ids = inp["input_ids"][0].tolist()
    vid, aud = tokenizer.video_token_id, tokenizer.audio_token_id
    n_video = int(inp["video_grid_thw"].prod(-1).sum()) // 4
    n_audio = int(_audio_tokens(inp["feature_attention_mask"].sum(-1)).sum())
    assert ids.count(vid) == n_video == 64
    assert ids.count(aud) == n_audio == 100  # 4 s -> 400 mel frames -> 100 tokens

    tid = tokenizer.convert_tokens_to_ids
    start = ids.index(tid("<|vision_bos|>"))
    assert ids[start + 1] == tid("<|audio_bos|>")
    end = ids.index(tid("<|vision_eos|>"))
    assert ids[end - 1] == tid("<|audio_eos|>")
    body = ids[start + 2 : end - 1]
    runs = []  # (token, run length)
    for t in body:
        if runs and runs[-1][0] == t:
            runs[-1][1] += 1
        else:
            runs.append([t, 1])
    # 2 s chunks: 2 temporal grids (32 video tokens) then 50 audio tokens (25 per second), twice
    assert runs == [[vid, 32], [aud, 50], [vid, 32], [aud, 50]]


def test_thinker_forward_and_generate(thinker, synth_inputs, thinker_config):
    with torch.no_grad():
        out = thinker(**synth_inputs)
    seq = synth_inputs["input_ids"].shape[1]
    assert out.logits.shape == (1, seq, thinker_config.text_config.vocab_size)
    assert torch.isfinite(out.logits).all()
    gen = thinker.generate(**synth_inputs, max_new_tokens=3, do_sample=False)
    assert gen.shape == (1, seq + 3)
    again = thinker.generate(**synth_inputs, max_new_tokens=3, do_sample=False)
    assert torch.equal(gen, again)


def test_seeded_init_is_deterministic(thinker_config):
    a = tiny_thinker(thinker_config, seed=1)
    b = tiny_thinker(thinker_config, seed=1)
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb and torch.equal(pa, pb), na


def test_clip_without_audio(processor, thinker, tokenizer):
    silent = synth_clip(2.0, with_audio=False)
    inp = omni_inputs(processor, [silent, synth_clip(4.0)], ["a", "longer prompt"], use_audio_in_video=False)
    assert inp["use_audio_in_video"] is False
    assert "input_features" not in inp
    assert inp["video_grid_thw"].tolist() == [[2, 8, 8], [4, 8, 8]]
    ids = inp["input_ids"]
    assert (ids == tokenizer.video_token_id).sum().item() == 32 + 64
    assert (ids == tokenizer.audio_token_id).sum().item() == 0
    assert inp["attention_mask"][0, 0] == 0  # left padding
    with torch.no_grad():
        thinker(**inp)
    assert thinker.generate(**inp, max_new_tokens=2, do_sample=False).shape[1] == ids.shape[1] + 2


def test_mixed_audio_batch_rejected(processor):
    with pytest.raises(ValueError, match="no audio"):
        omni_inputs(processor, [synth_clip(2.0), synth_clip(2.0, with_audio=False)], ["a", "b"])


def test_prompt_count_mismatch(processor):
    with pytest.raises(ValueError):
        omni_inputs(processor, [synth_clip(2.0)], ["a", "b"])
