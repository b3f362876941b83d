"""`dycoke`: DyCoke's temporal token merging on video grids and 1-second audio frames, exact budgets.

Hand-made layouts with crafted embeddings check which tokens survive (the pairing 1 -> 0, 2 -> 0, 3 -> 2);
real processor output through `sift.compress` checks budgets, exactness at retention 1, generate and
batching.
"""

from __future__ import annotations

import pytest
import torch

import sift
import sift.compressors.dycoke  # noqa: F401  (registration)
from sift.budget import allocate, keep_count, split_modalities, split_row
from sift.compressors import CompressionBatch
from sift.compressors.dycoke import DyCoke, audio_ttm_frames, ttm_reference, video_ttm_frames
from sift.layout import audio_tokens_from_features
from sift.testbed.media import load_clip, sample_clip_path, synth_clip
from sift.testbed.tiny import omni_inputs

D = 32  # hidden size of the crafted embeddings (cells / audio offsets get one-hot directions)


# --------------------------------------------------------------------------------------------------------------
# Hand-made sequences (same construction as tests/core/test_layout.py) and crafted embeddings
# --------------------------------------------------------------------------------------------------------------


def _feature_len(n_tokens: int) -> int:
    f = max(1, 4 * n_tokens - 8)
    while int(audio_tokens_from_features(torch.tensor(f))) != n_tokens:
        f += 1
    return f


def _make(tokenizer, processor, config, items, *, spg=1.0, use_aiv=None):
    """One row: text (int = that many 'x'), ("video", t, h, w), ("audio", n), ("aiv", t, h, w, n), ("image", h, w).

    h, w are merged-grid sizes. Returns (input_ids, layout).
    """
    text, grids, audio_lens = "", [], []
    for item in items:
        if isinstance(item, int):
            text += "x" * item
        elif item[0] == "video":
            _, t, h, w = item
            grids.append([t, 2 * h, 2 * w])
            text += "<|vision_bos|>" + "<|VIDEO|>" * (t * h * w) + "<|vision_eos|>"
        elif item[0] == "audio":
            audio_lens.append(_feature_len(item[1]))
            text += "<|audio_bos|>" + "<|AUDIO|>" * item[1] + "<|audio_eos|>"
        elif item[0] == "aiv":
            _, t, h, w, n = item
            grids.append([t, 2 * h, 2 * w])
            audio_lens.append(_feature_len(n))
            inner = processor.replace_video_with_audio_token(
                {"video_grid_thw": torch.tensor([grids[-1]]), "video_second_per_grid": [spg]},
                0,
                {"num_audio_tokens": [n]},
                0,
                position_id_per_seconds=25,
                seconds_per_chunk=2.0,
            )
            text += "<|vision_bos|>" + inner + "<|vision_eos|>"
        elif item[0] == "image":
            text += "<|vision_bos|>" + "<|IMAGE|>" * (item[1] * item[2]) + "<|vision_eos|>"
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    layout = sift.build_layout(
        ids,
        config,
        video_grid_thw=torch.tensor(grids) if grids else None,
        video_second_per_grid=torch.full((len(grids),), spg) if grids else None,
        audio_feature_lengths=torch.tensor(audio_lens) if audio_lens else None,
        use_audio_in_video=use_aiv,
    )
    return ids, layout


def _batch(ids, layout, embeds):
    B, L = ids.shape
    return CompressionBatch(
        embeds=embeds,
        layout=layout,
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        position_ids=torch.zeros(3, B, L, dtype=torch.long),
    )


def _e(*idx_weights) -> torch.Tensor:
    v = torch.zeros(D)
    for i, w in idx_weights:
        v[i] += w
    return v


def _crafted_frames(n_cells: int) -> list[torch.Tensor]:
    """4 frames of `n_cells` tokens: cell c of frame 0 is e_c.

    frame 1 = frame 0 except cells 1, 5 (flipped); frame 2 = frame 0 except cells 2, 6 (flipped);
    frame 3 = frame 2 except cells 3, 7 (turned by 45 degrees, a smaller change than any flip).
    Against its DyCoke partner each non-reference frame differs in exactly two cells; against any other
    frame of the group it differs more (or at least as much, earlier) elsewhere.
    """
    f0 = torch.stack([_e((c, 1.0)) for c in range(n_cells)])
    f1, f2 = f0.clone(), f0.clone()
    f1[[1, 5]] = -f0[[1, 5]]
    f2[[2, 6]] = -f0[[2, 6]]
    f3 = f2.clone()
    for c in (3, 7):
        f3[c] = _e((c, 1.0), (D - 1, 1.0))
    return [f0, f1, f2, f3]


