"""`sift.layout.build_layout`: rows -> segments -> windows -> frames, checked against the real model.

Ground truth everywhere is transformers' own code: token sequences are built with the real
`Qwen2_5OmniProcessor.replace_video_with_audio_token` interleaving (or come straight from the processor),
window counts come from the processor's `get_chunked_index`, and the 3-D positions come from the real
`Qwen2_5OmniThinkerModel.get_rope_index` of the tiny thinker.
"""

from __future__ import annotations

import copy
import functools
import types
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

import sift
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sift.layout import (
    Frame,
    RowLayout,
    Segment,
    TokenLayout,
    Window,
    audio_tokens_from_features,
    build_layout,
)
from sift.testbed.media import synth_clip
from sift.testbed.tiny import omni_inputs, tiny_thinker

PER_SECOND = 25  # position_id_per_seconds of Qwen2.5-Omni (and the tiny config)
CHUNK = 50  # position ids per 2 s window


# --------------------------------------------------------------------------------------------------------------
# Building blocks: token sequences with the real processor rules
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Media:
    """One item of a row: "aiv" (video with its audio), "video" (silent), "audio" or "image".

    h, w are on the *merged* grid (patch grid = 2h x 2w); n is the number of audio tokens.
    """

    kind: str
    t: int = 0
    h: int = 0
    w: int = 0
    spg: float = 1.0
    n: int = 0

    @property
    def grid(self) -> list[int]:
        return [self.t if self.kind != "image" else 1, 2 * self.h, 2 * self.w]

    @property
    def has_video(self) -> bool:
        return self.kind in ("aiv", "video")

    @property
    def has_audio(self) -> bool:
        return self.kind in ("aiv", "audio")


def aiv(t, h, w, n, spg=1.0):
    return Media("aiv", t=t, h=h, w=w, spg=spg, n=n)


def video(t, h, w, spg=1.0):
    return Media("video", t=t, h=h, w=w, spg=spg)


def audio(n):
    return Media("audio", n=n)


def image(h, w):
    return Media("image", t=1, h=h, w=w)


@functools.lru_cache(maxsize=None)
def feature_len(n_tokens: int) -> int:
    """Smallest mel-feature length whose audio encoder output has `n_tokens` tokens."""
    f = max(1, 4 * n_tokens - 8)
    while int(audio_tokens_from_features(torch.tensor(f))) != n_tokens:
        f += 1
        assert f < 4 * n_tokens + 8, n_tokens
    return f


def media_text(processor, m: Media) -> str:
    if m.kind == "aiv":
        inner = processor.replace_video_with_audio_token(
            {"video_grid_thw": torch.tensor([m.grid]), "video_second_per_grid": [m.spg]},
            0,
            {"num_audio_tokens": [m.n]},
            0,
            position_id_per_seconds=PER_SECOND,
            seconds_per_chunk=2.0,
        )
        return "<|vision_bos|>" + inner + "<|vision_eos|>"
    if m.kind == "video":
        return "<|vision_bos|>" + "<|VIDEO|>" * (m.t * m.h * m.w) + "<|vision_eos|>"
    if m.kind == "audio":
        return "<|audio_bos|>" + "<|AUDIO|>" * m.n + "<|audio_eos|>"
    if m.kind == "image":
        return "<|vision_bos|>" + "<|IMAGE|>" * (m.h * m.w) + "<|vision_eos|>"
    raise AssertionError(m.kind)


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    rows: list[list[Media]]  # media of each row in order (images included)
    use_audio_in_video: bool
    pads: list[int] = field(default_factory=list)  # padding tokens of each row
    padding_side: str = "left"

    def _all(self, pred):
        return [m for row in self.rows for m in row if pred(m)]

    @property
    def videos(self) -> list[Media]:
        return self._all(lambda m: m.has_video)

    @property
    def audios(self) -> list[Media]:
        return self._all(lambda m: m.has_audio)

    @property
    def images(self) -> list[Media]:
        return self._all(lambda m: m.kind == "image")

    @property
    def video_grid_thw(self) -> torch.Tensor | None:
        return torch.tensor([m.grid for m in self.videos], dtype=torch.long) if self.videos else None

    @property
    def video_second_per_grid(self) -> torch.Tensor | None:
        return torch.tensor([m.spg for m in self.videos], dtype=torch.float32) if self.videos else None

    @property
    def audio_feature_lengths(self) -> torch.Tensor | None:
        return torch.tensor([feature_len(m.n) for m in self.audios], dtype=torch.long) if self.audios else None

    @property
    def image_grid_thw(self) -> torch.Tensor | None:
        return torch.tensor([m.grid for m in self.images], dtype=torch.long) if self.images else None

    def layout(self, config, **overrides) -> TokenLayout:
        kwargs = dict(
            attention_mask=self.attention_mask,
            video_grid_thw=self.video_grid_thw,
            video_second_per_grid=self.video_second_per_grid,
            audio_feature_lengths=self.audio_feature_lengths,
            use_audio_in_video=self.use_audio_in_video,
        )
        kwargs.update(overrides)
        return build_layout(self.input_ids, config, **kwargs)

    def rope(self, thinker) -> torch.Tensor:
        """(3, B, L) positions from the real `get_rope_index`."""
        grids = self.video_grid_thw
        if grids is None:  # force the multimodal path (audio positions) even without any video
            grids = torch.zeros(0, 3, dtype=torch.long)
        pos, _ = thinker.model.get_rope_index(
            self.input_ids,
            self.image_grid_thw,
            grids,
            self.attention_mask,
            self.use_audio_in_video,
            self.audio_feature_lengths,
            self.video_second_per_grid,
        )
        return pos


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def make_batch(
    tokenizer,
    processor,
    rows: list[list],
    *,
    use_audio_in_video: bool,
    padding_side: str = "left",
    extra_pad: int = 0,
) -> Batch:
    """Rows are lists of `Media` and ints (an int k is k text tokens); rows are padded to a common length."""
    seqs, medias = [], []
    for row in rows:
        text = "".join("x" * item if isinstance(item, int) else media_text(processor, item) for item in row)
        seqs.append(encode(tokenizer, text))
        medias.append([item for item in row if isinstance(item, Media)])
    length = max(len(s) for s in seqs) + extra_pad
    pad_id = tokenizer.pad_token_id
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    pads = []
    for b, s in enumerate(seqs):
        p = length - len(s)
        pads.append(p)
        sl = slice(p, length) if padding_side == "left" else slice(0, len(s))
        ids[b, sl] = torch.tensor(s, dtype=torch.long)
        mask[b, sl] = 1
    return Batch(ids, mask, medias, use_audio_in_video, pads, padding_side)


