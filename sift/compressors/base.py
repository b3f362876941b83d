"""The compressor interface: what a token-selection method receives and what it returns.

A compressor sees the LLM-input embeddings after the encoders' outputs were scattered in, the
`TokenLayout`, the 3D positions and any side signals its own hooks gathered (e.g. audio-encoder
attention). It answers with a keep-mask over the sequence; it may also rewrite the kept embeddings
(token merging) and expose soft scores (learned selectors). The plug-in does the rest: dropping,
re-padding, positions, labels, KV cache.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch.utils.hooks import RemovableHandle

from sift.budget import keep_count
from sift.layout import TokenLayout

__all__ = ["Compressor", "CompressionBatch", "Selection", "keep_count", "as_retention", "check_prune_ratios"]


def as_retention(value: Any, name: str = "compressor") -> float:
    """`value` as a float retention in (0, 1]; numpy/torch scalars and 0-d arrays are accepted, bools are not.

    Why: retentions come from configs, argparse, numpy grids (`np.linspace`) and tensors alike; only the
    value matters, but a bool or a string is always a caller's mistake.
    """
    raw = value
    if getattr(value, "ndim", None) == 0 and callable(getattr(value, "item", None)):
        value = value.item()  # numpy 0-d array / torch scalar tensor
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: retention must be a number in (0, 1], got {raw!r}")
    value = float(value)
    if math.isnan(value) or not 0.0 < value <= 1.0:
        raise ValueError(
            f"{name}: retention is the fraction of audio+video tokens kept and must be in (0, 1], got {value}"
        )
    return value


def check_prune_ratios(name: str, retention: Any, rho_audio: float | None, rho_video: float | None) -> None:
    """Methods that also take the papers' prune ratios (fraction DROPPED per modality) instead of `retention`.

    Why one rule: a budget given twice, or half of a ratio pair, is always a caller's mistake.
    """
    if (rho_audio is None) != (rho_video is None):
        raise ValueError(f"{name}: give both rho_audio and rho_video, or neither (then retention sets the budget)")
    if rho_audio is None:
        return
    if retention is not None:
        raise ValueError(f"{name}: give either retention or rho_audio/rho_video, not both")
    for key, value in (("rho_audio", rho_audio), ("rho_video", rho_video)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value < 1.0:
            raise ValueError(f"{name}: {key} is a prune ratio in [0, 1), got {value!r}")


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
    # (B, L) float straight-through keep gates of a trainable selector: value exactly `keep` (1. / 0.),
    # gradient through its soft scores. The plug-in applies them: by default to the kept embeddings
    # (gradient reaches kept tokens only); with `mode="mask"` to every attention key (all tokens).
    gate: torch.Tensor | None = None
    # (B,) log-probability of the random budget choices of a sampling compressor (OmniSIFT's learned split
    # under `split_noise`), differentiable in its parameters: policy-gradient training adds it to the
    # keep sets' own. None: the selection drew no budget.
    log_prob: torch.Tensor | None = None


@dataclass
class Compressor:
    """Base class of all token-selection methods.

    Subclasses are dataclasses registered with `sift.compressors.register`; they implement `select`
    and, when they need side signals, `attach`.

    `retention` has no default on purpose: a method built without one would otherwise keep every token
    and look like it compresses. Methods where a missing retention is meaningful say so: `none` sets
    `default_retention = 1.0`, OmniZip takes `rho_audio`/`rho_video` instead (`needs_retention`).
    """

    name: ClassVar[str] = "base"
    #: the retention used when none is given; None: the caller must give one
    default_retention: ClassVar[float | None] = None
    retention: float | None = None

    def __post_init__(self) -> None:
        if self.retention is None:
            if not self.needs_retention():
                return
            if self.default_retention is None:
                raise TypeError(
                    f"{self.name} needs retention=... (the fraction of audio+video tokens kept, in (0, 1], "
                    f"e.g. retention=0.35); it has no default"
                )
            self.retention = self.default_retention
        self.retention = as_retention(self.retention, self.name)

    def needs_retention(self) -> bool:
        """False when the method's own options already define the budget (then `retention` stays None)."""
        return True

    def select(self, batch: CompressionBatch) -> Selection:
        raise NotImplementedError

    def attach(self, thinker: torch.nn.Module, signals: dict[str, Any]) -> list[RemovableHandle]:
        """Install hooks that write side signals into `signals` during the encoders' run; none by default."""
        return []

    def keep_all(self, batch: CompressionBatch) -> torch.Tensor:
        """A keep-mask that keeps every token; methods switch off media tokens from it."""
        return torch.ones(batch.input_ids.shape, dtype=torch.bool, device=batch.device)