def _kept_cells(keep_row: torch.Tensor, positions: torch.Tensor) -> list[int]:
    return torch.nonzero(keep_row[positions]).squeeze(1).tolist()


# --------------------------------------------------------------------------------------------------------------
# Pairing and selection on crafted embeddings
# --------------------------------------------------------------------------------------------------------------


def test_pairing_rule():
    assert [ttm_reference(i) for i in range(10)] == [-1, 0, 0, 2, -1, 4, 4, 6, -1, 8]
    assert [ttm_reference(i, group_size=2) for i in range(5)] == [-1, 0, -1, 2, -1]
    assert [ttm_reference(i, group_size=1) for i in range(3)] == [-1, -1, -1]


def test_video_group_keeps_changed_cells_of_each_frame_against_its_partner(tokenizer, processor, thinker_config):
    ids, layout = _make(tokenizer, processor, thinker_config, [3, ("video", 4, 3, 3), ("image", 2, 2), 2])
    frames = [f for w in layout.rows[0].windows for f in w.frames]
    assert [f.t for f in frames] == [0, 1, 2, 3]
    embeds = torch.randn(1, ids.shape[1], D)
    for f, e in zip(frames, _crafted_frames(9)):
        embeds[0, f.positions] = e
    # frame 0 whole (9) + 2 per non-reference frame: 15 of 36
    keep = DyCoke(retention=15 / 36).select(_batch(ids, layout, embeds)).keep[0]
    assert _kept_cells(keep, frames[0].positions) == list(range(9))
    assert _kept_cells(keep, frames[1].positions) == [1, 5]  # frame 1 vs frame 0
    assert _kept_cells(keep, frames[2].positions) == [2, 6]  # frame 2 vs frame 0 (vs frame 1: 1, 2)
    assert _kept_cells(keep, frames[3].positions) == [3, 7]  # frame 3 vs frame 2 (vs frame 0: 2, 6)
    # text, special and image tokens all survive
    assert keep[~layout.media_mask()[0]].all()
    assert int(keep[layout.media_mask()[0]].sum()) == 15


def test_audio_seconds_keep_changed_offsets_against_their_partner(tokenizer, processor, thinker_config):
    # 110 tokens: seconds of 25, 25, 25, 25 and a trailing 10 (the reference of a second group)
    ids, layout = _make(tokenizer, processor, thinker_config, [2, ("audio", 110), 4])
    (segment,) = layout.rows[0].segments
    audio = torch.cat([w.audio for w in segment.windows])
    seconds = [audio[i : i + 25] for i in range(0, 110, 25)]
    embeds = torch.randn(1, ids.shape[1], D)
    crafted = _crafted_frames(25)
    for k, pos in enumerate(seconds[:4]):
        # rolled by 10: changed offsets 11/15, 12/16, 13/17; seconds 2 and 3 lie in the second 2-s window
        embeds[0, pos] = torch.roll(crafted[k], shifts=10, dims=0)
    keep = DyCoke(retention=41 / 110).select(_batch(ids, layout, embeds)).keep[0]
    assert _kept_cells(keep, seconds[0]) == list(range(25))
    assert _kept_cells(keep, seconds[1]) == [11, 15]
    assert _kept_cells(keep, seconds[2]) == [12, 16]
    assert _kept_cells(keep, seconds[3]) == [13, 17]
    assert _kept_cells(keep, seconds[4]) == list(range(10))  # a new group's reference, kept whole
    assert int(keep[layout.media_mask()[0]].sum()) == 41


def test_audio_in_video_frames_follow_the_layout(tokenizer, processor, thinker_config):
    ids, layout = _make(tokenizer, processor, thinker_config, [1, ("aiv", 6, 2, 2, 130), 1], use_aiv=True)
    (segment,) = layout.rows[0].segments
    video = video_ttm_frames(segment)
    assert [f.reference for f in video] == [-1, 0, 0, 2, -1, 4]
    frames = [f for w in segment.windows for f in w.frames]
    assert all(torch.equal(a.positions, b.positions) for a, b in zip(video, frames))
    assert all(f.keys.tolist() == [0, 1, 2, 3] for f in video)
    audio = audio_ttm_frames(segment, base=100)
    assert [f.num_tokens for f in audio] == [25, 25, 25, 25, 25, 5]
    assert [f.reference for f in audio] == [-1, 100, 100, 102, -1, 104]
    # offsets 50.. are window 1's audio, after window 1's video tokens: frames follow the layout, not ids
    all_audio = torch.cat([w.audio for w in segment.windows])
    assert torch.equal(torch.cat([f.positions for f in audio]), all_audio)
    assert audio[2].keys.tolist() == list(range(25))
    assert audio[2].positions.tolist() == all_audio[50:75].tolist()
    assert not torch.equal(all_audio[50:75] - all_audio[25:50], torch.full((25,), 25))  # video in between