def t_offsets(m: Media) -> list[int]:
    """Temporal position offset of each temporal grid, with get_rope_index's float32 arithmetic."""
    return (torch.arange(m.t) * torch.tensor(m.spg, dtype=torch.float32) * PER_SECOND).long().tolist()


def expected_chunks(processor, m: Media) -> tuple[list[int], list[int]]:
    """(video tokens per chunk, audio tokens per chunk) from the processor's own `get_chunked_index`."""
    v, a = [], []
    if m.has_video:
        idx = np.repeat(np.arange(m.t) * m.spg * PER_SECOND, m.h * m.w)
        v = [e - s for s, e in processor.get_chunked_index(idx, CHUNK)]
    if m.has_audio:
        a = [e - s for s, e in processor.get_chunked_index(np.arange(m.n), CHUNK)]
    return v, a


def row_major_hw(h: int, w: int) -> torch.Tensor:
    return torch.tensor([[i, j] for i in range(h) for j in range(w)], dtype=torch.long)


# --------------------------------------------------------------------------------------------------------------
# The generic checker (used by the hand-written cases and by the property test)
# --------------------------------------------------------------------------------------------------------------


def check_layout(layout: TokenLayout, batch: Batch, pos: torch.Tensor, processor, config) -> None:
    """Check `layout` against the token ids, the processor's chunking and get_rope_index positions `pos`."""
    ids = batch.input_ids
    a_id, v_id = config.audio_token_id, config.video_token_id
    is_a, is_v = ids == a_id, ids == v_id
    B, L = ids.shape

    assert layout.batch_size == B and len(layout.rows) == B
    assert layout.seq_len == L
    assert layout.seconds_per_chunk == 2.0
    # (a) masks are exactly the audio / video token positions (never images, text or padding)
    assert torch.equal(layout.media_mask(), is_a | is_v)
    assert torch.equal(layout.audio_mask(), is_a)
    assert torch.equal(layout.video_mask(), is_v)
    assert layout.num_tokens == int((is_a | is_v).sum())
    assert layout.is_empty == (not bool((is_a | is_v).any()))

    video_item, audio_item = 0, 0
    for b, row in enumerate(layout.rows):
        assert isinstance(row, RowLayout)
        assert row.length == int(batch.attention_mask[b].sum())
        medias = [m for m in batch.rows[b] if m.kind != "image"]
        assert [s.kind for s in row.segments] == [
            {"aiv": "audio_in_video", "video": "video", "audio": "audio"}[m.kind] for m in medias
        ]
        assert row.num_audio == int(is_a[b].sum())
        assert row.num_video == int(is_v[b].sum())
        assert row.num_tokens == row.num_audio + row.num_video
        covered: list[int] = []
        for seg, m in zip(row.segments, medias):
            assert isinstance(seg, Segment)
            # segment span: a maximal run of media tokens
            span = ids[b, seg.start : seg.end]
            assert bool(((span == a_id) | (span == v_id)).all())
            assert seg.start == 0 or int(ids[b, seg.start - 1]) not in (a_id, v_id)
            assert seg.end >= L or int(ids[b, seg.end]) not in (a_id, v_id)
            # items follow the order of appearance across the whole batch
            assert seg.video_item == (video_item if m.has_video else -1)
            assert seg.audio_item == (audio_item if m.has_audio else -1)
            if m.has_video:
                assert batch.video_grid_thw[seg.video_item].tolist() == m.grid
            video_item += int(m.has_video)
            audio_item += int(m.has_audio)

            # (e) windows: same count and same tokens per window as the processor's chunks
            v_chunks, a_chunks = expected_chunks(processor, m)
            n_win = max(len(v_chunks), len(a_chunks))
            assert len(seg.windows) == n_win
            assert [w.num_video for w in seg.windows] == v_chunks + [0] * (n_win - len(v_chunks))
            assert [w.num_audio for w in seg.windows] == a_chunks + [0] * (n_win - len(a_chunks))

            # the segment's first media token sits at (st, st, st)
            st_idx = int(pos[0, b, seg.start])
            assert pos[:, b, seg.start].tolist() == [st_idx] * 3
            offsets = t_offsets(m) if m.has_video else []
            frames_seen, audio_seen = [], 0
            for j, win in enumerate(seg.windows):
                assert isinstance(win, Window)
                assert win.index == j
                assert win.audio_offset == audio_seen
                assert win.audio_item == (seg.audio_item if win.num_audio else -1)
                assert win.video_item == (seg.video_item if win.frames else -1)
                assert win.num_tokens == win.num_audio + win.num_video
                # audio: positions (all 3 axes) are consecutive across windows, offset = tokens before
                a_pos = pos[:, b, win.audio] - st_idx
                want = torch.arange(audio_seen, audio_seen + win.num_audio)
                for axis in range(3):
                    assert torch.equal(a_pos[axis], want), (axis, a_pos[axis], want)
                assert bool((ids[b, win.audio] == a_id).all())
                audio_seen += win.num_audio
                # frames: temporal grid, (h, w) cells, positions
                for f in win.frames:
                    assert isinstance(f, Frame)
                    assert f.grid == (m.h, m.w)
                    assert f.num_tokens == m.h * m.w
                    assert bool((ids[b, f.positions] == v_id).all())
                    assert torch.equal(f.hw, row_major_hw(m.h, m.w))
                    f_pos = pos[:, b, f.positions] - st_idx
                    assert f_pos[0].tolist() == [offsets[f.t]] * f.num_tokens  # (c) frame.t * spg * 25
                    assert torch.equal(f_pos[1], f.hw[:, 0])  # (d)
                    assert torch.equal(f_pos[2], f.hw[:, 1])
                    assert offsets[f.t] // CHUNK == j  # frame.t grouping
                    frames_seen.append(f.t)
                if win.frames:
                    assert torch.equal(win.video, torch.cat([f.positions for f in win.frames]))
                assert win.video.numel() == win.num_video and win.video.dtype == torch.long
                # (c) every token of window j lies in [50 j, 50 (j + 1)) relative to the segment start
                toks = torch.cat([win.video, win.audio])
                t_rel = pos[0, b, toks] - st_idx
                assert bool(((t_rel >= CHUNK * j) & (t_rel < CHUNK * (j + 1))).all()), (j, t_rel)
                # a window is a contiguous block: its video tokens, then its audio tokens
                assert sorted(toks.tolist()) == list(range(int(toks.min()), int(toks.max()) + 1))
                if win.frames and win.num_audio:
                    assert int(win.video.max()) < int(win.audio.min())
                covered += toks.tolist()
            assert frames_seen == list(range(m.t if m.has_video else 0))
            assert audio_seen == (m.n if m.has_audio else 0)
        # (b) every media token of the row is in exactly one window
        assert sorted(covered) == torch.nonzero(is_a[b] | is_v[b]).squeeze(1).tolist()
        assert len(set(covered)) == len(covered)
        assert sorted(row.audio_positions().tolist()) == torch.nonzero(is_a[b]).squeeze(1).tolist()
        assert sorted(row.video_positions().tolist()) == torch.nonzero(is_v[b]).squeeze(1).tolist()
    assert video_item == len(batch.videos) and audio_item == len(batch.audios)


