"""LLM FLOPs of an omni thinker's prefill + decode (OmniZip's Eq. 9), active parameters, and the real model sizes.

:func:`flops` is Eq. 9 of the OmniZip paper, the LLM only (no encoders, no lm_head), for ``n`` prompt tokens
and ``R`` generated tokens through ``T`` decoder layers of hidden size ``d`` and FFN size ``m``::

    T * (4*n*d^2 + 2*n^2*d + 2*n*d*m)                          # prefill: projections, attention, FFN
  + T * R * ((4*d^2 + 2*d*m) + 2*(d*n + d*(R + 1)/2))          # R decode steps over a growing cache

(the paper's accounting: multiply-adds counted once, square attention projections, no causal halving). Its
ratio between a compressed and a full prompt is what token-compression papers report as "FLOPs".

Mixture-of-experts decoders (Qwen3-Omni): a token goes through ``k`` of the ``E`` experts of every layer, so
``m`` is the ACTIVE FFN width ``k * moe_intermediate_size`` (Qwen3-Omni-30B-A3B: 8 x 768 = 6144); the router
(``d * E`` per token, 2% of the FFN there) is left out, as the paper leaves out norms. :func:`active_parameters`
counts the weights a token multiplies by::

    T * (2*d*(H + H_kv)*h  +  3*d*m  +  d*E)        # q/o and k/v projections, gate/up/down FFN, router

(``H`` / ``H_kv`` heads of width ``h``; ``3*d*m`` over the ``k`` active experts for MoE; ``E = 0`` for a dense
FFN; embeddings, lm_head, biases and norms excluded). Qwen3-Omni-30B-A3B: 2.73e9 of its 29.9e9 decoder weights.

:data:`QWEN25_OMNI_7B` and :data:`QWEN25_OMNI_3B` hold the real thinkers' dimensions (text model, audio
and vision encoders, token ids), so sizes, FLOPs and random-weight benchmark models need no download.
Random-weight models at those dims are the testbed's (:mod:`sift.testbed.random_models`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch

__all__ = [
    "flops",
    "flops_ratio",
    "text_dims",
    "active_parameters",
    "QWEN25_OMNI_7B",
    "QWEN25_OMNI_3B",
    "QWEN3_OMNI_30B_A3B",
    "SIZES",
]

#: Qwen2.5-Omni-7B thinker (config.json of Qwen/Qwen2.5-Omni-7B; REFERENCE.md section 1).
QWEN25_OMNI_7B: dict[str, Any] = {
    "text": dict(
        hidden_size=3584,
        num_hidden_layers=28,
        intermediate_size=18944,
        num_attention_heads=28,
        num_key_value_heads=4,
        head_dim=128,
        vocab_size=152064,
        mrope_section=[16, 24, 24],
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        max_position_embeddings=32768,
    ),
    "audio": dict(
        d_model=1280,
        encoder_layers=32,
        encoder_attention_heads=20,
        encoder_ffn_dim=5120,
        num_mel_bins=128,
        max_source_positions=1500,
        n_window=100,
        output_dim=3584,
    ),
    "vision": dict(
        depth=32,
        hidden_size=1280,
        num_heads=16,
        intermediate_size=3420,
        in_channels=3,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        fullatt_block_indexes=[7, 15, 23, 31],
        out_hidden_size=3584,
    ),
    "token_ids": dict(
        audio_token_id=151646,
        audio_start_token_id=151647,
        audio_end_token_id=151648,
        vision_start_token_id=151652,
        vision_end_token_id=151653,
        image_token_id=151655,
        video_token_id=151656,
    ),
    # language model = embeddings + decoder layers + final norm; lm_head (untied) is separate. These dims give
    # exactly these counts (checked in tests/core/test_flops.py on the meta device).
    "parameters": dict(thinker=8.93e9, audio=640e6, vision=677e6, llm=7.07e9, lm_head=0.545e9),
}

#: Qwen2.5-Omni-3B thinker: same encoders (projecting to 2048), a 36-layer 2048-wide LLM.
QWEN25_OMNI_3B: dict[str, Any] = copy.deepcopy(QWEN25_OMNI_7B)
QWEN25_OMNI_3B["text"].update(
    hidden_size=2048,
    num_hidden_layers=36,
    intermediate_size=11008,
    num_attention_heads=16,
    num_key_value_heads=2,
    head_dim=128,
    vocab_size=151936,
)
QWEN25_OMNI_3B["audio"]["output_dim"] = 2048
QWEN25_OMNI_3B["vision"]["out_hidden_size"] = 2048
QWEN25_OMNI_3B["parameters"] = dict(thinker=4.70e9, audio=638e6, vision=669e6, llm=3.09e9, lm_head=0.311e9)

#: Qwen3-Omni-30B-A3B thinker's text model (REFERENCE.md section 6: hidden 2048, 48 MoE layers, 128 experts,
#: 8 active; 32 query / 4 key-value heads). With vocab 151936 and an untied lm_head these dims give exactly the
#: published 30,532,122,624 text-model + lm_head parameters (checked on the meta device in tests/core/test_flops.py).
QWEN3_OMNI_30B_A3B: dict[str, Any] = {
    "family": "qwen3-omni",
    "text": dict(
        hidden_size=2048,
        num_hidden_layers=48,
        intermediate_size=768,  # unused: every layer is MoE (decoder_sparse_step 1, no mlp_only_layers)
        moe_intermediate_size=768,
        num_experts=128,
        num_experts_per_tok=8,
        num_attention_heads=32,
        num_key_value_heads=4,
        head_dim=128,
        vocab_size=151936,
        rope_theta=1_000_000.0,
        mrope_section=[24, 20, 20],  # interleaved M-RoPE (Qwen3-VL's)
        rms_norm_eps=1e-6,
        max_position_embeddings=65536,
    ),
    "parameters": dict(llm_and_lm_head=30_532_122_624),
}

SIZES: dict[str, dict[str, Any]] = {"7b": QWEN25_OMNI_7B, "3b": QWEN25_OMNI_3B, "qwen3-30b-a3b": QWEN3_OMNI_30B_A3B}


# ------------------------------------------------------------------------------------------------ FLOPs
def _text_getter(config: Any) -> Any:
    """A ``get(key)`` over the text model of a model, an omni / thinker / text config, or a mapping."""
    if isinstance(config, torch.nn.Module):
        config = config.config
    if isinstance(config, Mapping):
        return config.get("text", config).get
    for attr in ("thinker_config", "text_config"):
        sub = getattr(config, attr, None)
        if sub is not None:
            config = sub
    return lambda k: getattr(config, k, None)


def _ffn_width(get: Any) -> int | None:
    """The FFN width a token goes through: ``k * moe_intermediate_size`` for a MoE decoder, else ``intermediate_size``."""
    if get("num_experts") and get("moe_intermediate_size"):
        if (get("decoder_sparse_step") or 1) != 1 or get("mlp_only_layers"):
            raise TypeError("a decoder that mixes dense and MoE layers has no single FFN width; not supported")
        return int(get("num_experts_per_tok")) * int(get("moe_intermediate_size"))
    return get("intermediate_size")


def text_dims(config: Any) -> tuple[int, int, int]:
    """(layers T, hidden d, FFN m) of the LLM described by ``config``; m is the active width of a MoE FFN.

    Accepts an omni config (its thinker), a thinker config (its text config), a text config, a model (its
    ``.config``), or a mapping: :data:`QWEN25_OMNI_7B`-style (``"text"`` key) or flat (``hidden_size``,
    ``num_hidden_layers``, ``intermediate_size``, and for MoE ``num_experts``, ``num_experts_per_tok``,
    ``moe_intermediate_size``).
    """
    get = _text_getter(config)
    values = [get("num_hidden_layers"), get("hidden_size"), _ffn_width(get)]
    if any(v is None for v in values):
        raise TypeError(
            f"cannot read num_hidden_layers / hidden_size / intermediate_size from a {type(config).__name__}"
        )
    return int(values[0]), int(values[1]), int(values[2])


def active_parameters(config: Any) -> int:
    """Decoder weights one token multiplies by (the module docstring's formula): all of a dense LLM's, k/E of a MoE's."""
    get = _text_getter(config)
    T, d, m = text_dims(config)
    heads, kv = int(get("num_attention_heads")), int(get("num_key_value_heads") or get("num_attention_heads"))
    head_dim = int(get("head_dim") or d // heads)
    experts = int(get("num_experts") or 0) if get("moe_intermediate_size") else 0
    return T * (2 * d * (heads + kv) * head_dim + 3 * d * m + d * experts)


def flops(thinker_config: Any, n_tokens: int, new_tokens: int = 100) -> float:
    """OmniZip Eq. 9: LLM FLOPs of a prefill over ``n_tokens`` and ``new_tokens`` (R) decode steps.

    ``T*(4*n*d^2 + 2*n^2*d + 2*n*d*m) + T*R*((4*d^2 + 2*d*m) + 2*(d*n + d*(R+1)/2))``, with T layers, hidden
    d and FFN m of the thinker's text model (see :func:`text_dims` for what ``thinker_config`` may be).
    Computed exactly in integers (``2*d*(R+1)/2 = d*(R+1)``), returned as a float.
    """
    n, R = int(n_tokens), int(new_tokens)
    if n < 0 or R < 0:
        raise ValueError(f"n_tokens and new_tokens must be >= 0, got {n_tokens}, {new_tokens}")
    T, d, m = text_dims(thinker_config)
    prefill = T * (4 * n * d * d + 2 * n * n * d + 2 * n * d * m)
    decode = T * R * ((4 * d * d + 2 * d * m) + 2 * d * n + d * (R + 1))
    return float(prefill + decode)


def flops_ratio(config: Any, n_compressed: int, n_full: int, new_tokens: int = 100) -> float:
    """``flops(config, n_compressed, R) / flops(config, n_full, R)``: the FLOPs kept by compression."""
    full = flops(config, n_full, new_tokens)
    if full == 0:
        raise ValueError("flops of the full input is 0 (n_full = new_tokens = 0)")
    return flops(config, n_compressed, new_tokens) / full
