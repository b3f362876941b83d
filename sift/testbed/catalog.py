"""The tiny models the apps accept by name in place of a checkpoint: ``tiny`` (Qwen2.5-Omni) and ``tiny-qwen3``.

Why one place: ``sift eval``, ``sift bench`` and the training app all take ``--model tiny`` for offline runs, and a
tiny model is only usable with the processor whose token ids it was built on, so the pair is built together.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["TINY_MODELS", "tiny_processor_named", "tiny_config_named", "tiny_model_named"]

#: Names that build a random-weight tiny model offline instead of loading a checkpoint.
TINY_MODELS = ("tiny", "tiny-qwen3")


def _unknown(name: str) -> ValueError:
    return ValueError(f"no tiny model {name!r}; the tiny models are {', '.join(TINY_MODELS)}")


def tiny_processor_named(name: str) -> Any:
    """The real processor (offline components) of the tiny model ``name``."""
    if name == "tiny":
        from sift.testbed.tiny import tiny_processor, tiny_tokenizer

        return tiny_processor(tiny_tokenizer())
    if name == "tiny-qwen3":
        from sift.testbed.tiny_qwen3 import tiny_qwen3_processor

        return tiny_qwen3_processor()
    raise _unknown(name)


def tiny_config_named(name: str, tokenizer: Any = None, *, attn: str = "eager") -> Any:
    """The thinker config of the tiny model ``name``, token ids from ``tokenizer`` (default: the tiny tokenizer's)."""
    if name == "tiny":
        from sift.testbed.tiny import tiny_thinker_config

        return tiny_thinker_config(tokenizer, attn_implementation=attn)
    if name == "tiny-qwen3":
        from sift.testbed.tiny_qwen3 import tiny_qwen3_thinker_config

        return tiny_qwen3_thinker_config(tokenizer, attn_implementation=attn)
    raise _unknown(name)


def tiny_model_named(name: str, config: Any, *, seed: int = 0, attn: str = "eager", dtype: torch.dtype = torch.float32) -> Any:
    """The tiny thinker ``name`` of ``config`` (:func:`tiny_config_named`): seeded random weights, eval mode."""
    if name == "tiny":
        from sift.testbed.tiny import tiny_thinker

        return tiny_thinker(config, seed=seed, attn_implementation=attn, dtype=dtype)
    if name == "tiny-qwen3":
        from sift.testbed.tiny_qwen3 import tiny_qwen3_thinker

        return tiny_qwen3_thinker(config, seed=seed, dtype=dtype)
    raise _unknown(name)
