"""`stvp`: OmniSIFT's parameter-free spatio-temporal video pruning.

Per window, the first frame keeps its most *spatially* distinctive tokens (lowest cosine to the frame's
mean token) and every later frame keeps its most *changed* tokens (lowest cosine to the same (h, w) cell
of the previous, unpruned frame). Audio is either kept whole or thinned evenly in time (`audio_policy`).
The saliency functions live in `sift.saliency`, shared with the other methods and the learned selector,
whose video stage starts from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from sift.budget import audio_window_budgets, keep_count, split_row, video_frame_budgets
from sift.compressors.base import CompressionBatch, Compressor, Selection
from sift.compressors.registry import register
from sift.layout import RowLayout
from sift.picks import top_positions, uniform_pick
from sift.saliency import frame_saliency

__all__ = ["STVP"]


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