# --------------------------------------------------------------------------------------------------------------
# 1. Real processor output
# --------------------------------------------------------------------------------------------------------------


def _synth_layout(synth_inputs, thinker_config):
    return sift.layout_of(synth_inputs, thinker_config)


def test_processor_output_windows(synth_inputs, thinker_config, thinker):
    ids = synth_inputs["input_ids"]
    assert synth_inputs["video_grid_thw"].tolist() == [[4, 8, 8]]  # 4 s at 2 fps, 112x112
    layout = _synth_layout(synth_inputs, thinker_config)
    a_id, v_id = thinker_config.audio_token_id, thinker_config.video_token_id

    assert layout.batch_size == 1 and layout.seq_len == ids.shape[1]
    assert torch.equal(layout.media_mask(), (ids == a_id) | (ids == v_id))
    assert torch.equal(layout.audio_mask(), ids == a_id)
    assert torch.equal(layout.video_mask(), ids == v_id)
    assert layout.num_tokens == 164 and not layout.is_empty

    (row,) = layout.rows
    assert row.length == ids.shape[1]
    assert (row.num_audio, row.num_video) == (100, 64)
    (seg,) = row.segments
    first_media = int(torch.nonzero((ids[0] == a_id) | (ids[0] == v_id))[0])
    assert seg.kind == "audio_in_video"
    assert (seg.start, seg.end) == (first_media, first_media + 164)
    assert (seg.video_item, seg.audio_item) == (0, 0)
    assert len(seg.windows) == 2

    hw = row_major_hw(4, 4)
    assert hw[5].tolist() == [1, 1] and hw[7].tolist() == [1, 3]
    for j, win in enumerate(seg.windows):
        assert win.index == j
        assert win.num_audio == 50
        assert win.audio_offset == 50 * j
        assert (win.audio_item, win.video_item) == (0, 0)
        assert [f.t for f in win.frames] == [2 * j, 2 * j + 1]
        for f in win.frames:
            assert f.num_tokens == 16 and f.grid == (4, 4)
            assert torch.equal(f.hw, hw)
        # the window is [16 video][16 video][50 audio] in the sequence
        w0 = first_media + 82 * j
        assert win.frames[0].positions.tolist() == list(range(w0, w0 + 16))
        assert win.frames[1].positions.tolist() == list(range(w0 + 16, w0 + 32))
        assert win.audio.tolist() == list(range(w0 + 32, w0 + 82))
        assert win.video.tolist() == list(range(w0, w0 + 32))

    pos, _ = thinker.model.get_rope_index(
        ids,
        None,
        synth_inputs["video_grid_thw"],
        synth_inputs["attention_mask"],
        True,
        synth_inputs["feature_attention_mask"].sum(-1),
        synth_inputs["video_second_per_grid"],
    )
    st_idx = int(pos[0, 0, seg.start])
    for j, win in enumerate(seg.windows):
        t_rel = pos[0, 0, torch.cat([win.video, win.audio])] - st_idx
        assert int(t_rel.min()) >= 50 * j and int(t_rel.max()) < 50 * (j + 1)
        for f in win.frames:
            rel = pos[:, 0, f.positions] - st_idx
            assert rel[0].tolist() == [25 * f.t] * 16
            assert torch.equal(rel[1:].T, f.hw)
    audio_rel = pos[0, 0, row.audio_positions()] - st_idx
    assert audio_rel.tolist() == list(range(100))  # consecutive across windows


def test_processor_output_generic_check(synth_inputs, thinker_config, thinker, processor):
    layout = _synth_layout(synth_inputs, thinker_config)
    batch = Batch(
        synth_inputs["input_ids"],
        synth_inputs["attention_mask"],
        [[aiv(4, 4, 4, 100, spg=1.0)]],
        True,
    )
    # the processor's 400 mel frames give 100 audio tokens (Batch.rope feeds the smallest such length, 399)
    assert int(audio_tokens_from_features(synth_inputs["feature_attention_mask"].sum(-1))[0]) == 100
    check_layout(layout, batch, batch.rope(thinker), processor, thinker_config)


def test_processor_batch_of_two_clips(processor, thinker_config, thinker):
    """Real processor, two clips of different lengths, left padded: windows follow each row."""
    inputs = omni_inputs(processor, [synth_clip(2.0), synth_clip(5.0, seed=1)], ["a", "b"], use_audio_in_video=True)
    assert inputs["video_grid_thw"].tolist() == [[2, 8, 8], [5, 8, 8]]
    lengths = inputs["feature_attention_mask"].sum(-1)
    n_audio = audio_tokens_from_features(lengths).tolist()
    assert n_audio == [50, 125]
    layout = build_layout(
        inputs["input_ids"],
        thinker_config,
        attention_mask=inputs["attention_mask"],
        video_grid_thw=inputs["video_grid_thw"],
        video_second_per_grid=inputs["video_second_per_grid"],
        feature_attention_mask=inputs["feature_attention_mask"],
        use_audio_in_video=True,
    )
    batch = Batch(
        inputs["input_ids"], inputs["attention_mask"], [[aiv(2, 4, 4, 50)], [aiv(5, 4, 4, 125)]], True
    )
    pos, _ = thinker.model.get_rope_index(
        inputs["input_ids"], None, inputs["video_grid_thw"], inputs["attention_mask"], True, lengths,
        inputs["video_second_per_grid"],
    )
    check_layout(layout, batch, pos, processor, thinker_config)
    r0, r1 = layout.rows
    assert [len(r0.windows), len(r1.windows)] == [1, 3]
    assert [w.num_audio for w in r1.windows] == [50, 50, 25]
    assert [[f.t for f in w.frames] for w in r1.windows] == [[0, 1], [2, 3], [4]]
    assert r0.segments[0].video_item == 0 and r1.segments[0].video_item == 1
    assert r0.segments[0].audio_item == 0 and r1.segments[0].audio_item == 1
    pad = int((inputs["attention_mask"][0] == 0).sum())
    assert pad > 0 and r0.length == inputs["input_ids"].shape[1] - pad
    assert r1.length == inputs["input_ids"].shape[1]


