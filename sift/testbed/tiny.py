"""A tiny, offline Qwen2.5-Omni thinker, processor and tokenizer.

Why: the real Qwen2.5-Omni checkpoints are many GB and live on a model hub that tests, demos and CI
cannot reach. Everything in ``sift`` (token layouts, compressors, the model plug-in) only depends on the
*structure* of Qwen2.5-Omni inputs: the special-token layout produced by the real
:class:`~transformers.Qwen2_5OmniProcessor`, the interleaved video/audio chunks, the 3-D M-RoPE
positions and the real thinker modules. This module builds all of that from the *real* transformers
classes with a few-thousand-parameter configuration and a byte-level tokenizer made locally with the
``tokenizers`` library, so a full forward / ``generate`` pass runs on CPU in well under a second and
nothing is ever downloaded.

Token strings and the chat template follow Qwen2.5-Omni's, so code written against the tiny model works
unchanged with the real one; only the token ids differ (always read them from the tokenizer/config).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from transformers import (
    BatchFeature,
    PreTrainedTokenizerFast,
    Qwen2_5OmniProcessor,
    Qwen2_5OmniThinkerConfig,
    Qwen2_5OmniThinkerForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
    WhisperFeatureExtractor,
)

if TYPE_CHECKING:  # pragma: no cover
    from sift.testbed.media import Clip

__all__ = [
    "SPECIAL_TOKENS",
    "CHAT_TEMPLATE",
    "DEFAULT_SYSTEM_PROMPT",
    "tiny_tokenizer",
    "tiny_thinker_config",
    "tiny_thinker",
    "tiny_vocab_size",
    "tiny_mrope_section",
    "tiny_feature_extractor",
    "tiny_processor",
    "omni_inputs",
]

#: Qwen2.5-Omni's special tokens (real strings), in the order they get ids after the 256 byte tokens.
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|AUDIO|>",
    "<|audio_bos|>",
    "<|audio_eos|>",
    "<|vision_bos|>",
    "<|vision_eos|>",
    "<|vision_pad|>",
    "<|IMAGE|>",
    "<|VIDEO|>",
)

#: Named multimodal tokens, exposed as tokenizer attributes (``tok.video_token``, ``tok.video_token_id``...)
#: which :class:`~transformers.Qwen2_5OmniProcessor` reads in ``__init__``.
_MODEL_SPECIFIC_TOKENS: dict[str, str] = {
    "image_token": "<|IMAGE|>",
    "audio_token": "<|AUDIO|>",
    "video_token": "<|VIDEO|>",
    "vision_bos_token": "<|vision_bos|>",
    "vision_eos_token": "<|vision_eos|>",
    "audio_bos_token": "<|audio_bos|>",
    "audio_eos_token": "<|audio_eos|>",
}

#: A few BPE merges so that the chat-role words are single tokens (``user_token_id`` is a real field).
_MERGED_WORDS: tuple[str, ...] = ("user", "assistant", "system")

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

#: Qwen2.5-Omni style chat template. Content may be a string or a list of typed items.
CHAT_TEMPLATE = (
    "{%- if not messages or messages[0]['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\n" + DEFAULT_SYSTEM_PROMPT + "<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}"
    "{{ message['content'] }}"
    "{%- else -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'video' -%}{{ '<|vision_bos|><|VIDEO|><|vision_eos|>' }}"
    "{%- elif item['type'] == 'audio' -%}{{ '<|audio_bos|><|AUDIO|><|audio_eos|>' }}"
    "{%- elif item['type'] == 'image' -%}{{ '<|vision_bos|><|IMAGE|><|vision_eos|>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

# Vision geometry of the tiny model / processor (same patching as the real model; tiny pixel budget).
PATCH_SIZE = 14
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2
#: Pixel budget: a 112x112 frame stays 112x112 -> 8x8 patches -> 16 merged tokens per temporal grid.
MIN_PIXELS = 56 * 56
MAX_PIXELS = 112 * 112


def tiny_tokenizer(corpus: Sequence[str] | None = None, *, vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Build a byte-level BPE tokenizer with Qwen2.5-Omni's special tokens and chat template, offline.

    Without ``corpus``: the 256 byte symbols, a few merges (``user``, ``assistant``, ``system`` become
    single tokens), then :data:`SPECIAL_TOKENS`. With ``corpus`` (texts, e.g. a benchmark's questions): BPE
    merges are *trained* on it (plus the chat template's role words) up to ``vocab_size`` entries, so that
    vocabulary's words become single tokens (:func:`sift.testbed.synthav.vocabulary_texts` for tiny-omni). Any text
    encodes either way (byte fallback). ``pad = <|endoftext|>``, ``eos = <|im_end|>``, left padding.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    if corpus is None:
        vocab: dict[str, int] = {ch: i for i, ch in enumerate(alphabet)}
        merges: list[tuple[str, str]] = []
        for word in _MERGED_WORDS:
            for i in range(1, len(word)):
                left, right = word[:i], word[i]
                if word[: i + 1] not in vocab:
                    merges.append((left, right))
                    vocab[word[: i + 1]] = len(vocab)
        backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    else:
        if vocab_size < len(alphabet) + len(SPECIAL_TOKENS):
            raise ValueError(f"vocab_size={vocab_size} cannot hold the 256 bytes and {len(SPECIAL_TOKENS)} special tokens")
        backend = Tokenizer(models.BPE(fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    if corpus is not None:
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, initial_alphabet=alphabet, special_tokens=[], show_progress=False, min_frequency=1
        )
        texts = list(corpus) + [f"{w}\n" for w in _MERGED_WORDS] + [DEFAULT_SYSTEM_PROMPT]
        backend.train_from_iterator(texts, trainer=trainer)
    backend.add_special_tokens(list(SPECIAL_TOKENS))

    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        padding_side="left",
        clean_up_tokenization_spaces=False,
        model_max_length=32768,
        # transformers 5.x: a dict here registers *named* model-specific special tokens
        # (tok.video_token / tok.video_token_id ...); they are saved in tokenizer_config.json.
        extra_special_tokens=dict(_MODEL_SPECIFIC_TOKENS),
        chat_template=CHAT_TEMPLATE,
    )
    return tok


def _round_up(n: int, multiple: int = 64) -> int:
    return ((n + multiple - 1) // multiple) * multiple


def tiny_vocab_size(tokenizer: PreTrainedTokenizerFast) -> int:
    """Embedding rows for a tiny model: the tokenizer's size rounded up to a multiple of 64."""
    return _round_up(len(tokenizer), 64)