def test_grid_split_across_windows_is_one_frame(processor, thinker_config):
    inputs = omni_inputs(processor, [synth_clip(8.0, fps=0.5)], ["x"], use_audio_in_video=True, fps=0.5)
    layout = sift.build_layout(
        inputs["input_ids"],
        thinker_config,
        attention_mask=inputs["attention_mask"],
        video_grid_thw=inputs["video_grid_thw"],
        video_second_per_grid=inputs["video_second_per_grid"],
        feature_attention_mask=inputs["feature_attention_mask"],
    )
    (segment,) = layout.rows[0].segments
    parts = [f.t for w in segment.windows for f in w.frames]
    assert len(parts) > len(set(parts)), "the clip must split a grid across windows for this test"
    frames = video_ttm_frames(segment)
    h, w = segment.windows[0].frames[0].grid
    assert len(frames) == len(set(parts))
    assert all(f.keys.tolist() == list(range(h * w)) for f in frames)  # whole grids, cells in row-major order
    assert torch.equal(torch.cat([f.positions for f in frames]), torch.cat([w.video for w in segment.windows]))


def test_reference_frames_pruned_spatially_below_their_size(tokenizer, processor, thinker_config):
    ids, layout = _make(tokenizer, processor, thinker_config, [2, ("video", 8, 3, 3), 2])
    frames = [f for w in layout.rows[0].windows for f in w.frames]
    embeds = torch.randn(1, ids.shape[1], D)
    for f in frames:
        embeds[0, f.positions] = _e((0, 1.0))  # uniform frames ...
    embeds[0, frames[0].positions[[1, 4, 8]]] = torch.stack([_e((1, 1.0)), _e((2, 1.0)), _e((3, 1.0))])
    embeds[0, frames[4].positions[[0, 2, 7]]] = torch.stack([_e((4, 1.0)), _e((5, 1.0)), _e((6, 1.0))])
    # ... except the outliers of the two reference frames; budget 6 < 18 reference tokens: 3 + 3
    keep = DyCoke(retention=6 / 72).select(_batch(ids, layout, embeds)).keep[0]
    assert _kept_cells(keep, frames[0].positions) == [1, 4, 8]
    assert _kept_cells(keep, frames[4].positions) == [0, 2, 7]
    assert all(_kept_cells(keep, f.positions) == [] for i, f in enumerate(frames) if i % 4)


def test_floor_rule_and_row_split(tokenizer, processor, thinker_config):
    """Video: 2 reference grids (18 tokens) + 6 others; audio: seconds of 25 (reference), 25, 10 tokens."""
    ids, layout = _make(tokenizer, processor, thinker_config, [("aiv", 8, 3, 3, 60), 1], use_aiv=True)
    embeds = torch.randn(1, ids.shape[1], D)
    (segment,) = layout.rows[0].segments
    frames = [f for w in segment.windows for f in w.frames]
    seconds = audio_ttm_frames(segment)
    for retention in (0.05, 0.3, 0.33, 0.6):
        keep = DyCoke(retention=retention).select(_batch(ids, layout, embeds)).keep[0]
        keep_a, keep_v = split_row(layout.rows[0], retention)
        counts_v = [int(keep[f.positions].sum()) for f in frames]
        counts_a = [int(keep[f.positions].sum()) for f in seconds]
        assert sum(counts_v) == keep_v and sum(counts_a) == keep_a
        refs_v, others_v = [0, 4], [1, 2, 3, 5, 6, 7]
        if keep_v >= 18:
            assert [counts_v[i] for i in refs_v] == [9, 9]
            assert [counts_v[i] for i in others_v] == allocate(keep_v - 18, [9] * 6, [9] * 6)
        else:
            assert [counts_v[i] for i in refs_v] == allocate(keep_v, [9, 9], [9, 9])
        if keep_a >= 25:
            assert counts_a[0] == 25 and counts_a[1:] == allocate(keep_a - 25, [25, 10], [25, 10])
        else:
            assert counts_a == [keep_a, 0, 0]


def test_options_are_checked():
    with pytest.raises(ValueError):
        DyCoke(retention=0.5, group_size=0)
    with pytest.raises(ValueError):
        DyCoke(retention=0.5, audio_frame_tokens=2.5)
    assert isinstance(sift.get_compressor("dycoke", retention=0.3, group_size=2), DyCoke)


