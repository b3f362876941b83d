"""The audio/video token layout of a Qwen2.5-Omni thinker input, cut into time windows.

This is the one data structure every compressor consumes: per batch row, the media segments (a video
with its audio track, a silent video, a standalone audio clip), each cut into windows of
`seconds_per_chunk` (2 s), and per window the sequence positions of its audio tokens and of its video
tokens grouped by temporal grid ("frame") with each token's (h, w) cell.

It is derived from `input_ids` with the same rules `get_rope_index` and the processor use to interleave
audio and video (`get_chunked_index`: a new chunk starts at the first token whose temporal position
reaches the next multiple of `position_id_per_seconds * seconds_per_chunk`), and the token pattern of
every segment is checked against those rules, so the layout and the model's 3D positions cannot
disagree silently. Images are left alone: they are not part of any window.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

__all__ = [
    "Frame",
    "Window",
    "Segment",
    "RowLayout",
    "TokenLayout",
    "build_layout",
    "LAYOUT_KEYS",
    "audio_tokens_from_features",
    "same_cells",
    "Interleaving",
    "QWEN25_INTERLEAVING",
    "grid_interleaving",
]

#: The thinker inputs besides `input_ids` that the layout is read from.
LAYOUT_KEYS = (
    "attention_mask",
    "video_grid_thw",
    "video_second_per_grid",
    "feature_attention_mask",
    "audio_feature_lengths",
    "use_audio_in_video",
)

SegmentKind = Literal["audio_in_video", "video", "audio"]


@dataclass(frozen=True, eq=False)  # identity semantics: fields hold tensors
class Frame:
    """One temporal grid (2 raw frames) of a video inside a window.

    At fps < 1 `get_rope_index` can split one grid across two windows; each window then holds a Frame with
    its part of the grid (same `t`, a subset of the cells).
    """

    positions: torch.Tensor  # (n,) sequence indices, row-major over (h, w)
    hw: torch.Tensor  # (n, 2) the (h, w) cell of each token on the merged grid
    t: int  # temporal grid index within its video
    grid: tuple[int, int]  # merged grid size (h, w)

    @property
    def num_tokens(self) -> int:
        return int(self.positions.numel())


def same_cells(previous: Frame | None, frame: Frame) -> bool:
    """Whether `frame` holds exactly the (h, w) cells of `previous`, so token i of one faces token i of the other.

    Temporal rules (change against the previous frame) need it; a grid split across windows at fps < 1, or
    the first frame (`previous` None), does not line up and gets a frame-local rule instead.
    """
    return previous is not None and previous.hw.shape == frame.hw.shape and bool(torch.equal(previous.hw, frame.hw))


@dataclass(frozen=True, eq=False)  # identity semantics: fields hold tensors
class Window:
    """One time window (2 s by default) of a media segment."""

    # Window index within its segment. Windows are get_rope_index's chunks: a new one starts at the first
    # token at or past the next multiple of 2 s, so window i covers [2i s, 2(i+1) s) whenever a video has
    # at least one temporal grid per 2 s (any fps >= 1); at lower fps the index counts chunks, not 2 s slots.
    index: int
    audio: torch.Tensor  # (n_a,) sequence indices of the window's audio tokens, in order
    frames: tuple[Frame, ...]  # the window's video frames, in temporal order
    audio_offset: int  # index of the window's first audio token within its audio item
    audio_item: int  # index of the audio item in the batch (row of `feature_attention_mask`), -1 if none
    video_item: int  # index of the video in the batch (row of `video_grid_thw`), -1 if none

    @property
    def video(self) -> torch.Tensor:
        """Sequence indices of all video tokens of the window, frame after frame."""
        if not self.frames:
            return self.audio.new_empty(0)
        return torch.cat([f.positions for f in self.frames])

    @property
    def num_audio(self) -> int:
        return int(self.audio.numel())

    @property
    def num_video(self) -> int:
        return sum(f.num_tokens for f in self.frames)

    @property
    def num_tokens(self) -> int:
        return self.num_audio + self.num_video


@dataclass(frozen=True, eq=False)  # identity semantics: fields hold tensors
class Segment:
    """A contiguous run of media tokens: a video with its audio, a silent video, or an audio clip."""

    kind: SegmentKind
    start: int  # sequence index of the first media token
    end: int  # one past the last media token
    windows: tuple[Window, ...]
    video_item: int = -1
    audio_item: int = -1


@dataclass
class RowLayout:
    """The media segments of one batch row."""

    segments: list[Segment]
    length: int  # number of non-padding tokens in the row

    @property
    def windows(self) -> list[Window]:
        return [w for s in self.segments for w in s.windows]

    @property
    def audio_clips(self) -> list[Segment]:
        """The segments that carry an audio item (a video's own audio, or an audio clip), in order."""
        return [s for s in self.segments if s.audio_item >= 0]

    @property
    def num_audio(self) -> int:
        return sum(w.num_audio for w in self.windows)

    @property
    def num_video(self) -> int:
        return sum(w.num_video for w in self.windows)

    @property
    def num_tokens(self) -> int:
        return self.num_audio + self.num_video

    def audio_positions(self) -> torch.Tensor:
        parts = [w.audio for w in self.windows]
        return torch.cat(parts) if parts else torch.empty(0, dtype=torch.long)

    def video_positions(self) -> torch.Tensor:
        parts = [w.video for w in self.windows]
        return torch.cat(parts) if parts else torch.empty(0, dtype=torch.long)


@dataclass
class TokenLayout:
    """Windows of every batch row of one thinker input."""

    rows: list[RowLayout]
    seq_len: int
    seconds_per_chunk: float = 2.0
    _masks: dict[str, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)

    @property
    def batch_size(self) -> int:
        return len(self.rows)

    @property
    def num_tokens(self) -> int:
        """Audio and video tokens in the whole batch."""
        return sum(r.num_tokens for r in self.rows)

    @property
    def is_empty(self) -> bool:
        return self.num_tokens == 0

    def _mask(self, kind: str) -> torch.Tensor:
        if kind not in self._masks:
            mask = torch.zeros(self.batch_size, self.seq_len, dtype=torch.bool)
            for b, row in enumerate(self.rows):
                if kind in ("audio", "media"):
                    mask[b, row.audio_positions()] = True
                if kind in ("video", "media"):
                    mask[b, row.video_positions()] = True
            self._masks[kind] = mask
        return self._masks[kind]

    def audio_mask(self, device: torch.device | str | None = None) -> torch.Tensor:
        """(B, L) bool: True at audio tokens."""
        return self._mask("audio").to(device or "cpu", copy=True)

    def video_mask(self, device: torch.device | str | None = None) -> torch.Tensor:
        """(B, L) bool: True at video tokens."""
        return self._mask("video").to(device or "cpu", copy=True)

    def media_mask(self, device: torch.device | str | None = None) -> torch.Tensor:
        """(B, L) bool: True at the tokens a compressor may drop (audio and video, never images or text)."""
        return self._mask("media").to(device or "cpu", copy=True)


def audio_tokens_from_features(feature_lengths: torch.Tensor) -> torch.Tensor:
    """Audio tokens the encoder emits for mel-feature lengths (conv stride 2, then avg-pool by 2)."""
    return ((feature_lengths - 1) // 2 + 1 - 2) // 2 + 1


def grid_interleaving(grid_t: int, tokens_per_grid: int, audio_tokens: int, grid_positions: float) -> torch.Tensor:
    """(n,) bool, True at audio tokens: Qwen3-Omni's order of a video's tokens and its audio track's.

    Grid ``t`` sits at temporal position ``t * grid_positions`` (``second_per_grid * position_id_per_seconds``)
    and precedes every audio token ``k >= t * grid_positions``; audio token ``k`` sits at position ``k``
    (the processor's `replace_video_with_audio_token` and the model's `get_rope_index` both merge this way).
    """
    order: list[bool] = []
    k = 0
    for t in range(grid_t):
        start = t * grid_positions
        while k < audio_tokens and k < start:
            order.append(True)
            k += 1
        order += [False] * tokens_per_grid
    order += [True] * (audio_tokens - k)
    return torch.tensor(order, dtype=torch.bool)


@dataclass(frozen=True)
class Interleaving:
    """How one model family lays a video's tokens out with its audio track, and counts its audio tokens.

    ``by_grid`` False (Qwen2.5-Omni): `get_rope_index`'s 2 s chunks, each chunk's video tokens then its audio
    tokens, a chunk opening at the first token at or past the next boundary (fps < 1 splits grids).
    ``by_grid`` True (Qwen3-Omni): :func:`grid_interleaving`; windows are then 2 s of media time, grid ``t``
    in window ``floor(t * second_per_grid * per_second / tokens_per_window)`` and audio token ``k`` in
    ``k // tokens_per_window``, so every method gets the same 2 s unit as on Qwen2.5-Omni.
    """

    name: str
    audio_tokens: Callable[[torch.Tensor, Any], torch.Tensor]  # (mel lengths, thinker config) -> LLM audio tokens
    by_grid: bool = False


#: Qwen2.5-Omni's rule (the default of :func:`build_layout`).
QWEN25_INTERLEAVING = Interleaving("qwen2.5-omni", lambda lengths, cfg: audio_tokens_from_features(lengths))


def _chunk_counts(values: list[int], tokens_per_value: int, tokens_per_chunk: int) -> list[int]:
    """Tokens per chunk under `get_chunked_index`'s rule, for runs of tokens sharing a temporal position.

    The rule walks tokens one by one and advances at most ONE chunk per token while the token's position
    is at or past the next chunk boundary, so at fps < 1 a single frame's tokens can span several chunks.
    """
    counts, chunk = [0], 0
    for v in values:
        advancing = min(tokens_per_value, max(0, v // tokens_per_chunk - chunk))
        for _ in range(advancing):  # each of these tokens opens the next chunk
            chunk += 1
            counts.append(1)
        counts[chunk] += tokens_per_value - advancing
    return counts


def _thinker_config(config: Any) -> Any:
    return getattr(config, "thinker_config", config)


def build_layout(
    input_ids: torch.Tensor,
    config: Any,
    *,
    attention_mask: torch.Tensor | None = None,
    video_grid_thw: torch.Tensor | None = None,
    video_second_per_grid: torch.Tensor | list[float] | None = None,
    feature_attention_mask: torch.Tensor | None = None,
    audio_feature_lengths: torch.Tensor | None = None,
    use_audio_in_video: bool | None = None,
    interleaving: Interleaving = QWEN25_INTERLEAVING,
) -> TokenLayout:
    """Parse a thinker input into its time windows.

    Args:
        input_ids: (B, L) token ids as produced by `Qwen2_5OmniProcessor` (left or right padded).
        config: a `Qwen2_5OmniThinkerConfig` (or a full `Qwen2_5OmniConfig`); token ids, spatial merge size,
            `position_id_per_seconds` and `seconds_per_chunk` are read from it.
        attention_mask: (B, L); padding (0) is skipped.
        video_grid_thw: (num_videos, 3) grids of all videos of the batch, in order of appearance.
        video_second_per_grid: seconds per temporal grid of each video.
        feature_attention_mask / audio_feature_lengths: audio mel lengths, used to check audio token counts.
        use_audio_in_video: the flag given to the model; checked against the token pattern when given.
        interleaving: the model family's rule (the model adapter passes its own; default Qwen2.5-Omni's).

    Raises:
        ValueError: when the tokens do not follow the layout the model's position rules assume
            (wrong counts, missing grids, a silent video under `use_audio_in_video=True`, ...).
    """
    cfg = _thinker_config(config)
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be (batch, seq_len), got shape {tuple(input_ids.shape)}")
    ids_cpu = input_ids.detach().cpu()
    valid = (
        torch.ones_like(ids_cpu, dtype=torch.bool) if attention_mask is None else attention_mask.detach().cpu() == 1
    )
    if valid.shape != ids_cpu.shape:
        raise ValueError(f"attention_mask shape {tuple(valid.shape)} != input_ids shape {tuple(ids_cpu.shape)}")
    media = _MediaInputs.read(cfg, video_grid_thw, video_second_per_grid, feature_attention_mask, audio_feature_lengths,
                              use_audio_in_video, interleaving)
    rows = [media.row(b, ids_cpu[b], valid[b]) for b in range(ids_cpu.shape[0])]
    media.check_all_used()
    return TokenLayout(rows=rows, seq_len=ids_cpu.shape[1], seconds_per_chunk=_seconds_per_window(cfg))


def _seconds_per_window(cfg: Any) -> float:
    """Qwen2.5-Omni's configs carry `seconds_per_chunk`; Qwen3-Omni's do not, and its processor uses 2 s."""
    return float(getattr(cfg, "seconds_per_chunk", 2.0))


@dataclass
class _MediaInputs:
    """The batch's media descriptions, consumed in order of appearance while the rows are read."""

    cfg: Any
    grids: torch.Tensor | None  # (num_videos, 3)
    spgs: torch.Tensor | None  # (num_videos,) seconds per temporal grid
    audio_counts: list[int] | None  # LLM audio tokens per audio item, from the mel lengths
    use_audio_in_video: bool | None
    interleaving: Interleaving
    video_idx: int = 0
    audio_idx: int = 0

    @classmethod
    def read(cls, cfg, video_grid_thw, video_second_per_grid, feature_attention_mask, audio_feature_lengths,
             use_audio_in_video, interleaving) -> _MediaInputs:
        grids = None if video_grid_thw is None else video_grid_thw.detach().cpu().long()
        if video_second_per_grid is not None and not torch.is_tensor(video_second_per_grid):
            video_second_per_grid = torch.tensor(video_second_per_grid)
        spgs = None if video_second_per_grid is None else video_second_per_grid.detach().cpu().float().reshape(-1)
        if grids is not None and spgs is not None and spgs.numel() != grids.shape[0]:
            raise ValueError(
                f"video_second_per_grid has {spgs.numel()} entries but video_grid_thw has {grids.shape[0]} videos"
            )
        if feature_attention_mask is not None:
            audio_feature_lengths = feature_attention_mask.sum(-1)
        audio_counts = None
        if audio_feature_lengths is not None:
            audio_counts = interleaving.audio_tokens(audio_feature_lengths.detach().cpu().long(), cfg).tolist()
        return cls(cfg, grids, spgs, audio_counts, use_audio_in_video, interleaving)

    def row(self, b: int, ids: torch.Tensor, valid: torch.Tensor) -> RowLayout:
        """The segments of row `b`: one per contiguous run of audio/video tokens."""
        pos = torch.nonzero(valid).squeeze(1)
        toks = ids[pos]
        is_audio = toks == self.cfg.audio_token_id
        is_media = (is_audio | (toks == self.cfg.video_token_id)).tolist()
        segments = [self._segment(b, pos[i:j], is_audio[i:j]) for i, j in _runs(is_media)]
        return RowLayout(segments=segments, length=int(pos.numel()))

    def _segment(self, b: int, run_pos: torch.Tensor, run_audio: torch.Tensor) -> Segment:
        has_a, has_v = bool(run_audio.any()), bool((~run_audio).any())
        self._check_run(b, run_audio, has_a, has_v)
        kind: SegmentKind = "audio_in_video" if (has_a and has_v) else ("video" if has_v else "audio")
        video_item, audio_item = (self.video_idx if has_v else -1), (self.audio_idx if has_a else -1)
        merge = self.cfg.vision_config.spatial_merge_size
        windows = _segment_windows(
            kind,
            run_pos,
            run_audio,
            grid=self.grids[self.video_idx].tolist() if has_v else None,
            second_per_grid=(self.spgs[self.video_idx] if self.spgs is not None else None) if has_v else None,
            merge=merge,
            per_second=self.cfg.position_id_per_seconds,
            tokens_per_chunk=int(self.cfg.position_id_per_seconds * _seconds_per_window(self.cfg)),
            by_grid=self.interleaving.by_grid,
            video_item=video_item,
            audio_item=audio_item,
            where=f"row {b}, {kind} segment at position {int(run_pos[0])}",
        )
        self.video_idx += int(has_v)
        self.audio_idx += int(has_a)
        return Segment(kind=kind, start=int(run_pos[0]), end=int(run_pos[-1]) + 1, windows=tuple(windows),
                       video_item=video_item, audio_item=audio_item)

    def _check_run(self, b: int, run_audio: torch.Tensor, has_a: bool, has_v: bool) -> None:
        """The run agrees with the grids, the audio lengths and the use_audio_in_video flag given."""
        video_idx, audio_idx, grids, audio_counts = self.video_idx, self.audio_idx, self.grids, self.audio_counts
        if has_v:
            if grids is None:
                raise ValueError(f"row {b}: input_ids hold video tokens but video_grid_thw was not given")
            if video_idx >= grids.shape[0]:
                raise ValueError(
                    f"row {b}: found video #{video_idx} in input_ids but video_grid_thw has {grids.shape[0]} entries"
                )
            if self.use_audio_in_video and not has_a:
                raise ValueError(
                    f"row {b}: video #{video_idx} has no audio tokens but use_audio_in_video=True; "
                    "process silent videos with load_audio_from_video=False"
                )
            if self.use_audio_in_video is False and has_a:
                raise ValueError(f"row {b}: video #{video_idx} is interleaved with audio but use_audio_in_video=False")
        if has_a and audio_counts is not None:
            if audio_idx >= len(audio_counts):
                raise ValueError(
                    f"row {b}: found audio #{audio_idx} in input_ids but only {len(audio_counts)} audio inputs"
                )
            n_a = int(run_audio.sum())
            if n_a != audio_counts[audio_idx]:
                raise ValueError(
                    f"row {b}: audio #{audio_idx} has {n_a} tokens in input_ids but its features give "
                    f"{audio_counts[audio_idx]}"
                )

    def check_all_used(self) -> None:
        if self.grids is not None and self.video_idx != self.grids.shape[0]:
            raise ValueError(f"video_grid_thw has {self.grids.shape[0]} videos but input_ids hold {self.video_idx}")
        if self.audio_counts is not None and self.audio_idx != len(self.audio_counts):
            raise ValueError(f"{len(self.audio_counts)} audio inputs were given but input_ids hold {self.audio_idx}")


def _runs(flags: list[bool]) -> list[tuple[int, int]]:
    """[start, end) of every maximal run of True."""
    runs, i, n = [], 0, len(flags)
    while i < n:
        if not flags[i]:
            i += 1
            continue
        j = i
        while j < n and flags[j]:
            j += 1
        runs.append((i, j))
        i = j
    return runs


def _check_interleaving(run_audio, video_per_window, audio_per_window, by_grid, grid, per_frame, grid_positions,
                        seconds, where) -> None:
    """The run's audio/video token pattern is the one the model's position rule assumes."""
    if by_grid:
        expected = grid_interleaving(grid[0], per_frame, int(run_audio.sum()), grid_positions)
        rule = "per temporal grid by time"
    else:  # per window, its video tokens then its audio tokens (processor order)
        expected = torch.cat([
            torch.tensor([False] * v + [True] * a, dtype=torch.bool) for v, a in zip(video_per_window, audio_per_window)
        ])
        rule = f"in {seconds:g}-second chunks"
    if not torch.equal(expected, run_audio):
        raise ValueError(
            f"{where}: audio and video tokens are not interleaved {rule} as get_rope_index expects (was the input "
            "made with load_audio_from_video / use_audio_in_video consistently?)"
        )


def _segment_windows(
    kind: SegmentKind,
    run_pos: torch.Tensor,
    run_audio: torch.Tensor,
    *,
    grid: list[int] | None,
    second_per_grid: torch.Tensor | None,
    merge: int,
    per_second: float,
    tokens_per_chunk: int,
    by_grid: bool,
    video_item: int,
    audio_item: int,
    where: str,
) -> list[Window]:
    """Cut one media run into windows, checking its token pattern against the chunking rule."""
    n_audio = int(run_audio.sum())
    # Audio positions are consecutive, so the sequential rule reduces to k // tokens_per_chunk.
    audio_per_window = [tokens_per_chunk] * (n_audio // tokens_per_chunk)
    if n_audio % tokens_per_chunk:
        audio_per_window.append(n_audio % tokens_per_chunk)
    video_per_window: list[int] = []
    per_frame, h, w = 0, 0, 0
    if grid is not None:
        t_grids, h, w = grid[0], grid[1] // merge, grid[2] // merge
        per_frame = h * w
        n_video = len(run_audio) - n_audio
        if n_video != t_grids * per_frame:
            raise ValueError(
                f"{where}: {n_video} video tokens but video_grid_thw {grid} with merge {merge} gives "
                f"{t_grids * per_frame}"
            )
        if second_per_grid is None:
            raise ValueError(f"{where}: video_second_per_grid is required to place video tokens in time")
        # Same arithmetic as get_rope_index: float32 seconds * positions per second (Qwen2.5 truncates).
        t_float = torch.arange(t_grids) * second_per_grid.float() * per_second
        if by_grid:
            slots = torch.floor(t_float / tokens_per_chunk).long()
            video_per_window = (torch.bincount(slots, minlength=int(slots.max()) + 1) * per_frame).tolist()
        else:
            video_per_window = _chunk_counts(t_float.long().tolist(), per_frame, tokens_per_chunk)

    n_windows = max(len(video_per_window), len(audio_per_window))
    video_per_window += [0] * (n_windows - len(video_per_window))
    audio_per_window += [0] * (n_windows - len(audio_per_window))
    video_start = [0] + list(itertools.accumulate(video_per_window))
    audio_start = [0] + list(itertools.accumulate(audio_per_window))

    if kind == "audio_in_video":
        _check_interleaving(run_audio, video_per_window, audio_per_window, by_grid, grid, per_frame,
                            float(second_per_grid) * per_second, tokens_per_chunk / per_second, where)

    hw = None
    if per_frame:
        hw = torch.stack(
            [torch.arange(h).repeat_interleave(w), torch.arange(w).repeat(h)], dim=1
        )  # (h*w, 2), row-major like get_llm_pos_ids_for_vision
    video_pos = run_pos[~run_audio]
    audio_pos = run_pos[run_audio]
    windows = []
    for j in range(n_windows):
        frames = []
        a, end = video_start[j], video_start[j + 1]
        while a < end:  # a window holds whole frames, except at fps < 1 where get_rope_index splits one
            t = a // per_frame
            b = min(end, (t + 1) * per_frame)
            frames.append(
                Frame(positions=video_pos[a:b], hw=hw[a - t * per_frame : b - t * per_frame], t=t, grid=(h, w))
            )
            a = b
        windows.append(
            Window(
                index=j,
                audio=audio_pos[audio_start[j] : audio_start[j + 1]],
                frames=tuple(frames),
                audio_offset=audio_start[j],
                audio_item=audio_item if audio_per_window[j] else -1,
                video_item=video_item if frames else -1,
            )
        )
    return windows