def tiny_mrope_section(head_dim: int) -> list[int]:
    """M-RoPE (t, h, w) sections for ``head_dim``: Qwen's [16, 24, 24] for 128 is (1/4, 3/8, 3/8) of head_dim/2."""
    half = head_dim // 2
    t_sec = max(1, half // 4)
    h_sec = (half - t_sec) // 2
    return [t_sec, h_sec, half - t_sec - h_sec]


def tiny_thinker_config(
    tokenizer: PreTrainedTokenizerFast | None = None,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    vocab_size: int | None = None,
    attn_implementation: str = "eager",
    audio_overrides: dict[str, Any] | None = None,
    vision_overrides: dict[str, Any] | None = None,
    **text_overrides: Any,
) -> Qwen2_5OmniThinkerConfig:
    """A tiny :class:`Qwen2_5OmniThinkerConfig` built from the real config classes.

    Text model: ``hidden_size`` (64), ``num_layers`` (2), 4 heads / 2 kv heads (head_dim 16), M-RoPE with
    ``mrope_section`` [2, 3, 3] (sums to head_dim/2 for the default sizes; rescaled otherwise).
    Audio encoder: 128 mel bins, d_model 32, 2 layers. Vision encoder: depth 2, hidden 32, patch 14,
    merge 2, temporal patch 2. All special-token ids come from ``tokenizer`` (default: :func:`tiny_tokenizer`).
    ``text_overrides`` / ``audio_overrides`` / ``vision_overrides`` are applied to the text / audio /
    vision config dicts last (their ``output_dim`` / ``out_hidden_size`` always follow the text hidden size).
    """
    tok = tokenizer if tokenizer is not None else tiny_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    vocab = vocab_size if vocab_size is not None else tiny_vocab_size(tok)
    if vocab < len(tok):
        raise ValueError(f"vocab_size={vocab} is smaller than the tokenizer ({len(tok)} tokens)")

    num_heads = 4
    head_dim = hidden_size // num_heads
    mrope_section = tiny_mrope_section(head_dim)

    text_config: dict[str, Any] = dict(
        vocab_size=vocab,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        # transformers 5.x: `rope_parameters` (was `rope_scaling`); mrope_section is kept as an extra key.
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": mrope_section},
        use_sliding_window=False,
        tie_word_embeddings=False,
        pad_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        bos_token_id=ids["<|im_start|>"],
    )
    text_config.update(text_overrides)
    audio_config = dict(
        num_mel_bins=128,
        encoder_layers=2,
        encoder_attention_heads=2,
        encoder_ffn_dim=64,
        d_model=32,
        max_source_positions=1500,
        n_window=100,
        output_dim=text_config["hidden_size"],
    )
    vision_config = dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        in_channels=3,
        patch_size=PATCH_SIZE,
        spatial_merge_size=MERGE_SIZE,
        temporal_patch_size=TEMPORAL_PATCH_SIZE,
        window_size=112,
        out_hidden_size=text_config["hidden_size"],
        fullatt_block_indexes=[1],
    )
    audio_config.update(audio_overrides or {})
    vision_config.update(vision_overrides or {})
    audio_config["output_dim"] = vision_config["out_hidden_size"] = text_config["hidden_size"]
    user_id = tok.convert_tokens_to_ids("user")
    config = Qwen2_5OmniThinkerConfig(
        audio_config=audio_config,
        vision_config=vision_config,
        text_config=text_config,
        audio_token_index=ids["<|AUDIO|>"],
        image_token_index=ids["<|IMAGE|>"],
        video_token_index=ids["<|VIDEO|>"],
        audio_start_token_id=ids["<|audio_bos|>"],
        audio_end_token_id=ids["<|audio_eos|>"],
        user_token_id=user_id,
        position_id_per_seconds=25,
        seconds_per_chunk=2,
        # Not declared fields of Qwen2_5OmniThinkerConfig, but read by `get_rope_index`
        # (the real checkpoint's config.json carries them too).
        vision_start_token_id=ids["<|vision_bos|>"],
        vision_end_token_id=ids["<|vision_eos|>"],
        pad_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
    )
    config._attn_implementation = attn_implementation
    return config