# --------------------------------------------------------------------------------------------------------------
# Real processor output through sift.compress
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inputs_by_kind(processor, synth_inputs):
    silent = omni_inputs(processor, [synth_clip(4.0, with_audio=False, seed=4)], ["x"], use_audio_in_video=False)
    bunny = omni_inputs(processor, [load_clip(sample_clip_path(), size=(112, 112))], ["Describe the scene."])
    text = processor.tokenizer.apply_chat_template(
        [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "Which pitch?"}]}],
        tokenize=False,
        add_generation_prompt=True,
    )
    audio = processor(text=[text], audio=[synth_clip(5.0).audio], return_tensors="pt")
    return {"synth": synth_inputs, "silent": silent, "bunny": bunny, "audio": audio}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["synth", "silent", "bunny", "audio"])
def test_exact_budgets_on_processor_output(thinker, inputs_by_kind, kind):
    inputs = inputs_by_kind[kind]
    for retention in (0.1, 0.25, 0.5, 0.8, 1.0):
        with sift.compress(thinker, "dycoke", retention=retention) as session:
            with torch.no_grad():
                thinker(**inputs)
        s = session.stats
        n_a, n_v = s.audio_before[0], s.video_before[0]
        assert (n_a > 0) == (kind != "silent") and (n_v > 0) == (kind != "audio")
        assert [s.audio_after[0], s.video_after[0]] == list(split_modalities(n_a, n_v, retention))
        assert s.audio_after[0] + s.video_after[0] == keep_count(n_a + n_v, retention)
        assert s.tokens_after[0] == s.tokens_before[0] - (n_a + n_v) + keep_count(n_a + n_v, retention)


def test_full_retention_is_bit_identical(thinker, synth_inputs):
    with torch.no_grad():
        ref = thinker(**synth_inputs).logits
    with sift.compress(thinker, "dycoke", retention=1.0) as session:
        with torch.no_grad():
            out = thinker(**synth_inputs).logits
    assert torch.equal(out, ref)
    assert session.stats.retention == 1.0


def test_reference_grids_whole_on_real_clip(thinker, inputs_by_kind):
    inputs = inputs_by_kind["bunny"]  # 5 grids of 16 tokens, 133 audio tokens
    with sift.compress(thinker, "dycoke", retention=0.5) as session:
        with torch.no_grad():
            thinker(**inputs)
    kept = session.stats.kept_positions[0]
    layout = sift.build_layout(
        inputs["input_ids"],
        thinker.config,
        attention_mask=inputs["attention_mask"],
        video_grid_thw=inputs["video_grid_thw"],
        video_second_per_grid=inputs["video_second_per_grid"],
        feature_attention_mask=inputs["feature_attention_mask"],
    )
    frames = [f for w in layout.rows[0].windows for f in w.frames]
    assert len(frames) == 5
    for t in (0, 4):  # the references of the two groups
        assert torch.isin(frames[t].positions, kept).all()
    assert all(0 < int(torch.isin(f.positions, kept).sum()) < f.num_tokens for t, f in enumerate(frames) if t % 4)
    audio = layout.rows[0].audio_positions()
    for start in (0, 100):  # seconds 0 and 4
        assert torch.isin(audio[start : start + 25], kept).all()


def test_generate_inside_context(thinker, synth_inputs):
    with sift.compress(thinker, "dycoke", retention=0.3) as session:
        with torch.no_grad():
            out = thinker.generate(**synth_inputs, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == synth_inputs["input_ids"].shape[1] + 4
    n = session.stats.audio_before[0] + session.stats.video_before[0]
    assert session.stats.audio_after[0] + session.stats.video_after[0] == keep_count(n, 0.3)


def test_batch_rows_select_as_alone(thinker, processor):
    clips = [synth_clip(4.0, tone_hz=440.0, seed=1), synth_clip(6.0, tone_hz=880.0, seed=2)]
    prompts = ["What moves?", "Which color is the square at the end?"]
    batch = omni_inputs(processor, clips, prompts)
    assert (batch["attention_mask"] == 0).any()
    compressor = sift.get_compressor("dycoke", retention=0.4)
    with sift.compress(thinker, compressor) as session:
        with torch.no_grad():
            thinker(**batch)
        batched = session.stats
        for row, (clip, prompt) in enumerate(zip(clips, prompts)):
            single = omni_inputs(processor, [clip], [prompt])
            with torch.no_grad():
                thinker(**single)
            pad = batch["input_ids"].shape[1] - single["input_ids"].shape[1]  # left padding
            assert torch.equal(batched.kept_positions[row] - pad, session.stats.kept_positions[0])
    assert batched.tokens_after[0] != batched.tokens_after[1]
