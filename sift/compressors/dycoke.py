"""`dycoke`: DyCoke's temporal token merging (TTM), applied to video and to audio ("DyCoke (V&A)").

DyCoke (Tao et al., CVPR 2025, github.com/KD-TAO/DyCoke, `dycole_ttm`) cuts a video's frames into groups
of 4. In each group the first frame is the reference and is kept whole; every other frame keeps only its
tokens LEAST similar (cosine) to the same (h, w) cell of the frame it is paired with, the others being
redundant with that frame. The reference code pairs them in two passes:

- pass 1, adjacent pairs (0, 1), (2, 3): frame 1 is compared with frame 0, frame 3 with frame 2;
- pass 2, (0, 2) inside each group of 4: frame 2 is compared with frame 0 (this overwrites frame 2's
  pass-1 role as a kept-whole reference).

So in a group [f0, f1, f2, f3]: f0 whole, f1 vs f0, f2 vs f0, f3 vs f2 (the full f2, not its pruned
survivors). For another `group_size` G the same two passes give: offset j = 0 is the reference, an odd j
is compared with j - 1, an even j > 0 with the group's first frame.

Here a video "frame" is one temporal grid of the video (2 raw frames, 1 s at Qwen2.5-Omni's 2 fps), taken
from the layout (a grid that `get_rope_index` split across two windows at fps < 1 is put back together),
and groups run over the whole video, across windows. Audio gets the same TTM: each audio item is cut
into 1-second "frames" of `audio_frame_tokens` (25) tokens, the last one possibly shorter, and token k of
a frame is compared with token k of its paired frame (audio tokens of one second line up by offset).

Differences from the reference code, all deliberate:

- Budgets are exact instead of `int(ratio * tokens_per_frame)` per frame: per row, audio kept + video
  kept == `keep_count(N_audio + N_video, retention)` (split by `split_row`). In each modality the
  reference frames stay whole while the budget allows and the rest goes to the other frames in proportion
  to their size (`allocate`, at least one token per frame while the budget allows). When the budget is
  smaller than the reference frames alone, only reference frames keep tokens, split by `allocate` in
  proportion to their size, each keeping its most spatially distinctive tokens (`spatial_saliency`).
- Not a difference: pass 1 picks frame i+1's tokens with its own pair's similarities
  (`similarities[i // 2]`), as the reference's HEAD does (only its first commit indexed the previous
  pair, `[(i - 2) // 2]`).
- The reference leaves the last group's frame 2 whole (`range(0, num_frames - 4, 4)` skips it) and
  drops a trailing odd frame entirely; here every group, including a trailing partial one, follows the
  same rule.
- Only TTM is implemented; DyCoke's second stage (dynamic KV-cache pruning during decoding) is not. Like
  the reference, "merging" drops the redundant tokens and leaves the survivors' embeddings unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from sift.budget import allocate, split_row
from sift.compressors.base import CompressionBatch, Compressor, Selection
from sift.compressors.registry import register
from sift.layout import RowLayout, Segment
from sift.picks import top_positions
from sift.saliency import spatial_saliency, temporal_saliency

__all__ = ["DyCoke", "TTMFrame", "ttm_reference", "video_ttm_frames", "audio_ttm_frames", "ttm_keep"]


@dataclass(frozen=True)
class TTMFrame:
    """One frame of DyCoke's temporal token merging: a video temporal grid or one second of an audio item."""

    positions: torch.Tensor  # (n,) sequence indices of the frame's tokens
    keys: torch.Tensor  # (n,) alignment key: (h, w) cell as h * W + w (video), offset in the second (audio)
    reference: int  # index, in the same frame list, of the frame it is compared with; -1 for a reference

    @property
    def num_tokens(self) -> int:
        return int(self.positions.numel())

    @property
    def is_reference(self) -> bool:
        return self.reference < 0


def ttm_reference(index: int, group_size: int = 4) -> int:
    """Index (within its item) of the frame that frame `index` is compared with; -1 for a group's first frame.

    DyCoke's pairing: groups of `group_size`; offset 0 is the reference, an odd offset j is compared with
    j - 1, an even offset j > 0 with the group's first frame. Groups of 4: 1 -> 0, 2 -> 0, 3 -> 2.
    """
    start, j = index - index % group_size, index % group_size
    if j == 0:
        return -1
    return index - 1 if j % 2 else start


def _with_references(parts: list[tuple[torch.Tensor, torch.Tensor]], base: int, group_size: int) -> list[TTMFrame]:
    """Frames of one media item (in temporal order), their references offset by `base` in the row's list."""
    out = []
    for i, (positions, keys) in enumerate(parts):
        ref = ttm_reference(i, group_size)
        out.append(TTMFrame(positions=positions, keys=keys, reference=-1 if ref < 0 else base + ref))
    return out


def video_ttm_frames(segment: Segment, base: int = 0, group_size: int = 4) -> list[TTMFrame]:
    """The temporal grids of a segment's video, whole (parts split across windows joined), with DyCoke's pairing."""
    by_t: dict[int, list] = {}
    for window in segment.windows:
        for frame in window.frames:
            by_t.setdefault(frame.t, []).append(frame)
    parts = []
    for t in sorted(by_t):
        pieces = by_t[t]
        width = pieces[0].grid[1]
        hw = torch.cat([f.hw for f in pieces])
        parts.append((torch.cat([f.positions for f in pieces]), hw[:, 0] * width + hw[:, 1]))
    return _with_references(parts, base, group_size)


