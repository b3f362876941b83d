"""The compressor interface: what a token-selection method receives and what it returns.

A compressor sees the LLM-input embeddings after the encoders' outputs were scattered in, the
`TokenLayout`, the 3D positions and any side signals its own hooks gathered (e.g. audio-encoder
attention). It answers with a keep-mask over the sequence; it may also rewrite the kept embeddings
(token merging) and expose soft scores (learned selectors). The plug-in does the rest: dropping,
re-padding, positions, labels, KV cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch.utils.hooks import RemovableHandle

from sift.budget import keep_count
from sift.layout import TokenLayout

__all__ = ["Compressor", "CompressionBatch", "Selection", "keep_count"]


@dataclass
class CompressionBatch:
    """Everything a compressor may look at for one prefill call."""

    embeds: torch.Tensor  # (B, L, D) LLM-input embeddings, media features already scattered in
    layout: TokenLayout
    input_ids: torch.Tensor  # (B, L)
    attention_mask: torch.Tensor  # (B, L), 1 for real tokens
    position_ids: torch.Tensor  # (3, B, L) the model's 3D (t, h, w) rope positions
    signals: dict[str, Any] = field(default_factory=dict)  # filled by the compressor's own hooks
    config: Any = None  # the thinker config (token ids, sizes), when run through sift.compress

    @property
    def device(self) -> torch.device:
        return self.embeds.device


@dataclass
class Selection:
    """A compressor's answer."""

    keep: torch.Tensor  # (B, L) bool; must be True at every text, special and image token
    embeds: torch.Tensor | None = None  # (B, L, D) rewritten embeddings (merging, straight-through gates)
    scores: torch.Tensor | None = None  # (B, L) soft scores, for training and inspection
    # Sparse rewrite of a few KEPT tokens, (rows (n,), positions (n,), values (n, D)): cheaper than a
    # full `embeds` copy when only some tokens change (e.g. merged anchors). Applied after `embeds`.
    updates: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None


@dataclass
class Compressor:
    """Base class of all token-selection methods.

    Subclasses are dataclasses registered with `sift.compressors.register`; they implement `select`
    and, when they need side signals, `attach`.
    """

    name: ClassVar[str] = "base"
    retention: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.retention, bool) or not isinstance(self.retention, (int, float)):
            raise TypeError(f"{self.name}: retention must be a number in (0, 1], got {self.retention!r}")
        if not (0.0 < float(self.retention) <= 1.0) or math.isnan(self.retention):
            raise ValueError(
                f"{self.name}: retention is the fraction of audio+video tokens kept and must be in (0, 1], "
                f"got {self.retention}"
            )
        self.retention = float(self.retention)

    def select(self, batch: CompressionBatch) -> Selection:
        raise NotImplementedError

    def attach(self, thinker: torch.nn.Module, signals: dict[str, Any]) -> list[RemovableHandle]:
        """Install hooks that write side signals into `signals` during the encoders' run; none by default."""
        return []

    def keep_all(self, batch: CompressionBatch) -> torch.Tensor:
        """A keep-mask that keeps every token; methods switch off media tokens from it."""
        return torch.ones(batch.input_ids.shape, dtype=torch.bool, device=batch.device)
