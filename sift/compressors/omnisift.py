"""`omnisift`: the learned OmniSIFT selector (learnable STVP, then VGAS) as a compressor.

Video first: each frame keeps its top tokens by STVP saliency plus the learned residual. Then audio: VGAS
scores each window's audio tokens against the window's KEPT video tokens, and each audio clip keeps its
top tokens (OmniZip's clip-level allocation). In training mode (the selector in `.train()` and grad
enabled) both top-k's are straight-through: the kept embeddings are multiplied by a gate whose value is
exactly 1 and whose gradient flows through the soft scores, so the LM loss trains the selector while the
decoder sees the same tokens as at inference.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch.utils.hooks import RemovableHandle

from sift.budget import allocate, split_row
from sift.compressors.base import CompressionBatch, Compressor, Selection
from sift.compressors.registry import register
from sift.compressors.stvp import _aligned, spatial_saliency, temporal_saliency, video_frame_budgets
from sift.layout import RowLayout, Segment
from sift.selector import OmniSIFTSelector, soft_topk_gate

__all__ = ["OmniSIFT"]


@register("omnisift")
@dataclass
class OmniSIFT(Compressor):
    """OmniSIFT selection. `selector`: an `OmniSIFTSelector`, a checkpoint folder, or None for a fresh
    `init="omnizip"` selector sized from the model when `sift.compress` attaches it."""

    name: ClassVar[str] = "omnisift"
    selector: OmniSIFTSelector | str | os.PathLike | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.selector, (str, os.PathLike)):
            self.selector = OmniSIFTSelector.from_pretrained(os.fspath(self.selector))
        elif self.selector is not None and not isinstance(self.selector, OmniSIFTSelector):
            raise TypeError(f"omnisift: selector must be an OmniSIFTSelector or a checkpoint folder, got {type(self.selector).__name__}")

    def attach(self, thinker: torch.nn.Module, signals: dict[str, Any]) -> list[RemovableHandle]:
        hidden = thinker.config.get_text_config().hidden_size
        if self.selector is None:
            self.selector = OmniSIFTSelector.from_config(thinker.config)
        self.selector.check_hidden_size(hidden)
        device = thinker.get_input_embeddings().weight.device
        if next(self.selector.parameters()).device != device:
            self.selector.to(device)
        if self.selector.config.audio_prior == "omnizip":
            from sift.saliency import attach_audio_saliency

            return attach_audio_saliency(thinker, signals)
        return []

    @property
    def training(self) -> bool:
        return self.selector is not None and self.selector.training and torch.is_grad_enabled()

    def select(self, batch: CompressionBatch) -> Selection:
        if self.selector is None:
            raise RuntimeError("omnisift: no selector; pass selector=... or use it inside sift.compress")
        self.selector.check_hidden_size(batch.embeds.shape[-1])
        training = self.training
        keep = self.keep_all(batch) & ~batch.layout.media_mask(batch.device)
        gate = torch.ones(keep.shape, dtype=torch.float32, device=batch.device) if training else None
        scores = torch.zeros(keep.shape, dtype=torch.float32, device=batch.device)
        with contextlib.nullcontext() if training else torch.no_grad():
            for b, row in enumerate(batch.layout.rows):
                if row.num_tokens == 0:
                    continue
                keep_a, keep_v = split_row(row, self.retention, self.selector.config.audio_advantage)
                kept_video = self._video(batch, b, row, keep_v, keep, gate, scores, training)
                self._audio(batch, b, row, keep_a, kept_video, keep, gate, scores, training)
        embeds = None
        if training:
            embeds = batch.embeds * gate[..., None].to(batch.embeds.dtype)
        return Selection(keep=keep, embeds=embeds, scores=scores)

    def _gate(self, scores: torch.Tensor, k: int, training: bool) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.selector.config
        return soft_topk_gate(scores, k, cfg.ste_temperature, gumbel=cfg.gumbel and training)

    def _video(self, batch, b, row: RowLayout, keep_v, keep, gate, scores, training) -> dict[int, torch.Tensor]:
        """Select video per frame; returns the kept video positions of each window (by window id)."""
        emb = batch.embeds[b]
        dev = emb.device
        kept: dict[int, torch.Tensor] = {}
        for w, budgets in zip(row.windows, video_frame_budgets(row.windows, keep_v)):
            previous = None
            parts = []
            for frame, k in zip(w.frames, budgets):
                pos = frame.positions.to(dev)
                tokens = emb[pos].float()
                spatial = spatial_saliency(tokens)
                if previous is not None and _aligned(previous, frame):
                    temporal = temporal_saliency(tokens, emb[previous.positions.to(dev)].float())
                    base = temporal
                else:
                    temporal = torch.zeros_like(spatial)
                    base = spatial
                score = self.selector.video_scores(tokens, spatial, temporal, base)
                hard, g = self._gate(score, k, training)
                keep[b, pos[hard]] = True
                scores[b, pos] = score.detach()
                if gate is not None:
                    gate[b, pos] = g
                parts.append(pos[hard])
                previous = frame
            kept[id(w)] = torch.cat(parts) if parts else torch.empty(0, dtype=torch.long, device=dev)
        return kept

    def _audio(self, batch, b, row: RowLayout, keep_a, kept_video, keep, gate, scores, training) -> None:
        segments = [s for s in row.segments if s.audio_item >= 0]
        sizes = [sum(w.num_audio for w in s.windows) for s in segments]
        for segment, k_seg in zip(segments, allocate(keep_a, sizes, sizes)):
            positions, logits = self._clip_logits(batch, b, segment, kept_video)
            hard, g = self._gate(logits, k_seg, training)
            keep[b, positions[hard]] = True
            scores[b, positions] = logits.detach()
            if gate is not None:
                gate[b, positions] = g

    def _clip_logits(self, batch, b, segment: Segment, kept_video) -> tuple[torch.Tensor, torch.Tensor]:
        """VGAS logits of one audio clip's tokens, windows batched with padding."""
        emb = batch.embeds[b]
        dev = emb.device
        windows = [w for w in segment.windows if w.num_audio]
        n_a = max(w.num_audio for w in windows)
        n_v = max((kept_video[id(w)].numel() for w in windows), default=0)
        D = emb.shape[-1]
        audio = emb.new_zeros(len(windows), n_a, D)
        video = emb.new_zeros(len(windows), n_v, D)
        audio_mask = torch.zeros(len(windows), n_a, dtype=torch.bool, device=dev)
        video_mask = torch.zeros(len(windows), n_v, dtype=torch.bool, device=dev)
        for i, w in enumerate(windows):
            audio[i, : w.num_audio] = emb[w.audio.to(dev)]
            audio_mask[i, : w.num_audio] = True
            v = kept_video[id(w)]
            video[i, : v.numel()] = emb[v]
            video_mask[i, : v.numel()] = True
        prior = None
        if self.selector.config.audio_prior == "omnizip":
            table = batch.signals.get("audio_saliency")
            if table is None:
                raise RuntimeError("omnisift: the OmniZip audio prior needs audio saliency; run inside sift.compress")
            values = table[segment.audio_item].to(dev)
            prior = torch.ones(len(windows), n_a, device=dev)
            for i, w in enumerate(windows):
                prior[i, : w.num_audio] = values[w.audio_offset : w.audio_offset + w.num_audio]
        logits = self.selector.audio_logits(audio, video, audio_mask, video_mask, prior)
        positions = torch.cat([w.audio.to(dev) for w in windows])
        return positions, logits[audio_mask]
