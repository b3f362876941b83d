"""`omnisift`: the learned OmniSIFT selector (learnable STVP, then VGAS) as a compressor.

Video first: each frame keeps its top tokens by STVP saliency (or, with the selector's
`video_base="spatial"`, spatial saliency alone; with "mixed", both standardised and summed) plus the
learned residual. Then audio: VGAS
scores each window's audio tokens against the window's KEPT video tokens, and keeps the top ones either
per audio clip (`audio_topk="clip"`, OmniZip's clip-level allocation, sift's default for the selectors it
trains) or per 2 s window (`audio_topk="chunk"`, the published OmniSIFT's rule).

The budget is either `retention` (exact over the row, split between audio and video by the selector's
`audio_advantage`) or the reference's prune ratios: each frame keeps `n - int(n * rho_video)` tokens and
each window `n - int(n * rho_audio)` audio tokens. A selector converted with `from_published` carries
the reference's rule and ratios (chunk, 0.3 / 0.7), used when neither is given. A selector with a learned
budget split (`budget_split="learned"`) then moves each window's retention budget between its audio and
its video (`sift.budget.shift_split`, by the selector's `BudgetSplit` offsets): totals stay exact, and an
untrained split is the fixed one.

In training mode (the selector in `.train()` and grad enabled) both top-k's are straight-through: the
selection carries gates whose value is exactly the keep decision and whose gradient flows through the
soft scores, and `Selection.scores` are the differentiable scores themselves (what a ranking loss such as
the training app's importance distillation trains). The plug-in multiplies the kept embeddings by the gates
(the published method's signal: kept tokens only) or, with `sift.compress(..., mode="mask")`, every
attention key (`sift.masked_attention`: dropped tokens get gradient too), so the LM loss trains the selector
while the decoder computes what it computes at inference.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch.utils.hooks import RemovableHandle

import math

from sift.budget import audio_clip_budgets, audio_window_budgets, shift_split, split_row, video_frame_budgets
from sift.compressors.base import CompressionBatch, Compressor, Selection, check_prune_ratios
from sift.compressors.registry import register
from sift.layout import RowLayout, Segment, same_cells
from sift.saliency import AUDIO_SALIENCY, attach_audio_saliency, mixed_saliency, spatial_saliency, temporal_saliency
from sift.selector import OmniSIFTSelector, gumbel_noise, soft_topk_gate

__all__ = ["OmniSIFT"]


@register("omnisift")
@dataclass
class OmniSIFT(Compressor):
    """OmniSIFT selection. `selector`: an `OmniSIFTSelector`, a checkpoint folder, or None for a fresh
    `init="omnizip"` selector sized from the model when `sift.compress` attaches it.

    A folder is loaded strictly (`OmniSIFTSelector.from_pretrained`): a missing one raises
    FileNotFoundError naming it, a folder that is not a selector's `save_pretrained` output ValueError."""

    name: ClassVar[str] = "omnisift"
    selector: OmniSIFTSelector | str | os.PathLike | None = None
    rho_audio: float | None = None
    rho_video: float | None = None
    audio_topk: Literal["clip", "chunk"] | None = None  # None: the selector config's rule
    #: draw each unit's keep set from Plackett-Luce(scores / T) instead of the top-k (Gumbel-top-k), with the
    #: same budgets: the rollouts of policy-gradient training (`train.policy`; in training mode the scores stay
    #: differentiable and no gates are made); None at inference
    sample_temperature: float | None = None
    #: with a learned budget split (`budget_split="learned"`): draw each window's audio-share offset from a
    #: normal distribution around the learned one with this standard deviation (policy rollouts; the
    #: selection's `log_prob` is the draw's, differentiable); None: the learned offset itself
    split_noise: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.selector, (str, os.PathLike)):
            self.selector = OmniSIFTSelector.from_pretrained(os.fspath(self.selector))
        elif self.selector is not None and not isinstance(self.selector, OmniSIFTSelector):
            raise TypeError(f"omnisift: selector must be an OmniSIFTSelector or a checkpoint folder, got {type(self.selector).__name__}")
        check_prune_ratios(self.name, self.retention, self.rho_audio, self.rho_video)
        if self.audio_topk not in (None, "clip", "chunk"):
            raise ValueError(f"omnisift: audio_topk must be 'clip' or 'chunk', got {self.audio_topk!r}")
        if self.sample_temperature is not None and not self.sample_temperature > 0:
            raise ValueError(f"omnisift: sample_temperature must be > 0 (or None: no sampling), got {self.sample_temperature}")
        if self.split_noise is not None and not self.split_noise > 0:
            raise ValueError(f"omnisift: split_noise must be > 0 (or None: no sampling), got {self.split_noise}")
        super().__post_init__()

    def needs_retention(self) -> bool:
        """Prune ratios, given or carried by the selector (published OmniSIFT), define the budget on their own."""
        return self.ratios() is None

    def ratios(self) -> tuple[float, float] | None:
        """(rho_audio, rho_video) in force when no retention is given, else None."""
        if self.rho_audio is not None:
            return self.rho_audio, self.rho_video
        cfg = getattr(self.selector, "config", None)
        if self.retention is None and cfg is not None and cfg.rho_audio is not None:
            return cfg.rho_audio, cfg.rho_video
        return None

    @property
    def audio_rule(self) -> str:
        if self.audio_topk is not None:
            return self.audio_topk
        return self.selector.config.audio_topk if self.selector is not None else "clip"

    def attach(self, thinker: torch.nn.Module, signals: dict[str, Any]) -> list[RemovableHandle]:
        if self.selector is None:
            self.selector = OmniSIFTSelector.from_config(thinker.config)
        self.selector.check_model(thinker.config)
        device = thinker.get_input_embeddings().weight.device
        if next(self.selector.parameters()).device != device:
            self.selector.to(device)
        if self.selector.config.audio_prior == "omnizip":
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
        # a sampled selection (policy rollouts) keeps differentiable scores but no gates: the model's forward on
        # it then builds no graph (the log-probability of the draw is taken from the scores alone)
        gated = training and self.sample_temperature is None
        gate = torch.ones(keep.shape, dtype=torch.float32, device=batch.device) if gated else None
        scores = torch.zeros(keep.shape, dtype=torch.float32, device=batch.device)
        log_probs = []
        with contextlib.nullcontext() if training else torch.no_grad():
            for b, row in enumerate(batch.layout.rows):
                log_probs.append(torch.zeros((), device=batch.device))
                if row.num_tokens == 0:
                    continue
                frame_budgets, audio_budgets = self._budgets(row)
                if self.selector.split is not None and self.ratios() is None:
                    log_probs[b] = self._learned_split(batch.embeds[b], row, frame_budgets, audio_budgets)
                if self.audio_rule == "clip":
                    audio_budgets = [[sum(k)] for k in audio_budgets]
                kept_video = self._video(batch, b, row, frame_budgets, keep, gate, scores, training)
                self._audio(batch, b, row, audio_budgets, kept_video, keep, gate, scores, training)
        log_prob = torch.stack(log_probs) if self.split_noise is not None and self.selector.split is not None else None
        return Selection(keep=keep, scores=scores, gate=gate, log_prob=log_prob)

    def _budgets(self, row: RowLayout) -> tuple[list[list[int]], list[list[int]]]:
        """Keep counts per (window, frame) and per (audio clip, window): from the ratios or from `retention`.

        Per window even under the clip rule (select sums a clip's windows): the learned split moves them."""
        ratios = self.ratios()
        clips = row.audio_clips
        if ratios is not None:
            rho_a, rho_v = ratios
            frames = [[f.num_tokens - int(f.num_tokens * rho_v) for f in w.frames] for w in row.windows]
            return frames, [[w.num_audio - int(w.num_audio * rho_a) for w in s.windows] for s in clips]
        keep_a, keep_v = split_row(row, self.retention, self.selector.config.audio_advantage)
        frames = video_frame_budgets(row.windows, keep_v)
        return frames, [audio_window_budgets(s.windows, k) for s, k in zip(clips, audio_clip_budgets(row, keep_a))]

    def _learned_split(self, emb: torch.Tensor, row: RowLayout, frames: list[list[int]], audio: list[list[int]]) -> torch.Tensor:
        """Move each window's budget between its audio and video by the selector's offsets, in place; returns
        the log-probability of the drawn offsets (0 without `split_noise`)."""
        where = {id(w): (c, j) for c, s in enumerate(row.audio_clips) for j, w in enumerate(s.windows)}
        units = [(i, w, *where[id(w)]) for i, w in enumerate(row.windows) if w.num_audio and w.frames and id(w) in where]
        if not units:
            return torch.zeros((), device=emb.device)
        dev = emb.device
        shares, fractions = [], []
        for i, w, c, j in units:
            total = audio[c][j] + sum(frames[i])
            shares.append(audio[c][j] / total if total else 0.0)
            fractions.append(total / w.num_tokens)
        offsets = self.selector.split_offsets(
            [emb[w.audio.to(dev)].float() for _, w, _, _ in units], [emb[w.video.to(dev)].float() for _, w, _, _ in units],
            shares, fractions,
        )
        drawn, log_prob = offsets, torch.zeros((), device=dev)
        if self.split_noise is not None:
            drawn = (offsets + torch.randn_like(offsets) * self.split_noise).detach()
            sigma = self.split_noise
            log_prob = (-((drawn - offsets) ** 2) / (2 * sigma**2) - math.log(sigma) - 0.5 * math.log(2 * math.pi)).sum()
        for (i, w, c, j), offset in zip(units, drawn.tolist()):
            a, v = shift_split(
                audio[c][j], sum(frames[i]), offset,
                audio_cap=w.num_audio, video_cap=w.num_video, video_floor=len(w.frames),
            )
            audio[c][j] = a
            frames[i] = video_frame_budgets([w], v)[0]
        return log_prob

    def _gate(self, scores: torch.Tensor, k: int, training: bool) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.selector.config
        if self.sample_temperature is not None:  # a draw, not a straight-through top-k: the config's noise is not added
            return soft_topk_gate(scores.detach() + gumbel_noise(scores) * self.sample_temperature, k, cfg.ste_temperature)
        return soft_topk_gate(scores, k, cfg.ste_temperature, gumbel=cfg.gumbel and training)

    def _video(self, batch, b, row: RowLayout, frame_budgets, keep, gate, scores, training) -> dict[int, torch.Tensor]:
        """Select video per frame; returns the kept video positions of each window (by window id)."""
        emb = batch.embeds[b]
        dev = emb.device
        kept: dict[int, torch.Tensor] = {}
        video_base = self.selector.config.video_base
        for w, budgets in zip(row.windows, frame_budgets):
            previous = None
            parts = []
            for frame, k in zip(w.frames, budgets):
                pos = frame.positions.to(dev)
                tokens = emb[pos].float()
                spatial = spatial_saliency(tokens)
                aligned = same_cells(previous, frame)
                if aligned:
                    temporal = temporal_saliency(tokens, emb[previous.positions.to(dev)].float())
                else:
                    temporal = torch.zeros_like(spatial)
                base = spatial
                if aligned and video_base == "temporal":
                    base = temporal
                elif aligned and video_base == "mixed":
                    base = mixed_saliency(spatial, temporal)
                score = self.selector.video_scores(tokens, spatial, temporal, base)
                hard, g = self._gate(score, k, training)
                keep[b, pos[hard]] = True
                scores[b, pos] = score  # differentiable in training (ranking losses)
                if gate is not None:
                    gate[b, pos] = g
                parts.append(pos[hard])
                previous = frame
            kept[id(w)] = torch.cat(parts) if parts else torch.empty(0, dtype=torch.long, device=dev)
        return kept

    def _audio(self, batch, b, row: RowLayout, audio_budgets, kept_video, keep, gate, scores, training) -> None:
        """Top-k of each clip's VGAS logits, over the clip (one budget) or per window (one budget each)."""
        for segment, budgets in zip(row.audio_clips, audio_budgets):
            positions, logits = self._clip_logits(batch, b, segment, kept_video)
            if len(budgets) == 1:
                sizes = [positions.numel()]
            else:  # per window: _clip_logits concatenates the windows that hold audio, in order
                pairs = [(w.num_audio, k) for w, k in zip(segment.windows, budgets) if w.num_audio]
                sizes, budgets = [n for n, _ in pairs], [k for _, k in pairs]
            for pos, lg, k in zip(positions.split(sizes), logits.split(sizes), budgets):
                hard, g = self._gate(lg, k, training)
                keep[b, pos[hard]] = True
                scores[b, pos] = lg
                if gate is not None:
                    gate[b, pos] = g

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
            table = batch.signals.get(AUDIO_SALIENCY)
            if table is None:
                raise RuntimeError("omnisift: the OmniZip audio prior needs audio saliency; run inside sift.compress")
            values = table[segment.audio_item].to(dev)
            prior = torch.ones(len(windows), n_a, device=dev)
            for i, w in enumerate(windows):
                prior[i, : w.num_audio] = values[w.audio_offset : w.audio_offset + w.num_audio]
        logits = self.selector.audio_logits(audio, video, audio_mask, video_mask, prior)
        positions = torch.cat([w.audio.to(dev) for w in windows])
        return positions, logits[audio_mask]
