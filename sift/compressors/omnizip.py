"""`omnizip`: OmniZip (audio-guided dynamic token compression), every stage of the paper.

1. Audio saliency: mean attention each audio token receives in the audio encoder's last layer, per
   attention block, pooled by 2 like the encoder (`sift.saliency`, hooked while the model runs).
2. Audio: the most salient tokens are kept; `contextual_ratio` of the audio becomes anchors sampled
   evenly from the rest; every other token joins its most similar anchor, and each anchor absorbs its
   top-`g` members (ranked by their best cosine to the window's video) with softmax weights:
   anchor <- (anchor + sum_i softmax(s)_i member_i) / 2. Members are dropped.
3. Each window's audio retention S_a drives its video prune ratio
   rho_v(i) = clip(rho_max - (rho_max - rho_min) * S_a(i), rho_min, rho_max), rescaled so that the
   dropped video tokens match the video budget exactly (no frozen windows, any window count).
4. ISTC per window: even frames keep DPC-KNN density peaks (k nearest neighbours, cosine distance),
   odd frames keep the tokens least similar to the same cell of the unpruned previous frame.

Differences from the reference code (KD-TAO/OmniZip), each deliberate: budgets are exact integers; the
audio top-k and anchors are taken per audio clip (segment) rather than over all audio of a batch; the
cross-modal score uses the member's own window's video (the paper's per-window description); a video
without audio falls back to video-only pruning (the reference crashes); batches of any size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch.utils.hooks import RemovableHandle

from sift.budget import audio_clip_budgets, keep_count, normalize_ratios, split_row, video_frame_budgets
from sift.compressors.base import CompressionBatch, Compressor, Selection, check_prune_ratios
from sift.compressors.registry import register
from sift.layout import RowLayout, Segment, same_cells
from sift.picks import top_positions
from sift.saliency import AUDIO_SALIENCY, attach_audio_saliency, temporal_saliency

__all__ = ["OmniZip", "dpc_knn_scores", "window_video_ratios", "merge_weights", "PRESETS"]

#: The paper's operating points: retention label -> (rho_audio, rho_video).
PRESETS = {"45%": (0.3, 0.6), "35%": (0.4, 0.7)}
#: rho_video - rho_audio in both presets: audio keeps this much more of its tokens than video.
PRESET_AUDIO_ADVANTAGE = 0.3


def dpc_knn_scores(tokens: torch.Tensor, k: int = 5) -> torch.Tensor:
    """DPC-KNN score rho * delta of each token (higher = a density peak worth keeping).

    Cosine distance d; rho_i = exp(-mean distance to the k nearest neighbours); delta_i = distance to the
    nearest token of strictly higher density, or the largest distance to any token for a peak.
    """
    n = tokens.shape[0]
    if n <= 1:
        return torch.ones(n, device=tokens.device)
    x = F.normalize(tokens.float(), dim=-1)
    dist = 1.0 - x @ x.T
    dist.fill_diagonal_(float("inf"))
    kk = min(k, n - 1)
    rho = torch.exp(-dist.topk(kk, dim=1, largest=False).values.mean(dim=1))
    higher = rho[None, :] > rho[:, None]  # [i, j]: j is denser than i
    delta = dist.masked_fill(~higher, float("inf")).min(dim=1).values
    peak = torch.isinf(delta)
    if bool(peak.any()):
        delta[peak] = dist.masked_fill(torch.isinf(dist), 0.0)[peak].max(dim=1).values
    return rho * delta


def window_video_ratios(
    audio_retention: list[float | None], sizes: list[int], drop_target: float, rho_min: float, rho_max: float
) -> list[float]:
    """Per-window video drop ratios from audio retention, rescaled so sum(ratio * size) == drop_target.

    Windows without audio (S_a undefined) start from the mean ratio of the others (or the midpoint).
    """
    base = [None if s is None else min(rho_max, max(rho_min, rho_max - (rho_max - rho_min) * s)) for s in audio_retention]
    known = [b for b in base if b is not None]
    fill = sum(known) / len(known) if known else (rho_min + rho_max) / 2
    return normalize_ratios([fill if b is None else b for b in base], sizes, drop_target)


def merge_weights(scores: torch.Tensor) -> torch.Tensor:
    """Softmax weights of the members merged into an anchor."""
    return torch.softmax(scores.float(), dim=0)


@register("omnizip")
@dataclass
class OmniZip(Compressor):
    """OmniZip. Budget from `retention` (presets' audio/video balance) or from explicit `rho_audio`/`rho_video`
    (then `retention` is None); one of the two is required."""

    name: ClassVar[str] = "omnizip"
    rho_audio: float | None = None
    rho_video: float | None = None
    g: int = 3
    contextual_ratio: float = 0.05
    rho_min: float = 0.35
    rho_max: float = 0.75
    k: int = 5
    merge: bool = True

    def __post_init__(self) -> None:
        """Options first, then the budget: a missing retention is only an error without rho_audio/rho_video."""
        check_prune_ratios(self.name, self.retention, self.rho_audio, self.rho_video)
        if not 0.0 <= self.rho_min <= self.rho_max <= 1.0:
            raise ValueError(f"omnizip: need 0 <= rho_min <= rho_max <= 1, got {self.rho_min}, {self.rho_max}")
        if not 0.0 <= self.contextual_ratio < 1.0 or self.g < 0 or self.k < 1:
            raise ValueError("omnizip: contextual_ratio must be in [0, 1), g >= 0 and k >= 1")
        super().__post_init__()

    def needs_retention(self) -> bool:
        """rho_audio/rho_video define the budget on their own (the paper's presets); retention then stays None."""
        return self.rho_audio is None

    @classmethod
    def preset(cls, label: str, **kwargs: Any) -> "OmniZip":
        """The paper's settings: `OmniZip.preset("45%")` is rho_audio 0.3, rho_video 0.6."""
        if label not in PRESETS:
            raise ValueError(f"omnizip: unknown preset {label!r}; choose from {sorted(PRESETS)}")
        rho_a, rho_v = PRESETS[label]
        return cls(rho_audio=rho_a, rho_video=rho_v, **kwargs)

    def attach(self, thinker: torch.nn.Module, signals: dict[str, Any]) -> list[RemovableHandle]:
        return attach_audio_saliency(thinker, signals)

    # ------------------------------------------------------------------ selection
    def select(self, batch: CompressionBatch) -> Selection:
        keep = self.keep_all(batch)
        media = batch.layout.media_mask(keep.device)
        keep &= ~media
        embeds = batch.embeds
        updates: list[tuple[int, int, torch.Tensor]] = []
        with torch.no_grad():
            for b, row in enumerate(batch.layout.rows):
                if row.num_tokens == 0:
                    continue
                keep_a, keep_v = self._budgets(row)
                window_kept_audio: dict[int, int] = {}
                for segment, k_seg in zip(row.audio_clips, audio_clip_budgets(row, keep_a)):
                    kept, merges = self._select_audio(batch, b, segment, k_seg)
                    keep[b, kept.to(keep.device)] = True
                    for w in segment.windows:
                        window_kept_audio[id(w)] = int(torch.isin(w.audio, kept).sum())
                    for anchor, members, weights in merges:
                        merged = (weights[:, None].to(embeds.dtype) * embeds[b, members]).sum(0)
                        updates.append((b, anchor, (embeds[b, anchor] + merged) / 2))
                self._select_video(batch, b, row, keep_v, window_kept_audio, keep)
        if not updates:
            return Selection(keep=keep)
        dev = embeds.device
        rows = torch.tensor([u[0] for u in updates], device=dev)
        positions = torch.tensor([u[1] for u in updates], device=dev)
        return Selection(keep=keep, updates=(rows, positions, torch.stack([u[2] for u in updates])))

    def _budgets(self, row: RowLayout) -> tuple[int, int]:
        n_a, n_v = row.num_audio, row.num_video
        if self.rho_audio is None:
            return split_row(row, self.retention, PRESET_AUDIO_ADVANTAGE)
        # explicit ratios, as in the reference: contextual anchors are kept on top of (1 - rho_a)
        sizes = [sum(w.num_audio for w in clip.windows) for clip in row.audio_clips]
        contextual = sum(round(self.contextual_ratio * n) for n in sizes)
        keep_a = min(n_a, keep_count(n_a, 1.0 - self.rho_audio) + contextual)
        return keep_a, keep_count(n_v, 1.0 - self.rho_video)

    def _select_audio(
        self, batch: CompressionBatch, b: int, segment: Segment, k_keep: int
    ) -> tuple[torch.Tensor, list[tuple[int, torch.Tensor, torch.Tensor]]]:
        """Kept audio positions of one clip, and the merges (anchor, members, weights) to apply."""
        positions = torch.cat([w.audio for w in segment.windows])
        n = positions.numel()
        if k_keep >= n:
            return positions, []
        saliency = self._saliency(batch, segment, n)
        n_anchor = min(k_keep, int(round(self.contextual_ratio * n))) if self.merge and self.g > 0 else 0
        dominant = torch.sort(saliency, descending=True, stable=True).indices[: k_keep - n_anchor]
        rest = torch.ones(n, dtype=torch.bool)
        rest[dominant] = False
        rest_idx = torch.nonzero(rest).squeeze(1)
        if n_anchor == 0 or rest_idx.numel() == 0:
            return positions[dominant.sort().values], []
        step = max(1, rest_idx.numel() // n_anchor)
        anchor_local = torch.arange(0, rest_idx.numel(), step)[:n_anchor]
        anchors = rest_idx[anchor_local]
        member_mask = torch.ones(rest_idx.numel(), dtype=torch.bool)
        member_mask[anchor_local] = False
        members = rest_idx[member_mask]
        kept_local = torch.cat([dominant, anchors]).sort().values
        if members.numel() == 0:
            return positions[kept_local], []

        dev = batch.embeds.device
        emb = batch.embeds[b]
        a_norm = F.normalize(emb[positions.to(dev)].float(), dim=-1)
        assign = (a_norm[members.to(dev)] @ a_norm[anchors.to(dev)].T).argmax(dim=1).cpu()
        scores = self._cross_modal_scores(emb, segment, positions, members, a_norm, anchors, assign)
        merges = []
        for c, anchor in enumerate(anchors.tolist()):
            mine = torch.nonzero(assign == c).squeeze(1)
            if mine.numel() == 0:
                continue
            top = torch.sort(scores[mine], descending=True, stable=True).indices[: self.g]
            chosen = members[mine[top]]
            merges.append((int(positions[anchor]), positions[chosen].to(dev), merge_weights(scores[mine[top]]).to(dev)))
        return positions[kept_local], merges

    def _saliency(self, batch: CompressionBatch, segment: Segment, n: int) -> torch.Tensor:
        table = batch.signals.get(AUDIO_SALIENCY)
        if table is None:
            raise RuntimeError(
                "omnizip needs the audio encoder's attention saliency; it is gathered by hooks that "
                "sift.compress installs (OmniZip.attach): run the model inside `with sift.compress(...)`"
            )
        first = segment.windows[0].audio_offset
        values = table[segment.audio_item][first : first + n].detach().float().cpu()
        if values.numel() != n:
            raise RuntimeError(f"audio saliency has {values.numel()} values for a clip of {n} audio tokens")
        return values

    @staticmethod
    def _cross_modal_scores(
        emb: torch.Tensor,
        segment: Segment,
        positions: torch.Tensor,
        members: torch.Tensor,
        a_norm: torch.Tensor,
        anchors: torch.Tensor,
        assign: torch.Tensor,
    ) -> torch.Tensor:
        """Each member's max cosine to its window's video tokens (to its anchor when the window has none)."""
        window_of = torch.cat([torch.full((w.num_audio,), i) for i, w in enumerate(segment.windows)])
        scores = torch.empty(members.numel())
        dev = emb.device
        for i, w in enumerate(segment.windows):
            sel = torch.nonzero(window_of[members] == i).squeeze(1)
            if sel.numel() == 0:
                continue
            m = a_norm[members[sel].to(dev)]
            if w.num_video:
                v = F.normalize(emb[w.video.to(dev)].float(), dim=-1)
                scores[sel] = (m @ v.T).max(dim=1).values.cpu()
            else:
                scores[sel] = (m * a_norm[anchors[assign[sel]].to(dev)]).sum(-1).cpu()
        return scores

    def _select_video(
        self,
        batch: CompressionBatch,
        b: int,
        row: RowLayout,
        keep_v: int,
        window_kept_audio: dict[int, int],
        keep: torch.Tensor,
    ) -> None:
        windows = [w for w in row.windows if w.num_video]
        if not windows:
            return
        sizes = [w.num_video for w in windows]
        retention = [window_kept_audio[id(w)] / w.num_audio if w.num_audio else None for w in windows]
        if all(r is None for r in retention):  # silent video: video-only pruning at the budget
            ratios = [1.0 - keep_v / sum(sizes)] * len(windows)
        else:
            ratios = window_video_ratios(retention, sizes, sum(sizes) - keep_v, self.rho_min, self.rho_max)
        emb = batch.embeds[b]
        dev = emb.device
        for w, counts in zip(windows, video_frame_budgets(windows, keep_v, [1.0 - r for r in ratios])):
            previous = None
            for t, (frame, k_frame) in enumerate(zip(w.frames, counts)):
                tokens = emb[frame.positions.to(dev)]
                if t % 2 == 1 and same_cells(previous, frame):
                    score = temporal_saliency(tokens, emb[previous.positions.to(dev)])
                else:
                    score = dpc_knn_scores(tokens, self.k)
                keep[b, top_positions(frame.positions, score, k_frame).to(keep.device)] = True
                previous = frame

