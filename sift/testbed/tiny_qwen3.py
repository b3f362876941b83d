"""A tiny real Qwen3-Omni thinker and audio+video inputs laid out the way its processor lays them out.

Why: the Qwen3-Omni support (the adapter, the layout reader, DeepStack row dropping) must be tested offline on
the REAL `qwen3_omni_moe` classes, the way tiny-omni serves Qwen2.5-Omni. The model here is built from
`Qwen3OmniMoeThinkerConfig` with 2 MoE decoder layers, 4 experts (2 active), a 2-layer vision encoder with 2
DeepStack levels and a 2-layer audio encoder; token ids come from :func:`sift.testbed.tiny.tiny_tokenizer`.

How Qwen3-Omni differs from Qwen2.5-Omni in what reaches the decoder (checked in transformers 5.23-5.24,
``models/qwen3_omni_moe``):

- a video with its audio track is interleaved per temporal grid, by time: grid ``t`` (all its video tokens)
  sits at temporal position ``t * second_per_grid * position_id_per_seconds`` and goes before every audio
  token ``k`` (position ``k``, one per audio token) with ``k >= that position``; not Qwen2.5's 2 s chunks;
- the audio encoder emits 13 tokens per second of audio (100 mel frames), and the real processor and
  checkpoint use ``position_id_per_seconds=13``, so audio token ``k`` is at about ``k / 13`` s;
- positions are float tensors; `get_rope_index` reads ``vision_start_token_id`` from the config (an extra
  attribute, not a declared field);
- the decoder also receives ``visual_pos_masks`` (B, L) and one ``deepstack_visual_embeds`` tensor per level
  with one row per visual token of the batch, added to the hidden states of its first layers.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from sift.layout import grid_interleaving
from sift.models.qwen3_omni import qwen3_audio_tokens
from sift.testbed.tiny import SPECIAL_TOKENS, tiny_feature_extractor, tiny_mrope_section, tiny_tokenizer, tiny_vocab_size

__all__ = [
    "QWEN3_POSITIONS_PER_SECOND",
    "tiny_qwen3_thinker_config",
    "tiny_qwen3_thinker",
    "tiny_qwen3_tokenizer",
    "tiny_qwen3_processor",
    "qwen3_av_inputs",
    "qwen3_batch",
]

#: What the real Qwen3-Omni processor and checkpoint use (the config class defaults to 25).
QWEN3_POSITIONS_PER_SECOND = 13
#: Qwen3-Omni's vision patch (the tiny thinker's too); a 112x112 frame is resized to 128x128, 8x8 patches.
QWEN3_PATCH_SIZE = 16
#: The named special tokens the Qwen3-Omni processor reads off its tokenizer (``tokenizer.image_token`` ...).
QWEN3_TOKEN_NAMES = {
    "image_token": "<|IMAGE|>", "audio_token": "<|AUDIO|>", "video_token": "<|VIDEO|>",
    "vision_bos_token": "<|vision_bos|>", "vision_eos_token": "<|vision_eos|>",
    "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>",
}


def tiny_qwen3_tokenizer(corpus: Any = None) -> Any:
    """:func:`sift.testbed.tiny.tiny_tokenizer` with the named special tokens the Qwen3-Omni processor reads.

    Why: the real checkpoint's tokenizer config declares them (``tokenizer.audio_token`` and its id); the tiny
    tokenizer has the same tokens, only not under those names.
    """
    tok = tiny_tokenizer(corpus)
    for name, token in QWEN3_TOKEN_NAMES.items():
        setattr(tok, name, token)
        setattr(tok, f"{name}_id", tok.convert_tokens_to_ids(token))
    return tok


def tiny_qwen3_processor(tokenizer: Any = None) -> Any:
    """The REAL ``Qwen3OmniMoeProcessor`` from offline components: Whisper 128-mel features, patch-16 video.

    Its audio-in-video interleaving, its 13 positions per second and its ``video_second_per_grid`` are the real
    processor's own; the audio front end is tiny-omni's (:func:`sift.testbed.tiny.tiny_feature_extractor`), and only
    the pixel budget is tiny: 64x64 to 128x128 pixels, so a 112x112 frame becomes 8x8
    patches, 16 LLM tokens per temporal grid, as on tiny-omni.
    """
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor, Qwen3OmniMoeProcessor

    tok = tokenizer if tokenizer is not None else tiny_qwen3_tokenizer()
    size = {"shortest_edge": 64 * 64, "longest_edge": 128 * 128}
    return Qwen3OmniMoeProcessor(
        image_processor=Qwen2VLImageProcessor(size=dict(size), patch_size=QWEN3_PATCH_SIZE, temporal_patch_size=2, merge_size=2),
        video_processor=Qwen2VLVideoProcessor(size=dict(size), patch_size=QWEN3_PATCH_SIZE, temporal_patch_size=2,
                                              merge_size=2, cap_pixels_per_frame=True),
        feature_extractor=tiny_feature_extractor(),
        tokenizer=tok,
        chat_template=tok.chat_template,
    )


def tiny_qwen3_thinker_config(
    tokenizer: Any = None,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_experts: int = 4,
    attn_implementation: str = "eager",
    **text_overrides: Any,
) -> Any:
    """A tiny ``Qwen3OmniMoeThinkerConfig`` from the real config classes, token ids from ``tokenizer``.

    ``text_overrides`` replace text-model fields (the real dims of :data:`sift.flops.QWEN3_OMNI_30B_A3B`, for
    random-weight benchmarks); the encoders stay tiny and project to ``hidden_size``.
    """
    from transformers import Qwen3OmniMoeThinkerConfig

    tok = tokenizer if tokenizer is not None else tiny_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    num_heads = 4
    text_config = dict(
        vocab_size=tiny_vocab_size(tok),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        moe_intermediate_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=2,
        head_dim=hidden_size // num_heads,
        num_experts=num_experts,
        num_experts_per_tok=2,
        max_position_embeddings=32768,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0,
                         "mrope_section": tiny_mrope_section(hidden_size // num_heads), "interleaved": True},
        pad_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        bos_token_id=ids["<|im_start|>"],
    )
    text_config.update(text_overrides)
    if "head_dim" in text_overrides:
        text_config["rope_parameters"]["mrope_section"] = tiny_mrope_section(text_config["head_dim"])
    audio_config = dict(num_mel_bins=128, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
                        d_model=32, n_window=50, n_window_infer=400, downsample_hidden_size=16,
                        output_dim=hidden_size)
    vision_config = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=QWEN3_PATCH_SIZE,
                         spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=hidden_size,
                         num_position_embeddings=64, deepstack_visual_indexes=[0, 1])
    config = Qwen3OmniMoeThinkerConfig(
        audio_config=audio_config,
        vision_config=vision_config,
        text_config=text_config,
        audio_token_id=ids["<|AUDIO|>"],
        image_token_id=ids["<|IMAGE|>"],
        video_token_id=ids["<|VIDEO|>"],
        audio_start_token_id=ids["<|audio_bos|>"],
        user_token_id=tok.convert_tokens_to_ids("user"),
        position_id_per_seconds=QWEN3_POSITIONS_PER_SECOND,
        # read by get_rope_index, not a declared field (the real checkpoint's config.json carries it)
        vision_start_token_id=ids["<|vision_bos|>"],
        vision_end_token_id=ids["<|vision_eos|>"],
        audio_end_token_id=ids["<|audio_eos|>"],
        pad_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
    )
    config._attn_implementation = attn_implementation
    return config


def tiny_qwen3_thinker(config: Any = None, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> Any:
    """A randomly initialised (seeded) tiny ``Qwen3OmniMoeThinkerForConditionalGeneration`` in eval mode."""
    from transformers import Qwen3OmniMoeThinkerForConditionalGeneration

    config = tiny_qwen3_thinker_config() if config is None else copy.deepcopy(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3OmniMoeThinkerForConditionalGeneration(config)
    model = model.to(dtype=dtype).eval()
    model.generation_config.pad_token_id = config.pad_token_id
    model.generation_config.eos_token_id = config.eos_token_id
    return model


def qwen3_av_inputs(
    config: Any,
    *,
    seconds: int = 4,
    fps: float = 2.0,
    grid_hw: tuple[int, int] = (4, 4),
    with_audio: bool = True,
    prompt: tuple[int, ...] = (10, 11, 12),
    seed: int = 0,
) -> dict[str, Any]:
    """Thinker inputs for one random video (and its audio track), token for token as the processor builds them.

    ``grid_hw`` is the patch grid of a frame (before the 2x2 merge); the prompt ids go after the media, like
    a question after the clip. Pixels and mel features are random: the layout, not the content, is tested.
    """
    cfg_v, cfg_a = config.vision_config, config.audio_config
    gen = torch.Generator().manual_seed(seed)
    grid_t = int(seconds * fps) // cfg_v.temporal_patch_size
    h, w = grid_hw
    per_grid = (h // cfg_v.spatial_merge_size) * (w // cfg_v.spatial_merge_size)
    second_per_grid = cfg_v.temporal_patch_size / fps
    patch_dim = cfg_v.in_channels * cfg_v.temporal_patch_size * cfg_v.patch_size**2
    inputs: dict[str, Any] = {
        "pixel_values_videos": torch.randn(grid_t * h * w, patch_dim, generator=gen),
        "video_grid_thw": torch.tensor([[grid_t, h, w]]),
        "video_second_per_grid": torch.tensor([second_per_grid]),
    }
    n_audio = 0
    if with_audio:
        frames = 100 * seconds
        n_audio = int(qwen3_audio_tokens(torch.tensor(frames), cfg_a.n_window))
        inputs["input_features"] = torch.randn(1, cfg_a.num_mel_bins, frames, generator=gen)
        inputs["feature_attention_mask"] = torch.ones(1, frames, dtype=torch.long)
        inputs["use_audio_in_video"] = True
    order = grid_interleaving(grid_t, per_grid, n_audio, second_per_grid * config.position_id_per_seconds)
    media = torch.where(order, config.audio_token_id, config.video_token_id)
    head = [config.vision_start_token_id] + ([config.audio_start_token_id] if with_audio else [])
    tail = ([config.audio_end_token_id] if with_audio else []) + [config.vision_end_token_id]
    ids = torch.cat([torch.tensor(head), media, torch.tensor(tail + list(prompt))])[None]
    inputs.update(input_ids=ids, attention_mask=torch.ones_like(ids))
    return inputs


def qwen3_batch(config: Any, samples: list[dict[str, Any]]) -> dict[str, Any]:
    """One left-padded batch of :func:`qwen3_av_inputs` samples, as the processor pads one (for `generate`).

    Media are concatenated in row order; mel features are right-padded to the longest audio and masked by
    ``feature_attention_mask``, as the feature extractor does.
    """
    length = max(s["input_ids"].shape[1] for s in samples)
    pad = [length - s["input_ids"].shape[1] for s in samples]
    batch: dict[str, Any] = {
        "input_ids": torch.stack([torch.cat([torch.full((p,), config.pad_token_id), s["input_ids"][0]]) for s, p in zip(samples, pad)]),
        "attention_mask": torch.stack([torch.cat([torch.zeros(p, dtype=torch.long), s["attention_mask"][0]]) for s, p in zip(samples, pad)]),
    }
    for key in ("pixel_values_videos", "video_grid_thw", "video_second_per_grid"):
        batch[key] = torch.cat([s[key] for s in samples])
    audio = [s for s in samples if "input_features" in s]
    if audio:
        if len(audio) != len(samples):
            raise ValueError("qwen3_batch: every sample must have an audio track, or none")
        frames = max(s["input_features"].shape[-1] for s in audio)
        batch["input_features"] = torch.cat([torch.nn.functional.pad(s["input_features"], (0, frames - s["input_features"].shape[-1])) for s in audio])
        batch["feature_attention_mask"] = torch.cat([torch.nn.functional.pad(s["feature_attention_mask"], (0, frames - s["feature_attention_mask"].shape[-1])) for s in audio])
        batch["use_audio_in_video"] = True
    return batch
