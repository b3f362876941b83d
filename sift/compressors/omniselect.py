"""`omniselect`: query-aware modality allocation (OmniSelect), training-free.

Per batch row:

1. **The question.** The question tokens are the row's real (attention-mask 1) tokens that come after its
   last media segment and before the first end-of-turn token (`eos_token_id`, `<|im_end|>` in Qwen's
   template) that follows that segment, minus special tokens: every id at or above the smallest special id
   the model config names (pad/bos/eos, the audio/video/image placeholders, audio/vision bos/eos) is
   excluded. Qwen's tokenizer (and `sift.testbed.tiny`'s) puts all special tokens, chat-template markers included,
   at or above `<|endoftext|>`, so for `<|vision_eos|>What is said?<|im_end|>\\n<|im_start|>assistant\\n`
   the question is exactly `What is said?` (the generation prompt is not part of it). The ids are read
   from the model in `attach` (or `configure(config)` for direct use).

2. **Relevance.** `relevance(batch, b)` returns per-window (audio relevance, video relevance), two 1-D
   tensors of `len(row.windows)`; entries of windows without tokens of that modality are ignored. The
   default (`embedding_relevance`) scores in the LLM's own input space: for each window,
   `mean over question tokens q of max over the window's audio (video) tokens t of cos(e_q, e_t)`, where
   `e` are the embeddings the language model receives (token embeddings for text, projected encoder
   outputs for media). The reference scores nouns/adjectives of the question (NLTK POS tags) with
   AudioCLIP's text encoder against one AudioCLIP audio embedding per slice and one image embedding per
   frame, in a space trained contrastively for text-audio and text-image matching, with learned logit
   scales. Here no keyword filter is applied (all ordinary question tokens count), the text side is
   context-free vocabulary embeddings, the media side is per token (max over the window's tokens, not one
   pooled vector), and the two modalities' cosines are not calibrated against each other. AudioCLIP
   weights cannot be loaded here; plug any scorer in through `relevance`.

3. **Decision** (recorded in `self.last_decisions`, one entry per row): with no question tokens ->
   `"uniform"`; with only one modality in the row -> that modality (`"video"` / `"audio"`); otherwise with
   `ma`, `mv` the mean audio and video relevance over the windows holding that modality,
   `|ma - mv| < margin` (or a non-finite mean) -> `"uniform"`, else the larger one leads (`"audio"` or
   `"video"`). Rows without audio/video tokens record `"none"`. The reference compares AudioCLIP
   logits (x100 scale) with `theta = 3.7`; the default `margin = 0.04` is that threshold in cosine units.

4. **Modality split** (`sift.budget.split_modalities`, exact: audio kept + video kept =
   `keep_count(N_a + N_v, retention)`): `"uniform"` and `"audio"` -> audio keeps `audio_advantage` /
   `lead_advantage` more of its tokens (as a fraction) than video does (the reference code prunes 40% of
   audio and 60% of video in every mode: an advantage of 0.2); `"video"` -> video keeps `lead_advantage`
   more of its tokens than audio (the paper's "video-centric: more video retained, audio compressed";
   the reference code keeps its fixed 0.4/0.6 split there). Then the floors: every frame keeps a token
   and then every audio window keeps a token, while the row budget allows (video frames first).

5. **Temporal spread.** The leading modality's budget is spread over windows like the reference's
   `allocate_pruning_weights`: per window drop ratio `sigmoid(-zscore(relevance))` (z-score over the
   windows holding that modality, unbiased std; equal ratios when fewer than 2 such windows or std <
   1e-8), rescaled with `normalize_ratios` so the drops sum to the modality's budget, then turned into
   integers with `allocate` (per-frame floor rule). The other modality (both in `"uniform"`) is spread in
   proportion to window sizes.

6. **Inside a window.** Audio keeps its top-k tokens by audio-encoder attention saliency
   (`signals[AUDIO_SALIENCY]`, written by `sift.saliency.attach_audio_saliency`, which `attach`
   installs). Video keeps, per frame, the bottom-k tokens by mean self-similarity (each token's mean
   cosine to the other tokens of its frame: the least redundant survive). The reference scores video by
   dot products over a whole time group; here it is cosine within a frame.

Text, special and image tokens are never dropped.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch.utils.hooks import RemovableHandle

from sift.budget import allocate, normalize_ratios, split_modalities, video_frame_budgets
from sift.compressors.base import CompressionBatch, Compressor, Selection
from sift.compressors.registry import register
from sift.layout import RowLayout, Window
from sift.picks import top_positions
from sift.saliency import AUDIO_SALIENCY, attach_audio_saliency

__all__ = [
    "OmniSelect",
    "SpecialIds",
    "special_ids_from_config",
    "window_relevance",
    "self_similarity",
    "spread_keep_ratios",
    "DECISIONS",
]

#: Values of `OmniSelect.last_decisions`.
DECISIONS = ("uniform", "audio", "video", "none")


Relevance = Callable[[CompressionBatch, int], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class SpecialIds:
    """What OmniSelect needs to know about the vocabulary to find the question."""

    floor: int  # every id >= floor is a special token
    end_of_turn: tuple[int, ...]  # the question stops at the first of these after the last media segment


def special_ids_from_config(config: Any) -> SpecialIds:
    """Read the special-token ids of a Qwen2.5-Omni (thinker) config; see the module docstring for the rule."""
    cfg = getattr(config, "thinker_config", config)
    configs = [cfg]
    get_text = getattr(cfg, "get_text_config", None)
    if callable(get_text):
        configs.append(get_text())
    names = (
        "audio_token_id",
        "video_token_id",
        "image_token_id",
        "audio_start_token_id",
        "audio_end_token_id",
        "vision_start_token_id",
        "vision_end_token_id",
        "pad_token_id",
        "bos_token_id",
        "eos_token_id",
    )
    ids: list[int] = []
    eos: list[int] = []
    for c in configs:
        for name in names:
            value = getattr(c, name, None)
            values = value if isinstance(value, (list, tuple)) else [value]
            for v in values:
                if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
                    ids.append(v)
                    if name == "eos_token_id":
                        eos.append(v)
    media = [getattr(cfg, n, None) for n in ("audio_token_id", "video_token_id")]
    if not ids or any(m is None for m in media):
        raise ValueError("omniselect: the config names no audio/video token ids; is it a Qwen2.5-Omni config?")
    return SpecialIds(floor=min(ids), end_of_turn=tuple(sorted(set(eos))))


def window_relevance(
    embeds: torch.Tensor, question: torch.Tensor, windows: list[Window]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Default relevance of each window to the question, in the LLM-input embedding space.

    Args:
        embeds: (L, D) LLM-input embeddings of one row.
        question: (q,) sequence positions of the question tokens.
        windows: the row's windows.

    Returns:
        (audio, video) float32 (n_windows,) on the CPU: `mean_q max_t cos(e_q, e_t)` over the window's
        audio (video) tokens; NaN for a window without tokens of that modality or an empty question.
    """
    n = len(windows)
    audio = torch.full((n,), float("nan"))
    video = torch.full((n,), float("nan"))
    if question.numel() == 0 or n == 0:
        return audio, video
    q = F.normalize(embeds[question.to(embeds.device)].float(), dim=-1)  # (q, D)
    for i, w in enumerate(windows):
        for out, pos in ((audio, w.audio), (video, w.video)):
            if pos.numel() == 0:
                continue
            t = F.normalize(embeds[pos.to(embeds.device)].float(), dim=-1)  # (n_t, D)
            out[i] = (q @ t.T).amax(dim=1).mean().cpu()
    return audio, video