def test_full_config_wrapper_is_accepted(synth_inputs, thinker_config):
    """A full Qwen2_5OmniConfig (with `.thinker_config`) works like the thinker config itself."""
    wrapped = types.SimpleNamespace(thinker_config=thinker_config)
    a = _synth_layout(synth_inputs, thinker_config)
    b = _synth_layout(synth_inputs, wrapped)
    assert torch.equal(a.media_mask(), b.media_mask())
    assert [w.audio.tolist() for w in a.rows[0].windows] == [w.audio.tolist() for w in b.rows[0].windows]


# --------------------------------------------------------------------------------------------------------------
# 2. Hand-written layouts
# --------------------------------------------------------------------------------------------------------------


def _run(tokenizer, processor, thinker_config, thinker, rows, *, use_aiv, **kw):
    batch = make_batch(tokenizer, processor, rows, use_audio_in_video=use_aiv, **kw)
    layout = batch.layout(thinker_config)
    check_layout(layout, batch, batch.rope(thinker), processor, thinker_config)
    return batch, layout


def test_trailing_audio_only_windows(tokenizer, processor, thinker_config, thinker):
    """Audio longer than the video: the last windows hold only audio."""
    _, layout = _run(tokenizer, processor, thinker_config, thinker, [[5, aiv(2, 2, 3, 120), 4]], use_aiv=True)
    (seg,) = layout.rows[0].segments
    assert len(seg.windows) == 3
    assert [w.num_audio for w in seg.windows] == [50, 50, 20]
    assert [w.num_video for w in seg.windows] == [12, 0, 0]
    assert [w.audio_offset for w in seg.windows] == [0, 50, 100]
    assert [w.video_item for w in seg.windows] == [0, -1, -1]
    assert [w.audio_item for w in seg.windows] == [0, 0, 0]
    assert seg.windows[1].frames == () and seg.windows[1].video.numel() == 0
    assert seg.windows[0].frames[1].grid == (2, 3)


def test_trailing_video_only_windows(tokenizer, processor, thinker_config, thinker):
    """Video longer than the audio: the last windows hold only frames."""
    _, layout = _run(tokenizer, processor, thinker_config, thinker, [[3, aiv(6, 2, 2, 30), 2]], use_aiv=True)
    (seg,) = layout.rows[0].segments
    assert [[f.t for f in w.frames] for w in seg.windows] == [[0, 1], [2, 3], [4, 5]]
    assert [w.num_audio for w in seg.windows] == [30, 0, 0]
    assert [w.audio_offset for w in seg.windows] == [0, 30, 30]
    assert [w.audio_item for w in seg.windows] == [0, -1, -1]
    assert [w.video_item for w in seg.windows] == [0, 0, 0]
    assert seg.end - seg.start == 6 * 4 + 30


def test_silent_video(tokenizer, processor, thinker_config, thinker):
    batch, layout = _run(tokenizer, processor, thinker_config, thinker, [[7, video(5, 3, 2), 3]], use_aiv=False)
    (seg,) = layout.rows[0].segments
    assert seg.kind == "video" and seg.audio_item == -1 and seg.video_item == 0
    assert [[f.t for f in w.frames] for w in seg.windows] == [[0, 1], [2, 3], [4]]
    assert all(w.num_audio == 0 and w.audio_item == -1 and w.audio_offset == 0 for w in seg.windows)
    assert [w.num_video for w in seg.windows] == [12, 12, 6]
    assert seg.start == 8 and seg.end == 8 + 30
    # the flag may also be left out
    other = batch.layout(thinker_config, use_audio_in_video=None)
    assert [w.video.tolist() for w in other.rows[0].windows] == [w.video.tolist() for w in seg.windows]


def test_audio_clip(tokenizer, processor, thinker_config, thinker):
    for use_aiv in (False, True):
        _, layout = _run(tokenizer, processor, thinker_config, thinker, [[4, audio(120), 1]], use_aiv=use_aiv)
        (seg,) = layout.rows[0].segments
        assert seg.kind == "audio" and seg.video_item == -1 and seg.audio_item == 0
        assert [w.num_audio for w in seg.windows] == [50, 50, 20]
        assert [w.audio_offset for w in seg.windows] == [0, 50, 100]
        assert all(w.frames == () and w.video_item == -1 and w.audio_item == 0 for w in seg.windows)
        assert seg.windows[0].audio.tolist() == list(range(5, 55))
        assert seg.windows[2].audio.tolist() == list(range(105, 125))


def test_audio_exactly_one_window(tokenizer, processor, thinker_config, thinker):
    _, layout = _run(tokenizer, processor, thinker_config, thinker, [[audio(50)], [audio(51)]], use_aiv=False)
    assert [w.num_audio for w in layout.rows[0].windows] == [50]
    assert [w.num_audio for w in layout.rows[1].windows] == [50, 1]


