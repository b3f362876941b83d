"""`stvp`: OmniSIFT's parameter-free spatio-temporal video pruning.

Per window, the first frame keeps its most *spatially* distinctive tokens (lowest cosine to the frame's
mean token) and every later frame keeps its most *changed* tokens (lowest cosine to the same (h, w) cell
of the previous, unpruned frame). Audio is either kept whole or thinned evenly in time (`audio_policy`).
The saliency functions are shared with the learned selector, whose video stage starts from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F

from sift.budget import allocate, keep_count, split_row
from sift.compressors.base import CompressionBatch, Compressor, Selection
from sift.compressors.registry import register
from sift.layout import Frame, RowLayout, Window

__all__ = [
    "STVP",
    "spatial_saliency",
    "temporal_saliency",
    "frame_saliency",
    "uniform_pick",
    "top_positions",
    "video_frame_budgets",
    "audio_window_budgets",
]


def spatial_saliency(tokens: torch.Tensor) -> torch.Tensor:
    """1 - cos(token, mean token of its frame): high for tokens unlike the rest of the frame."""
    mean = tokens.mean(dim=0, keepdim=True)
    return 1.0 - F.cosine_similarity(tokens.float(), mean.float(), dim=-1)


def temporal_saliency(tokens: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """1 - cos(token, same cell in the previous frame): high for tokens that changed."""
    return 1.0 - F.cosine_similarity(tokens.float(), previous.float(), dim=-1)


def frame_saliency(embeds: torch.Tensor, window: Window) -> list[torch.Tensor]:
    """STVP saliency of every frame of a window (embeds: (L, D) of one row).

    The first frame, and any frame whose cells do not line up with the previous one (a grid split across
    windows at fps < 1), get the spatial rule; the others the temporal rule against the previous frame.
    """
    scores = []
    previous: Frame | None = None
    for frame in window.frames:
        tokens = embeds[frame.positions.to(embeds.device)]
        if previous is not None and _aligned(previous, frame):
            scores.append(temporal_saliency(tokens, embeds[previous.positions.to(embeds.device)]))
        else:
            scores.append(spatial_saliency(tokens))
        previous = frame
    return scores


def _aligned(previous: Frame, frame: Frame) -> bool:
    return previous.hw.shape == frame.hw.shape and bool(torch.equal(previous.hw, frame.hw))


def uniform_pick(n: int, k: int) -> torch.Tensor:
    """k indices out of n, evenly spaced (centres of k equal slices)."""
    if k <= 0:
        return torch.empty(0, dtype=torch.long)
    return ((torch.arange(k, dtype=torch.float64) + 0.5) * n / k).floor().long().clamp_(max=n - 1)


def top_positions(positions: torch.Tensor, scores: torch.Tensor, k: int) -> torch.Tensor:
    """The `k` positions with the highest scores (ties: earlier position first)."""
    if k >= positions.numel():
        return positions
    order = torch.sort(scores.detach().float().cpu(), descending=True, stable=True).indices[:k]
    return positions[order]


def video_frame_budgets(windows: list[Window], keep_video: int, window_keep_ratio: list[float] | None = None) -> list[list[int]]:
    """Integer keep-count per frame, summing to `keep_video`, proportional to size x the window's keep ratio."""
    frames = [(wi, f) for wi, w in enumerate(windows) for f in w.frames]
    ratio = window_keep_ratio or [1.0] * len(windows)
    counts = allocate(keep_video, [f.num_tokens * ratio[wi] for wi, f in frames], [f.num_tokens for _, f in frames])
    out: list[list[int]] = [[] for _ in windows]
    for (wi, _), c in zip(frames, counts):
        out[wi].append(c)
    return out


def audio_window_budgets(windows: list[Window], keep_audio: int) -> list[int]:
    """Integer keep-count of audio per window, proportional to the window's audio tokens."""
    sizes = [w.num_audio for w in windows]
    return allocate(keep_audio, sizes, sizes)


@register("stvp")
@dataclass
class STVP(Compressor):
    """Spatio-temporal video pruning; audio kept (`audio_policy="none"`) or thinned evenly ("uniform")."""

    name: ClassVar[str] = "stvp"
    audio_policy: Literal["uniform", "none"] = "uniform"
    audio_advantage: float = 0.0  # with "uniform": audio keeps this much more of its tokens than video

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.audio_policy not in ("uniform", "none"):
            raise ValueError(f"stvp: audio_policy must be 'uniform' or 'none', got {self.audio_policy!r}")

    def select(self, batch: CompressionBatch) -> Selection:
        keep = self.keep_all(batch)
        with torch.no_grad():
            for b, row in enumerate(batch.layout.rows):
                if row.num_tokens == 0:
                    continue
                windows = row.windows
                keep[b, batch.layout.media_mask(keep.device)[b]] = False
                keep_a, keep_v = self._split(row)
                for w, k_audio in zip(windows, audio_window_budgets(windows, keep_a)):
                    keep[b, w.audio[uniform_pick(w.num_audio, k_audio)].to(keep.device)] = True
                for w, ks in zip(windows, video_frame_budgets(windows, keep_v)):
                    for frame, score, k in zip(w.frames, frame_saliency(batch.embeds[b], w), ks):
                        keep[b, top_positions(frame.positions, score, k).to(keep.device)] = True
        return Selection(keep=keep)

    def _split(self, row: RowLayout) -> tuple[int, int]:
        n_audio, n_video = row.num_audio, row.num_video
        if self.audio_policy == "uniform":
            return split_row(row, self.retention, self.audio_advantage)
        total = keep_count(n_audio + n_video, self.retention)
        if total < n_audio and n_video > 0:
            raise ValueError(
                f"stvp with audio_policy='none' keeps all {n_audio} audio tokens, more than the budget of {total} "
                f"at retention {self.retention}; use audio_policy='uniform' or a higher retention"
            )
        return min(total, n_audio), max(0, total - n_audio)