def self_similarity(tokens: torch.Tensor) -> torch.Tensor:
    """(n,) each token's mean cosine to the OTHER tokens of its frame (0 for a single token)."""
    n = tokens.shape[0]
    if n <= 1:
        return torch.zeros(n, device=tokens.device)
    x = F.normalize(tokens.float(), dim=-1)
    # sum_j x_i . x_j = x_i . (sum_j x_j): O(n d) instead of the n x n similarity matrix
    return (x @ x.sum(dim=0) - (x * x).sum(dim=-1)) / (n - 1)


def spread_keep_ratios(relevance: torch.Tensor, sizes: list[int], keep: int) -> list[float]:
    """Per-window keep ratios of the leading modality, from its windows' relevance.

    Drop ratio of window i proportional to `sigmoid(-zscore(relevance_i))` over the windows with tokens
    (size > 0), rescaled with `normalize_ratios` so that `sum(size_i * (1 - keep_ratio_i)) == sum(sizes) -
    keep`. Equal ratios when fewer than two windows hold tokens, the relevance is not finite or its std is
    below 1e-8. Windows without tokens get 0.
    """
    rel = relevance.detach().float().cpu().reshape(-1)
    if rel.numel() != len(sizes):
        raise ValueError(f"omniselect: {rel.numel()} relevance values for {len(sizes)} windows")
    idx = [i for i, s in enumerate(sizes) if s > 0]
    out = [0.0] * len(sizes)
    if not idx:
        return out
    scores = rel[idx]
    if len(idx) < 2 or not bool(torch.isfinite(scores).all()) or float(scores.std()) < 1e-8:
        base = [1.0] * len(idx)
    else:
        z = (scores - scores.mean()) / (scores.std() + 1e-8)
        base = torch.sigmoid(-z).tolist()
    sub_sizes = [sizes[i] for i in idx]
    drop = normalize_ratios(base, sub_sizes, float(sum(sub_sizes) - keep))
    for i, d in zip(idx, drop):
        out[i] = 1.0 - d
    return out


