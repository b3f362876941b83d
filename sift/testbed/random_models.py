"""Random-weight Qwen2.5-Omni thinkers at the real models' dimensions, for benchmarks with no download.

:func:`omni_thinker_config` builds a :class:`~transformers.Qwen2_5OmniThinkerConfig` at Qwen2.5-Omni-7B's or
-3B's dims (:data:`sift.flops.SIZES`), optionally with fewer decoder layers, tiny encoders, or a smaller
vocabulary, whose token ids match a given tokenizer (default: :func:`sift.testbed.tiny.tiny_tokenizer`);
:func:`random_thinker` builds a random-weight model from it on the target device and dtype.
"""

from __future__ import annotations

from typing import Any

import torch

from sift.flops import SIZES
from sift.models import adapter_for_config
from sift.testbed.tiny import tiny_thinker_config

__all__ = ["omni_thinker_config", "qwen3_thinker_config", "random_thinker"]


def omni_thinker_config(
    size: str = "7b",
    *,
    layers: int | None = None,
    encoders: str = "real",
    vocab_size: int | None = None,
    tokenizer: Any = None,
    attn_implementation: str = "sdpa",
) -> Any:
    """A ``Qwen2_5OmniThinkerConfig`` at Qwen2.5-Omni-7B's or -3B's dims, for random-weight benchmarks.

    Args:
        size: ``"7b"`` or ``"3b"`` (:data:`SIZES`).
        layers: build only this many decoder layers (default: all; time per layer scales linearly, see
            ``sift bench --layers``).
        encoders: ``"real"`` (the real audio and vision encoder dims, for timing them) or ``"tiny"`` (the
            tiny encoders of :mod:`sift.testbed.tiny`, projecting to the real hidden size: the LLM is real-sized,
            the encoders cost next to nothing).
        vocab_size: embedding / lm_head rows (default: the real vocabulary). Must cover the tokenizer.
        tokenizer: whose special-token ids the config uses (default :func:`sift.testbed.tiny.tiny_tokenizer`), so
            that input ids built with it (and its processor) are parsed correctly.
    """
    from transformers import Qwen2_5OmniAudioEncoderConfig, Qwen2_5OmniVisionEncoderConfig

    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    if encoders not in ("real", "tiny"):
        raise ValueError(f"encoders must be 'real' or 'tiny', got {encoders!r}")
    dims = SIZES[size]
    t = dims["text"]
    n_layers = t["num_hidden_layers"] if layers is None else int(layers)
    if not 1 <= n_layers <= t["num_hidden_layers"]:
        raise ValueError(f"layers must be in 1..{t['num_hidden_layers']} for {size}, got {layers}")
    config = tiny_thinker_config(
        tokenizer,
        hidden_size=t["hidden_size"],
        num_layers=n_layers,
        vocab_size=t["vocab_size"] if vocab_size is None else int(vocab_size),
        attn_implementation=attn_implementation,
        intermediate_size=t["intermediate_size"],
        num_attention_heads=t["num_attention_heads"],
        num_key_value_heads=t["num_key_value_heads"],
        head_dim=t["head_dim"],
        rms_norm_eps=t["rms_norm_eps"],
        max_position_embeddings=t["max_position_embeddings"],
        rope_parameters={"rope_type": "default", "rope_theta": t["rope_theta"], "mrope_section": list(t["mrope_section"])},
    )
    if encoders == "real":
        config.audio_config = Qwen2_5OmniAudioEncoderConfig(**dims["audio"])
        config.vision_config = Qwen2_5OmniVisionEncoderConfig(**dims["vision"])
    return config


def qwen3_thinker_config(
    *, layers: int | None = None, vocab_size: int | None = None, tokenizer: Any = None, attn_implementation: str = "sdpa"
) -> Any:
    """A ``Qwen3OmniMoeThinkerConfig`` whose decoder has Qwen3-Omni-30B-A3B's dims, with tiny encoders.

    Why tiny encoders: what sift changes is after them (selection, the decoder on fewer tokens); the real
    encoders' dims are not recorded here. ``layers`` and ``vocab_size`` as in :func:`omni_thinker_config`.
    """
    from sift.flops import QWEN3_OMNI_30B_A3B
    from sift.testbed.tiny_qwen3 import tiny_qwen3_thinker_config

    t = dict(QWEN3_OMNI_30B_A3B["text"])
    n_layers = t["num_hidden_layers"] if layers is None else int(layers)
    if not 1 <= n_layers <= t["num_hidden_layers"]:
        raise ValueError(f"layers must be in 1..{t['num_hidden_layers']} for qwen3-30b-a3b, got {layers}")
    theta, section = t.pop("rope_theta"), t.pop("mrope_section")
    t.update(num_hidden_layers=n_layers, vocab_size=t["vocab_size"] if vocab_size is None else int(vocab_size))
    config = tiny_qwen3_thinker_config(tokenizer, hidden_size=t.pop("hidden_size"), num_layers=t.pop("num_hidden_layers"),
                                       num_experts=t.pop("num_experts"), attn_implementation=attn_implementation, **t)
    config.text_config.rope_parameters.update(rope_theta=theta, mrope_section=list(section))
    return config


def random_thinker(
    config: Any,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> Any:
    """A random-weight thinker of ``config``'s family (Qwen2.5-Omni or Qwen3-Omni) built on ``device`` in ``dtype``.

    Weights are transformers' own initialisation under ``seed`` (timing does not depend on their values);
    building on the target device in the target dtype avoids a full-size float32 copy on the host.
    """
    cls = adapter_for_config(config).thinker_classes[0]
    previous = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        torch.set_default_dtype(dtype)
        try:
            model = cls(config)
        finally:
            torch.set_default_dtype(previous)
    model = model.to(device=device, dtype=dtype).eval()
    gen = model.generation_config
    gen.pad_token_id = config.pad_token_id
    gen.eos_token_id = config.eos_token_id
    return model