def test_several_videos_in_a_row_and_across_rows(tokenizer, processor, thinker_config, thinker):
    rows = [
        [2, aiv(2, 1, 2, 30), 3, audio(70), 1, aiv(3, 2, 2, 60, spg=2.0), 2],
        [audio(10), 5, aiv(4, 1, 3, 80)],
    ]
    batch, layout = _run(tokenizer, processor, thinker_config, thinker, rows, use_aiv=True)
    segs = [s for r in layout.rows for s in r.segments]
    assert [s.kind for s in segs] == ["audio_in_video", "audio", "audio_in_video", "audio", "audio_in_video"]
    assert [s.video_item for s in segs] == [0, -1, 1, -1, 2]
    assert [s.audio_item for s in segs] == [0, 1, 2, 3, 4]
    for s in segs:
        for w in s.windows:
            for f in w.frames:
                assert list(f.grid) == (batch.video_grid_thw[s.video_item, 1:] // 2).tolist()
    # spg 2.0: one temporal grid per window
    assert [[f.t for f in w.frames] for w in segs[2].windows] == [[0], [1], [2]]
    assert [w.num_audio for w in segs[2].windows] == [50, 10, 0]


def test_several_silent_videos(tokenizer, processor, thinker_config, thinker):
    rows = [[video(2, 1, 1), 2, video(3, 2, 1, spg=0.5)], [1, audio(5), video(1, 3, 3), 4]]
    _, layout = _run(tokenizer, processor, thinker_config, thinker, rows, use_aiv=False)
    segs = [s for r in layout.rows for s in r.segments]
    assert [s.kind for s in segs] == ["video", "video", "audio", "video"]
    assert [s.video_item for s in segs] == [0, 1, -1, 2]
    assert [s.audio_item for s in segs] == [-1, -1, 0, -1]
    assert [len(s.windows) for s in segs] == [1, 1, 1, 1]


def test_images_are_left_out(tokenizer, processor, thinker_config, thinker):
    rows = [[3, image(2, 3), 2, aiv(2, 2, 2, 40), image(1, 1), 3], [image(3, 3)]]
    batch, layout = _run(tokenizer, processor, thinker_config, thinker, rows, use_aiv=True)
    img = batch.input_ids == thinker_config.image_token_id
    assert int(img.sum()) == 6 + 1 + 9
    assert not bool((layout.media_mask() & img).any())
    assert layout.rows[1].segments == [] and layout.rows[1].num_tokens == 0
    all_pos = torch.cat([torch.cat([w.video, w.audio]) for w in layout.rows[0].windows])
    assert not bool(img[0, all_pos].any())
    assert layout.num_tokens == 8 + 40


def test_images_with_silent_video(tokenizer, processor, thinker_config, thinker):
    rows = [[image(1, 2), video(2, 1, 1), 1, image(2, 2)]]
    _, layout = _run(tokenizer, processor, thinker_config, thinker, rows, use_aiv=False)
    assert [s.kind for s in layout.rows[0].segments] == ["video"]
    assert layout.num_tokens == 2


def test_text_only(tokenizer, processor, thinker_config):
    batch = make_batch(tokenizer, processor, [[12], [5]], use_audio_in_video=False)
    layout = batch.layout(thinker_config)
    assert layout.is_empty and layout.num_tokens == 0
    assert [r.segments for r in layout.rows] == [[], []]
    assert [r.length for r in layout.rows] == [12, 5]
    assert layout.rows[0].windows == []
    assert layout.rows[0].audio_positions().numel() == 0 and layout.rows[0].video_positions().numel() == 0
    assert layout.media_mask().shape == (2, 12) and not bool(layout.media_mask().any())
    # no attention mask, no media arguments at all
    bare = build_layout(batch.input_ids, thinker_config)
    assert bare.is_empty and [r.length for r in bare.rows] == [12, 12]


@pytest.mark.parametrize("use_aiv", [True, False])
def test_padding_left_and_right(tokenizer, processor, thinker_config, thinker, use_aiv):
    """The same rows, left or right padded: windows are shifted by the pad amount; `length` counts real tokens."""
    first = aiv(3, 2, 2, 70) if use_aiv else video(3, 2, 2)
    rows = [[4, first, 2], [1, audio(60), 3, first if use_aiv else video(1, 1, 1), 20]]
    singles = [
        make_batch(tokenizer, processor, [r], use_audio_in_video=use_aiv).layout(thinker_config) for r in rows
    ]
    for side in ("left", "right"):
        batch, layout = _run(
            tokenizer, processor, thinker_config, thinker, rows, use_aiv=use_aiv, padding_side=side, extra_pad=2
        )
        for b, row in enumerate(layout.rows):
            single = singles[b].rows[0]
            shift = batch.pads[b] if side == "left" else 0
            assert row.length == single.length == batch.input_ids.shape[1] - batch.pads[b]
            assert [s.kind for s in row.segments] == [s.kind for s in single.segments]
            assert [(s.start, s.end) for s in row.segments] == [
                (s.start + shift, s.end + shift) for s in single.segments
            ]
            for w, w1 in zip(row.windows, single.windows, strict=True):
                assert w.audio.tolist() == [p + shift for p in w1.audio.tolist()]
                assert w.video.tolist() == [p + shift for p in w1.video.tolist()]
                assert [f.t for f in w.frames] == [f.t for f in w1.frames]
                assert w.audio_offset == w1.audio_offset
        assert batch.pads[0] > 2 and batch.pads[1] == 2


def test_batch_rows_of_different_lengths(tokenizer, processor, thinker_config, thinker):
    rows = [[1, aiv(1, 1, 1, 5)], [30, aiv(8, 3, 3, 260), 40], [audio(1)]]
    batch, layout = _run(tokenizer, processor, thinker_config, thinker, rows, use_aiv=True)
    assert len({int(m.sum()) for m in batch.attention_mask}) == 3
    assert [len(r.windows) for r in layout.rows] == [1, 6, 1]
    assert [w.num_audio for w in layout.rows[1].windows] == [50, 50, 50, 50, 50, 10]
    assert [len(w.frames) for w in layout.rows[1].windows] == [2, 2, 2, 2, 0, 0]
    assert [s.audio_item for r in layout.rows for s in r.segments] == [0, 1, 2]


@pytest.mark.parametrize(
    ("spg", "frames_per_window"),
    [
        (2.0, [[0], [1], [2], [3], [4]]),  # fps 1: one temporal grid per window
        (1.0, [[0, 1], [2, 3], [4]]),
        (0.5, [[0, 1, 2, 3], [4]]),  # fps 4: 0, 12, 25, 37 | 50
    ],
)
@pytest.mark.parametrize("use_aiv", [True, False])
def test_second_per_grid(tokenizer, processor, thinker_config, thinker, spg, frames_per_window, use_aiv):
    m = aiv(5, 2, 1, 90, spg=spg) if use_aiv else video(5, 2, 1, spg=spg)
    _, layout = _run(tokenizer, processor, thinker_config, thinker, [[3, m, 3]], use_aiv=use_aiv)
    (seg,) = layout.rows[0].segments
    got = [[f.t for f in w.frames] for w in seg.windows]
    if use_aiv:  # the audio (90 tokens = 2 windows) may outlast the video
        frames_per_window = frames_per_window + [[]] * (2 - len(frames_per_window))
        assert [w.num_audio for w in seg.windows] == [50, 40] + [0] * (len(seg.windows) - 2)
    assert got == frames_per_window


@pytest.mark.parametrize("use_aiv", [True, False])
def test_second_per_grid_truncation(tokenizer, processor, thinker_config, thinker, use_aiv):
    """spg 1.99: grid offsets 0, 49.75, 99.5, 149.25, 199 are truncated (0, 49, 99, 149, 199), not rounded."""
    m = aiv(5, 1, 2, 210, spg=1.99) if use_aiv else video(5, 1, 2, spg=1.99)
    assert t_offsets(m) == [0, 49, 99, 149, 199]
    _, layout = _run(tokenizer, processor, thinker_config, thinker, [[2, m, 2]], use_aiv=use_aiv)
    (seg,) = layout.rows[0].segments
    assert [[f.t for f in w.frames] for w in seg.windows][:4] == [[0, 1], [2], [3], [4]]
    if use_aiv:
        assert [w.num_audio for w in seg.windows] == [50, 50, 50, 50, 10]


@pytest.mark.parametrize("use_aiv", [True, False])
def test_second_per_grid_float32_arithmetic(tokenizer, processor, thinker_config, thinker, use_aiv):
    """spg 0.7 (float32 just below 0.7): grid 20 is at 350 exactly, as in get_rope_index (float64 would give 349)."""
    m = aiv(21, 1, 1, 60, spg=0.7) if use_aiv else video(21, 1, 1, spg=0.7)
    assert t_offsets(m)[18:] == [315, 332, 350]
    _, layout = _run(tokenizer, processor, thinker_config, thinker, [[1, m, 1]], use_aiv=use_aiv)
    (seg,) = layout.rows[0].segments
    assert len(seg.windows) == 8
    assert [f.t for f in seg.windows[6].frames] == [18, 19]
    assert [f.t for f in seg.windows[7].frames] == [20]


def test_merge_size_read_from_config(tokenizer, processor, thinker_config):
    """The spatial merge size comes from the config: with merge 1 a [2, 1, 3] grid is 2 frames of 1x3 tokens."""
    cfg = copy.deepcopy(thinker_config)
    cfg.vision_config.spatial_merge_size = 1
    batch = make_batch(tokenizer, processor, [[2, video(2, 1, 3), 2]], use_audio_in_video=False)
    assert int((batch.input_ids == cfg.video_token_id).sum()) == 6
    layout = build_layout(
        batch.input_ids, cfg, video_grid_thw=torch.tensor([[2, 1, 3]]), video_second_per_grid=torch.tensor([1.0])
    )
    frames = layout.rows[0].windows[0].frames
    assert [f.grid for f in frames] == [(1, 3), (1, 3)]
    assert frames[1].positions.tolist() == [6, 7, 8]
    assert frames[1].hw.tolist() == [[0, 0], [0, 1], [0, 2]]
    with pytest.raises(ValueError, match="6 video tokens but video_grid_thw"):
        build_layout(batch.input_ids, cfg, video_grid_thw=torch.tensor([[2, 2, 6]]), video_second_per_grid=[1.0])


def test_chunk_length_read_from_config(tokenizer, processor, thinker_config):
    """seconds_per_chunk=1 in the config: windows of 25 positions, as the processor and get_rope_index use."""
    cfg = copy.deepcopy(thinker_config)
    cfg.seconds_per_chunk = 1
    model = tiny_thinker(cfg)
    assert model.model.config.seconds_per_chunk == 1
    inner = processor.replace_video_with_audio_token(
        {"video_grid_thw": torch.tensor([[4, 2, 2]]), "video_second_per_grid": [1.0]},
        0,
        {"num_audio_tokens": [60]},
        0,
        position_id_per_seconds=PER_SECOND,
        seconds_per_chunk=1.0,
    )
    ids = torch.tensor([encode(tokenizer, "xx<|vision_bos|>" + inner + "<|vision_eos|>x")])
    grid, spg, feats = torch.tensor([[4, 2, 2]]), torch.tensor([1.0]), torch.tensor([feature_len(60)])
    layout = build_layout(
        ids, cfg, video_grid_thw=grid, video_second_per_grid=spg, audio_feature_lengths=feats, use_audio_in_video=True
    )
    (seg,) = layout.rows[0].segments
    assert [[f.t for f in w.frames] for w in seg.windows] == [[0], [1], [2], [3]]
    assert [w.num_audio for w in seg.windows] == [25, 25, 10, 0]
    pos, _ = model.model.get_rope_index(ids, None, grid, torch.ones_like(ids), True, feats, spg)
    st_idx = int(pos[0, 0, seg.start])
    for j, w in enumerate(seg.windows):
        t_rel = pos[0, 0, torch.cat([w.video, w.audio])] - st_idx
        assert int(t_rel.min()) >= 25 * j and int(t_rel.max()) < 25 * (j + 1)
    with pytest.raises(ValueError, match="not interleaved in 2-second chunks"):  # the 1 s input under 2 s chunks
        build_layout(ids, thinker_config, video_grid_thw=grid, video_second_per_grid=spg, use_audio_in_video=True)


def test_spg_as_list_and_bool_attention_mask(tokenizer, processor, thinker_config, thinker):
    batch = make_batch(tokenizer, processor, [[2, aiv(4, 1, 1, 70), 1]], use_audio_in_video=True)
    ref = batch.layout(thinker_config)
    alt = batch.layout(
        thinker_config, video_second_per_grid=[1.0], attention_mask=batch.attention_mask.bool()
    )
    assert [w.video.tolist() for w in alt.rows[0].windows] == [w.video.tolist() for w in ref.rows[0].windows]
    assert [w.audio.tolist() for w in alt.rows[0].windows] == [w.audio.tolist() for w in ref.rows[0].windows]


def test_feature_attention_mask_equals_feature_lengths(tokenizer, processor, thinker_config):
    batch = make_batch(tokenizer, processor, [[aiv(2, 1, 1, 30)], [audio(12)]], use_audio_in_video=True)
    lengths = batch.audio_feature_lengths
    fam = (torch.arange(int(lengths.max()) + 5)[None] < lengths[:, None]).long()
    a = batch.layout(thinker_config)
    b = batch.layout(thinker_config, audio_feature_lengths=None, feature_attention_mask=fam)
    c = batch.layout(thinker_config, audio_feature_lengths=None)  # counts unchecked, layout identical
    for other in (b, c):
        assert torch.equal(a.media_mask(), other.media_mask())
        assert [w.audio.tolist() for r in a.rows for w in r.windows] == [
            w.audio.tolist() for r in other.rows for w in r.windows
        ]


def test_audio_tokens_from_features():
    lengths = torch.tensor([3, 7, 399, 400, 403, 1000, 30000])
    assert audio_tokens_from_features(lengths).tolist() == [1, 2, 100, 100, 101, 250, 7500]
    assert [feature_len(n) for n in (1, 2, 50, 100)] == [3, 7, 199, 399]


def test_masks_on_device_argument(synth_inputs, thinker_config):
    layout = _synth_layout(synth_inputs, thinker_config)
    m = layout.media_mask("cpu")
    assert m.dtype == torch.bool and m.device.type == "cpu" and m.shape == synth_inputs["input_ids"].shape
    assert torch.equal(m, layout.audio_mask(torch.device("cpu")) | layout.video_mask())


# --------------------------------------------------------------------------------------------------------------
# 3. Errors
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def aiv_batch(tokenizer, processor):
    # window 0: 2 frames (1x1) + 50 audio; window 1: 2 frames + 10 audio
    return make_batch(tokenizer, processor, [[3, aiv(4, 1, 1, 60), 2]], use_audio_in_video=True)


@pytest.fixture(scope="module")
def silent_batch(tokenizer, processor):
    return make_batch(tokenizer, processor, [[3, video(2, 2, 2), 2]], use_audio_in_video=False)


def test_error_video_without_grid(aiv_batch, silent_batch, thinker_config):
    for batch in (aiv_batch, silent_batch):
        with pytest.raises(ValueError, match=r"row 0: input_ids hold video tokens but video_grid_thw was not given"):
            batch.layout(thinker_config, video_grid_thw=None)


def test_error_video_count_does_not_match_grid(silent_batch, aiv_batch, thinker_config):
    with pytest.raises(ValueError, match=r"8 video tokens but video_grid_thw \[3, 4, 4\] with merge 2 gives 12"):
        silent_batch.layout(thinker_config, video_grid_thw=torch.tensor([[3, 4, 4]]))
    with pytest.raises(ValueError, match=r"4 video tokens but video_grid_thw \[4, 2, 4\].*gives 8"):
        aiv_batch.layout(thinker_config, video_grid_thw=torch.tensor([[4, 2, 4]]))


def test_error_audio_count_does_not_match_features(aiv_batch, thinker_config, tokenizer, processor):
    with pytest.raises(ValueError, match=r"audio #0 has 60 tokens in input_ids but its features give 61"):
        aiv_batch.layout(thinker_config, audio_feature_lengths=torch.tensor([feature_len(61)]))
    clip = make_batch(tokenizer, processor, [[audio(7)]], use_audio_in_video=False)
    with pytest.raises(ValueError, match=r"audio #0 has 7 tokens in input_ids but its features give 6"):
        clip.layout(thinker_config, audio_feature_lengths=torch.tensor([feature_len(6)]))


def test_error_audio_inputs_count(tokenizer, processor, thinker_config):
    batch = make_batch(tokenizer, processor, [[audio(7), 1, audio(9)]], use_audio_in_video=False)
    with pytest.raises(ValueError, match=r"found audio #1 in input_ids but only 1 audio inputs"):
        batch.layout(thinker_config, audio_feature_lengths=torch.tensor([feature_len(7)]))
    extra = torch.tensor([feature_len(7), feature_len(9), feature_len(3)])
    with pytest.raises(ValueError, match=r"3 audio inputs were given but input_ids hold 2"):
        batch.layout(thinker_config, audio_feature_lengths=extra)


def test_error_silent_video_with_use_audio_in_video(silent_batch, thinker_config):
    with pytest.raises(ValueError, match=r"video #0 has no audio tokens but use_audio_in_video=True"):
        silent_batch.layout(thinker_config, use_audio_in_video=True)


def test_error_interleaved_video_with_flag_false(aiv_batch, thinker_config):
    with pytest.raises(ValueError, match=r"video #0 is interleaved with audio but use_audio_in_video=False"):
        aiv_batch.layout(thinker_config, use_audio_in_video=False)


@pytest.mark.parametrize("flag", [True, None])
def test_error_broken_interleaving(aiv_batch, thinker_config, flag):
    ids = aiv_batch.input_ids.clone()
    a_id, v_id = thinker_config.audio_token_id, thinker_config.video_token_id
    v_pos = torch.nonzero(ids[0] == v_id).squeeze(1)
    a_pos = torch.nonzero(ids[0] == a_id).squeeze(1)
    assert (int(a_pos[0]) - int(v_pos[0])) == 2  # V V A*50 V V A*10
    ids[0, v_pos[1]], ids[0, a_pos[0]] = a_id, v_id  # swap one video and one audio token: V A V A*49 ...
    broken = Batch(ids, aiv_batch.attention_mask, aiv_batch.rows, True)
    with pytest.raises(ValueError, match=r"not interleaved in 2-second chunks"):
        broken.layout(thinker_config, use_audio_in_video=flag)
    # audio of window 1 moved before the video of window 1: also rejected
    ids = aiv_batch.input_ids.clone()
    v_win1 = v_pos[2:].tolist()
    a_win1 = a_pos[50:].tolist()
    seq = ids[0, v_win1[0] : a_win1[-1] + 1].clone()
    ids[0, v_win1[0] : a_win1[-1] + 1] = torch.cat([seq[2:], seq[:2]])  # A*10 V V
    with pytest.raises(ValueError, match=r"interleaved"):
        Batch(ids, aiv_batch.attention_mask, aiv_batch.rows, True).layout(thinker_config, use_audio_in_video=flag)


def test_error_more_grids_than_videos(silent_batch, thinker_config):
    grids = torch.tensor([[2, 4, 4], [2, 2, 2]])
    with pytest.raises(ValueError, match=r"video_grid_thw has 2 videos but input_ids hold 1"):
        silent_batch.layout(thinker_config, video_grid_thw=grids, video_second_per_grid=[1.0, 1.0])


def test_error_more_videos_than_grids(tokenizer, processor, thinker_config):
    batch = make_batch(tokenizer, processor, [[video(1, 1, 1)], [video(1, 1, 1)]], use_audio_in_video=False)
    with pytest.raises(ValueError, match=r"row 1: found video #1 in input_ids but video_grid_thw has 1 entries"):
        batch.layout(thinker_config, video_grid_thw=torch.tensor([[1, 2, 2]]), video_second_per_grid=[1.0])


def test_error_missing_second_per_grid(silent_batch, thinker_config):
    with pytest.raises(ValueError, match=r"video_second_per_grid is required"):
        silent_batch.layout(thinker_config, video_second_per_grid=None)


def test_error_bad_shapes(silent_batch, thinker_config):
    with pytest.raises(ValueError, match=r"input_ids must be \(batch, seq_len\)"):
        build_layout(silent_batch.input_ids[0], thinker_config)
    with pytest.raises(ValueError, match=r"attention_mask shape"):
        silent_batch.layout(thinker_config, attention_mask=silent_batch.attention_mask[:, 1:])


# --------------------------------------------------------------------------------------------------------------
# Low fps (second_per_grid > 2), mask copies, and known bugs (xfail strict: they flip to failures once fixed)
# --------------------------------------------------------------------------------------------------------------


def test_low_fps_splits_a_frame_across_windows_like_get_rope_index(processor, thinker_config, thinker):
    """fps 0.5: get_chunked_index advances one chunk per token, so the processor splits grid 1 as V1 | V15."""
    inputs = omni_inputs(processor, [synth_clip(8.0, fps=0.5)], ["x"], use_audio_in_video=True, fps=0.5)
    assert inputs["video_grid_thw"].tolist() == [[2, 8, 8]]
    assert inputs["video_second_per_grid"].tolist() == [4.0]
    layout = build_layout(
        inputs["input_ids"],
        thinker_config,
        attention_mask=inputs["attention_mask"],
        video_grid_thw=inputs["video_grid_thw"],
        video_second_per_grid=inputs["video_second_per_grid"],
        feature_attention_mask=inputs["feature_attention_mask"],
        use_audio_in_video=True,
    )
    # expected: the windows are the model's chunks
    (seg,) = layout.rows[0].segments
    assert [w.num_video for w in seg.windows] == [16, 1, 15, 0]
    assert [w.num_audio for w in seg.windows] == [50, 50, 50, 50]
    assert [[(f.t, f.num_tokens) for f in w.frames] for w in seg.windows] == [[(0, 16)], [(1, 1)], [(1, 15)], []]
    split = seg.windows[2].frames[0]
    assert split.hw.tolist() == [[h, w] for h in range(4) for w in range(4)][1:]
    pos, _ = thinker.model.get_rope_index(
        inputs["input_ids"], None, inputs["video_grid_thw"], inputs["attention_mask"], True,
        inputs["feature_attention_mask"].sum(-1), inputs["video_second_per_grid"],
    )
    start = int(pos[0, 0, seg.start])
    assert (pos[1:, 0, split.positions] - start).T.tolist() == split.hw.tolist()


def test_low_fps_silent_video_windows_count_chunks(tokenizer, processor, thinker_config, thinker):
    """spg 4.0 (fps 0.5): one grid per chunk; the grid at 4 s (position 100) is in window 1 (index counts chunks)."""
    batch = make_batch(tokenizer, processor, [[2, video(3, 1, 1, spg=4.0), 2]], use_audio_in_video=False)
    layout = batch.layout(thinker_config)
    pos = batch.rope(thinker)
    (seg,) = layout.rows[0].segments
    assert [[f.t for f in w.frames] for w in seg.windows] == [[0], [1], [2]]
    assert len(seg.windows) == len(processor.get_chunked_index(np.arange(3) * 4.0 * PER_SECOND, CHUNK))
    st_idx = int(pos[0, 0, seg.start])
    assert [int(pos[0, 0, w.video[0]]) - st_idx for w in seg.windows] == [0, 100, 200]


def test_masks_are_copies(synth_inputs, thinker_config):
    """Editing a returned mask in place (e.g. a compressor marking kept tokens) must not touch the layout."""
    layout = _synth_layout(synth_inputs, thinker_config)
    for get in (layout.media_mask, layout.audio_mask, layout.video_mask):
        m = get()
        expected = m.clone()
        assert expected.any()
        m[:] = False
        assert torch.equal(get(), expected)
        assert torch.equal(get("cpu"), expected)


def test_error_second_per_grid_count(tokenizer, processor, thinker_config):
    batch = make_batch(tokenizer, processor, [[video(1, 1, 1), 1, video(1, 1, 1)]], use_audio_in_video=False)
    with pytest.raises(ValueError, match=r"video_second_per_grid has 1 entries but video_grid_thw has 2 videos"):
        batch.layout(thinker_config, video_second_per_grid=[1.0])
    with pytest.raises(ValueError, match=r"video_second_per_grid has 3 entries but video_grid_thw has 2 videos"):
        batch.layout(thinker_config, video_second_per_grid=[1.0, 1.0, 1.0])


# --------------------------------------------------------------------------------------------------------------
# 4. Property test against get_rope_index and get_chunked_index
# --------------------------------------------------------------------------------------------------------------


@st.composite
def media_item(draw, kind: str) -> Media:
    if kind == "audio":
        return audio(draw(st.integers(1, 260)))
    if kind == "image":
        return image(draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    t, h, w = draw(st.integers(1, 8)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    spg = draw(st.sampled_from([0.5, 1.0, 2.0]))
    if kind == "video":
        return video(t, h, w, spg=spg)
    return aiv(t, h, w, draw(st.integers(1, 260)), spg=spg)


@st.composite
def batches(draw):
    use_aiv = draw(st.booleans())
    kinds = ["aiv", "audio"] if use_aiv else ["video", "audio"]
    rows = []
    for _ in range(draw(st.integers(1, 3))):
        items = [draw(media_item(draw(st.sampled_from(kinds)))) for _ in range(draw(st.integers(1, 2)))]
        if draw(st.integers(0, 3)) == 0:  # sometimes an image somewhere
            items.insert(draw(st.integers(0, len(items))), draw(media_item("image")))
        row: list = [draw(st.integers(0, 6))]
        for m in items:
            row += [m, draw(st.integers(0, 3))]
        row.append(draw(st.integers(0, 6)))
        rows.append(row)
    side = draw(st.sampled_from(["left", "right"]))
    extra = draw(st.integers(0, 3))
    return rows, use_aiv, side, extra


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=batches())
def test_property_layout_matches_rope_index(case, tokenizer, processor, thinker_config, thinker):
    rows, use_aiv, side, extra = case
    batch = make_batch(tokenizer, processor, rows, use_audio_in_video=use_aiv, padding_side=side, extra_pad=extra)
    layout = batch.layout(thinker_config)
    check_layout(layout, batch, batch.rope(thinker), processor, thinker_config)