@register("omniselect")
@dataclass
class OmniSelect(Compressor):
    """Query-aware audio/video allocation: decide the leading modality, spread its budget by relevance.

    Args:
        retention: fraction of each row's audio+video tokens kept (exact per row).
        relevance: `(batch, row) -> (audio_relevance, video_relevance)` per window; None = the default
            LLM-embedding scorer (`embedding_relevance`). Custom scorers may call `question_positions`.
        margin: mean-relevance gap below which the row is pruned uniformly.
        audio_advantage: in `"uniform"` rows, how much more of its tokens audio keeps than video (fraction).
        lead_advantage: in `"audio"` / `"video"` rows, how much more of its tokens the leading modality keeps.
    """

    name: ClassVar[str] = "omniselect"
    relevance: Relevance | None = None
    margin: float = 0.04
    audio_advantage: float = 0.2
    lead_advantage: float = 0.2
    last_decisions: list[str] = field(default_factory=list, init=False, repr=False, compare=False)
    last_relevance: list[tuple[torch.Tensor, torch.Tensor] | None] = field(
        default_factory=list, init=False, repr=False, compare=False
    )
    _special: SpecialIds | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.relevance is not None and not callable(self.relevance):
            raise TypeError(
                f"omniselect: relevance must be a callable (batch, row) -> (audio, video), got {self.relevance!r}"
            )
        if not (isinstance(self.margin, (int, float)) and self.margin >= 0 and math.isfinite(self.margin)):
            raise ValueError(f"omniselect: margin must be a finite number >= 0, got {self.margin!r}")
        for name in ("audio_advantage", "lead_advantage"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 <= value < 1.0):
                raise ValueError(f"omniselect: {name} must be in [0, 1), got {value!r}")

    # ------------------------------------------------------------------ model side
    def configure(self, config: Any) -> "OmniSelect":
        """Read the special-token ids from a thinker config (done by `attach`; call it for direct `select` use)."""
        self._special = special_ids_from_config(config)
        return self

    def attach(self, thinker: torch.nn.Module, signals: dict[str, Any]) -> list[RemovableHandle]:
        self.configure(thinker.config)
        return attach_audio_saliency(thinker, signals)

    # ------------------------------------------------------------------ question and relevance
    def question_positions(self, batch: CompressionBatch, b: int) -> torch.Tensor:
        """Sequence positions (CPU, long) of row `b`'s question tokens (rule in the module docstring)."""
        if self._special is None:
            raise RuntimeError(
                "omniselect needs the model's special-token ids to find the question: use it inside "
                "sift.compress (attach reads them) or call configure(thinker.config) first"
            )
        row = batch.layout.rows[b]
        if not row.segments:
            return torch.empty(0, dtype=torch.long)
        start = row.segments[-1].end
        valid = batch.attention_mask[b, start:].detach().bool().cpu()
        pos = torch.arange(start, batch.input_ids.shape[1])[valid]
        ids = batch.input_ids[b].detach().cpu()[pos]
        if self._special.end_of_turn:
            ends = torch.nonzero(torch.isin(ids, torch.tensor(self._special.end_of_turn))).flatten()
            if ends.numel():
                pos, ids = pos[: int(ends[0])], ids[: int(ends[0])]
        return pos[ids < self._special.floor]

    def embedding_relevance(self, batch: CompressionBatch, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The default relevance: question-token vs window-token cosines in the LLM-input space."""
        question = self.question_positions(batch, b)
        return window_relevance(batch.embeds[b].detach(), question, batch.layout.rows[b].windows)

    def decide(self, batch: CompressionBatch, b: int) -> tuple[str, tuple[torch.Tensor, torch.Tensor] | None]:
        """The row's decision ("uniform" / "audio" / "video" / "none") and the relevance it was based on."""
        row = batch.layout.rows[b]
        if row.num_tokens == 0:
            return "none", None
        if self.question_positions(batch, b).numel() == 0:
            return "uniform", None
        scorer = self.relevance if self.relevance is not None else self.embedding_relevance
        rel_a, rel_v = scorer(batch, b)
        n = len(row.windows)
        rel_a = torch.as_tensor(rel_a).detach().float().cpu().reshape(-1)
        rel_v = torch.as_tensor(rel_v).detach().float().cpu().reshape(-1)
        if rel_a.numel() != n or rel_v.numel() != n:
            raise ValueError(
                f"omniselect: relevance must return two tensors of {n} values (one per window) for row {b}, "
                f"got {rel_a.numel()} and {rel_v.numel()}"
            )
        if row.num_audio == 0:
            return "video", (rel_a, rel_v)
        if row.num_video == 0:
            return "audio", (rel_a, rel_v)
        has_a = torch.tensor([w.num_audio > 0 for w in row.windows])
        has_v = torch.tensor([w.num_video > 0 for w in row.windows])
        mean_a, mean_v = float(rel_a[has_a].mean()), float(rel_v[has_v].mean())
        if not (math.isfinite(mean_a) and math.isfinite(mean_v)) or abs(mean_a - mean_v) < self.margin:
            return "uniform", (rel_a, rel_v)
        return ("audio" if mean_a > mean_v else "video"), (rel_a, rel_v)

    # ------------------------------------------------------------------ budgets
    def split(self, row: RowLayout, decision: str) -> tuple[int, int]:
        """(audio kept, video kept) of a row, exact, with the frame-then-audio-window floors."""
        n_a, n_v = row.num_audio, row.num_video
        if decision == "video":
            keep_v, keep_a = split_modalities(n_v, n_a, self.retention, self.lead_advantage)
        elif decision == "audio":
            keep_a, keep_v = split_modalities(n_a, n_v, self.retention, self.lead_advantage)
        else:
            keep_a, keep_v = split_modalities(n_a, n_v, self.retention, self.audio_advantage)
        total = keep_a + keep_v
        floor_v = min(sum(len(w.frames) for w in row.windows), total)
        if keep_v < floor_v:
            keep_v, keep_a = floor_v, total - floor_v
        floor_a = min(sum(1 for w in row.windows if w.num_audio), total - floor_v)
        if keep_a < floor_a:
            keep_a, keep_v = floor_a, total - floor_a
        return keep_a, keep_v

    # ------------------------------------------------------------------ selection
    def select(self, batch: CompressionBatch) -> Selection:
        if batch.config is not None:
            self.configure(batch.config)
        keep = self.keep_all(batch)
        media = batch.layout.media_mask(keep.device)
        decisions: list[str] = []
        relevances: list[tuple[torch.Tensor, torch.Tensor] | None] = []
        with torch.no_grad():
            for b, row in enumerate(batch.layout.rows):
                decision, rel = self.decide(batch, b)
                decisions.append(decision)
                relevances.append(rel)
                if decision == "none":
                    continue
                keep[b, media[b]] = False
                windows = row.windows
                keep_a, keep_v = self.split(row, decision)
                for pos in self._select_audio(batch, b, windows, keep_a, rel if decision == "audio" else None):
                    keep[b, pos.to(keep.device)] = True
                for pos in self._select_video(batch.embeds[b], windows, keep_v, rel if decision == "video" else None):
                    keep[b, pos.to(keep.device)] = True
        self.last_decisions = decisions
        self.last_relevance = relevances
        return Selection(keep=keep)

    def _select_audio(
        self,
        batch: CompressionBatch,
        b: int,
        windows: list[Window],
        keep_a: int,
        rel: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> list[torch.Tensor]:
        sizes = [w.num_audio for w in windows]
        n_a = sum(sizes)
        if n_a == 0:
            return []
        if keep_a >= n_a:
            return [w.audio for w in windows if w.num_audio]
        if rel is None:
            weights = [float(s) for s in sizes]
        else:
            ratios = spread_keep_ratios(rel[0], sizes, keep_a)
            weights = [s * r for s, r in zip(sizes, ratios)]
        counts = allocate(keep_a, weights, sizes)
        saliency = batch.signals.get(AUDIO_SALIENCY)
        if saliency is None:
            raise RuntimeError(
                f"omniselect must prune audio in row {b} but batch.signals[{AUDIO_SALIENCY!r}] is missing: run the "
                "model inside sift.compress (OmniSelect.attach installs sift.saliency.attach_audio_saliency) "
                "or fill it with one 1-D tensor per audio item"
            )
        out = []
        for w, k in zip(windows, counts):
            if k == 0 or w.num_audio == 0:
                continue
            if k >= w.num_audio:
                out.append(w.audio)
                continue
            if w.audio_item < 0 or w.audio_item >= len(saliency):
                raise RuntimeError(
                    f"omniselect: audio saliency has {len(saliency)} items but row {b} window {w.index} "
                    f"reads item {w.audio_item}"
                )
            scores = saliency[w.audio_item].reshape(-1)[w.audio_offset : w.audio_offset + w.num_audio]
            if scores.numel() != w.num_audio:
                raise RuntimeError(
                    f"omniselect: audio saliency of item {w.audio_item} has {saliency[w.audio_item].numel()} values; "
                    f"window {w.index} of row {b} needs tokens {w.audio_offset}..{w.audio_offset + w.num_audio - 1}"
                )
            out.append(top_positions(w.audio, scores, k))
        return out

    def _select_video(
        self,
        embeds: torch.Tensor,
        windows: list[Window],
        keep_v: int,
        rel: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> list[torch.Tensor]:
        sizes = [w.num_video for w in windows]
        n_v = sum(sizes)
        if n_v == 0:
            return []
        if keep_v >= n_v:
            return [w.video for w in windows if w.num_video]
        ratios = None if rel is None else spread_keep_ratios(rel[1], sizes, keep_v)
        out = []
        for w, counts in zip(windows, video_frame_budgets(windows, keep_v, ratios)):
            for frame, k in zip(w.frames, counts):
                if k == 0:
                    continue
                if k >= frame.num_tokens:
                    out.append(frame.positions)
                    continue
                redundancy = self_similarity(embeds[frame.positions.to(embeds.device)])
                out.append(top_positions(frame.positions, -redundancy, k))
        return out