def tiny_thinker(
    config: Qwen2_5OmniThinkerConfig | None = None,
    *,
    seed: int = 0,
    attn_implementation: str = "eager",
    dtype: torch.dtype = torch.float32,
) -> Qwen2_5OmniThinkerForConditionalGeneration:
    """A randomly initialised (seeded, deterministic) tiny thinker in eval mode."""
    if config is None:
        config = tiny_thinker_config(attn_implementation=attn_implementation)
    else:
        config = copy.deepcopy(config)  # never mutate a caller's (possibly shared) config
        config._attn_implementation = attn_implementation
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5OmniThinkerForConditionalGeneration(config)
    model = model.to(dtype=dtype)
    gen = model.generation_config
    gen.pad_token_id = config.pad_token_id
    gen.eos_token_id = config.eos_token_id
    return model.eval()


def tiny_feature_extractor() -> WhisperFeatureExtractor:
    """The tiny processors' audio front end: Whisper 128-mel features at 16 kHz (the real models' own), 300 s cap."""
    return WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, hop_length=160, chunk_length=300, n_fft=400)


def tiny_processor(tokenizer: PreTrainedTokenizerFast | None = None) -> Qwen2_5OmniProcessor:
    """A :class:`Qwen2_5OmniProcessor` from locally constructed components (no hub access).

    Whisper 128-mel feature extractor, Qwen2-VL image and video processors with patch 14 / merge 2 /
    temporal patch 2 and a tiny pixel budget (:data:`MIN_PIXELS` .. :data:`MAX_PIXELS`): a 112x112 frame
    becomes an 8x8 patch grid, i.e. 16 LLM tokens per temporal grid step.
    """
    tok = tokenizer if tokenizer is not None else tiny_tokenizer()
    size = {"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS}
    feature_extractor = tiny_feature_extractor()
    image_processor = Qwen2VLImageProcessor(
        size=dict(size), patch_size=PATCH_SIZE, temporal_patch_size=TEMPORAL_PATCH_SIZE, merge_size=MERGE_SIZE
    )
    video_processor = Qwen2VLVideoProcessor(
        size=dict(size),
        patch_size=PATCH_SIZE,
        temporal_patch_size=TEMPORAL_PATCH_SIZE,
        merge_size=MERGE_SIZE,
        # reference (qwen-vl-utils) per-frame pixel cap; explicit to silence the 5.2x deprecation warning
        cap_pixels_per_frame=True,
    )
    return Qwen2_5OmniProcessor(
        image_processor=image_processor,
        video_processor=video_processor,
        feature_extractor=feature_extractor,
        tokenizer=tok,
        chat_template=tok.chat_template,
    )


def omni_inputs(
    processor: Qwen2_5OmniProcessor,
    clips: Clip | Sequence[Clip],
    prompts: str | Sequence[str],
    *,
    use_audio_in_video: bool = True,
    fps: float = 2.0,
    padding_side: str = "left",
) -> BatchFeature:
    """Turn decoded clips and prompts into thinker inputs via the processor's decoded-input path.

    Each clip becomes one user turn ``<video><prompt>`` rendered with the tokenizer's chat template (with
    generation prompt). Frames go in as (T, H, W, 3) uint8 arrays (no frame sampling: ``fps`` is the rate
    they were sampled at); with ``use_audio_in_video`` each clip's 16 kHz waveform is passed as the audio
    track of its video and the processor interleaves video/audio tokens in 2 s chunks.

    Clips without audio are processed as plain videos, which requires ``use_audio_in_video=False`` for the
    batch (the model's position ids treat the flag per batch). Returns the processor's ``BatchFeature``
    (``input_ids``, ``attention_mask``, ``pixel_values_videos``, ``video_grid_thw``,
    ``video_second_per_grid`` and, with audio, ``input_features``, ``feature_attention_mask``) plus
    ``use_audio_in_video`` so that ``model(**inputs)`` / ``model.generate(**inputs)`` work directly.

    Audio longer than the feature extractor's cap (300 s) is cut there while the video goes on: that
    warns (once per call) and is recorded as the attribute ``inputs.truncated_audio_s`` (seconds cut per
    clip, 0.0 where nothing was cut). It is an attribute, not a key, so ``model(**inputs)`` never sees it;
    it survives ``.to(device)`` but not pickling.
    """
    if not isinstance(clips, (list, tuple)):
        clips = [clips]
    if isinstance(prompts, str):
        prompts = [prompts] * len(clips)
    prompts = list(prompts)
    if len(prompts) != len(clips):
        raise ValueError(f"got {len(clips)} clips but {len(prompts)} prompts")
    if not clips:
        raise ValueError("omni_inputs needs at least one clip")

    has_audio = [c.audio is not None for c in clips]
    if use_audio_in_video and not all(has_audio):
        missing = [i for i, h in enumerate(has_audio) if not h]
        raise ValueError(
            f"use_audio_in_video=True but clip(s) {missing} have no audio track; "
            "pass use_audio_in_video=False (or batch silent clips separately)"
        )
    for i, c in enumerate(clips):
        if c.frames.ndim != 4 or c.frames.shape[-1] != 3:
            raise ValueError(f"clip {i}: frames must be (T, H, W, 3), got {c.frames.shape}")
        if c.frames.shape[0] % TEMPORAL_PATCH_SIZE:
            raise ValueError(f"clip {i}: number of frames ({c.frames.shape[0]}) must be even (temporal patch 2)")
        if use_audio_in_video and c.sample_rate != 16000:
            raise ValueError(f"clip {i}: audio must be 16 kHz, got {c.sample_rate}")

    from sift.testbed.processing import audio_kwargs, truncated_audio, video_size

    tok = processor.tokenizer
    texts = [
        tok.apply_chat_template(
            [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": p}]}],
            tokenize=False,
            add_generation_prompt=True,
        )
        for p in prompts
    ]
    videos = [np.ascontiguousarray(c.frames, dtype=np.uint8) for c in clips]
    kwargs: dict[str, Any] = dict(
        text=texts,
        videos=videos,
        return_tensors="pt",
        padding=True,
        padding_side=padding_side,
        # Qwen2_5OmniProcessor has class-level video `size` defaults (128*28*28 .. 768*28*28 pixels) that take
        # precedence over the video processor's own `size`, so pass the processor's budget explicitly.
        videos_kwargs=dict(fps=fps, do_sample_frames=False, size=video_size(processor)),
    )
    if use_audio_in_video:
        audio = [np.asarray(c.audio, dtype=np.float32) for c in clips]
        kwargs.update(
            audio=audio,
            load_audio_from_video=True,
            audio_from_video_indices=list(range(len(clips))),
            audio_kwargs=audio_kwargs(processor, audio),
        )
    inputs = processor(**kwargs)
    inputs["use_audio_in_video"] = use_audio_in_video
    inputs.truncated_audio_s = truncated_audio(processor, audio) if use_audio_in_video else [0.0] * len(clips)
    return inputs