def audio_ttm_frames(segment: Segment, base: int = 0, group_size: int = 4, frame_tokens: int = 25) -> list[TTMFrame]:
    """A segment's audio item cut into `frame_tokens`-token frames (1 s), keyed by offset within the frame."""
    windows = [w for w in segment.windows if w.num_audio]
    if not windows:
        return []
    positions = torch.cat([w.audio for w in windows])
    offsets = torch.cat([w.audio_offset + torch.arange(w.num_audio) for w in windows])
    index = torch.div(offsets, frame_tokens, rounding_mode="floor")
    parts = []
    for i in torch.unique(index).tolist():  # sorted
        sel = index == i
        parts.append((positions[sel], offsets[sel] - i * frame_tokens))
    return _with_references(parts, base, group_size)


def _row_frames(row: RowLayout, group_size: int, frame_tokens: int) -> tuple[list[TTMFrame], list[TTMFrame]]:
    video: list[TTMFrame] = []
    audio: list[TTMFrame] = []
    for segment in row.segments:
        if segment.video_item >= 0:
            video += video_ttm_frames(segment, base=len(video), group_size=group_size)
        if segment.audio_item >= 0:
            audio += audio_ttm_frames(segment, base=len(audio), group_size=group_size, frame_tokens=frame_tokens)
    return video, audio


def _redundancy_scores(embeds: torch.Tensor, frame: TTMFrame, reference: TTMFrame) -> torch.Tensor:
    """1 - cos(token, the same cell / offset of the reference frame); 2 (maximal) where the reference lacks it."""
    device = embeds.device
    tokens = embeds[frame.positions.to(device)].float()
    size = int(max(frame.keys.max(), reference.keys.max())) + 1
    aligned = torch.zeros(size, tokens.shape[-1], dtype=torch.float32, device=device)
    present = torch.zeros(size, dtype=torch.bool, device=device)
    ref_keys = reference.keys.to(device)
    aligned[ref_keys] = embeds[reference.positions.to(device)].float()
    present[ref_keys] = True
    keys = frame.keys.to(device)
    scores = temporal_saliency(tokens, aligned[keys])
    return torch.where(present[keys], scores, torch.full_like(scores, 2.0))


def ttm_keep(embeds: torch.Tensor, frames: list[TTMFrame], budget: int) -> list[torch.Tensor]:
    """Kept sequence positions of each frame, `budget` in all (clipped to the frames' tokens).

    embeds: (L, D) LLM-input embeddings of one row. Reference frames stay whole while the budget allows,
    the rest is allocated to the other frames in proportion to their size and each keeps its least
    redundant tokens; below the reference frames' size only reference frames keep tokens (their most
    spatially distinctive ones).
    """
    if not frames:
        return []
    refs = [i for i, f in enumerate(frames) if f.is_reference]
    others = [i for i, f in enumerate(frames) if not f.is_reference]
    counts = [0] * len(frames)
    ref_total = sum(frames[i].num_tokens for i in refs)
    if budget >= ref_total:
        for i in refs:
            counts[i] = frames[i].num_tokens
        sizes = [frames[i].num_tokens for i in others]
        for i, c in zip(others, allocate(budget - ref_total, sizes, sizes)):
            counts[i] = c
    else:
        sizes = [frames[i].num_tokens for i in refs]
        for i, c in zip(refs, allocate(budget, sizes, sizes)):
            counts[i] = c
    kept = []
    for frame, k in zip(frames, counts):
        if k >= frame.num_tokens:
            kept.append(frame.positions)
            continue
        if k == 0:
            kept.append(frame.positions[:0])
            continue
        if frame.is_reference:
            scores = spatial_saliency(embeds[frame.positions.to(embeds.device)].float())
        else:
            scores = _redundancy_scores(embeds, frame, frames[frame.reference])
        kept.append(top_positions(frame.positions, scores, k))
    return kept


@register("dycoke")
@dataclass
class DyCoke(Compressor):
    """DyCoke's temporal token merging on video temporal grids and 1-second audio frames, exact budgets."""

    name: ClassVar[str] = "dycoke"
    group_size: int = 4  # frames per TTM group; the first of each group is the reference
    audio_frame_tokens: int = 25  # audio tokens per audio "frame": 1 s, the span of one video grid at 2 fps

    def __post_init__(self) -> None:
        super().__post_init__()
        for field_name in ("group_size", "audio_frame_tokens"):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"dycoke: {field_name} must be a positive integer, got {value!r}")

    def select(self, batch: CompressionBatch) -> Selection:
        keep = self.keep_all(batch)
        media = batch.layout.media_mask(keep.device)
        with torch.no_grad():
            for b, row in enumerate(batch.layout.rows):
                if row.num_tokens == 0:
                    continue
                keep[b, media[b]] = False
                keep_a, keep_v = split_row(row, self.retention)
                video, audio = _row_frames(row, self.group_size, self.audio_frame_tokens)
                for frames, budget in ((video, keep_v), (audio, keep_a)):
                    for positions in ttm_keep(batch.embeds[b], frames, budget):
                        keep[b, positions.to(keep.device)] = True
        return Selection(keep=keep)
