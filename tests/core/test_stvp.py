"""STVP: the spatial and temporal rules on hand-made frames, audio policies, exact budgets."""

from __future__ import annotations

import pytest
import torch

import sift
from sift.budget import keep_count, split_modalities
from sift.compressors.stvp import STVP
from sift.picks import uniform_pick
from sift.saliency import spatial_saliency, temporal_saliency


def _batch(interleaved, n_audio=50, grid=(2, 8, 8), seed=0):
    ids, layout = interleaved(n_audio=n_audio, grid=grid)
    embeds = torch.randn(1, ids.shape[1], 8, generator=torch.Generator().manual_seed(seed))
    return sift.CompressionBatch(
        embeds=embeds,
        layout=layout,
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        position_ids=torch.zeros(3, 1, ids.shape[1], dtype=torch.long),
    )


def test_saliency_formulas():
    tokens = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    mean = tokens.mean(0)
    expected = 1 - torch.nn.functional.cosine_similarity(tokens, mean[None], dim=-1)
    assert torch.allclose(spatial_saliency(tokens), expected)
    assert spatial_saliency(tokens).argmax() == 2  # the odd one out
    prev = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert torch.allclose(temporal_saliency(tokens, prev), torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)


def test_uniform_pick_spreads_evenly():
    assert uniform_pick(10, 5).tolist() == [1, 3, 5, 7, 9]
    assert uniform_pick(50, 1).tolist() == [25]
    assert uniform_pick(7, 0).tolist() == []


def test_first_frame_spatial_second_frame_temporal(interleaved):
    batch = _batch(interleaved)
    (window,) = batch.layout.rows[0].windows
    f0, f1 = window.frames
    e = batch.embeds
    e[0, f0.positions] = torch.tensor([1.0] + [0.0] * 7)
    e[0, f0.positions[[2, 7]]] = torch.tensor([0.0, 1.0] + [0.0] * 6)  # two distinct cells in frame 0
    e[0, f1.positions] = e[0, f0.positions]
    e[0, f1.positions[[5, 11]]] = torch.tensor([0.0, 0.0, 1.0] + [0.0] * 5)  # two changed cells in frame 1
    # 4 video tokens: 2 per frame; audio at the same retention
    n_a, n_v = 50, 32
    retention = (4 + 6.25) / (n_a + n_v)
    keep_a, keep_v = split_modalities(n_a, n_v, retention)
    sel = STVP(retention=retention).select(batch)
    assert int(sel.keep[0, window.video].sum()) == keep_v == 4
    assert torch.nonzero(sel.keep[0, f0.positions]).squeeze(1).tolist() == [2, 7]
    assert torch.nonzero(sel.keep[0, f1.positions]).squeeze(1).tolist() == [5, 11]
    assert int(sel.keep[0, window.audio].sum()) == keep_a
    kept_audio = torch.nonzero(sel.keep[0, window.audio]).squeeze(1)
    assert kept_audio.tolist() == uniform_pick(50, keep_a).tolist()


def test_audio_policy_none_keeps_all_audio(interleaved):
    batch = _batch(interleaved, n_audio=20, grid=(4, 8, 8))
    sel = STVP(retention=0.5, audio_policy="none").select(batch)
    row = batch.layout.rows[0]
    assert int(sel.keep[0, row.audio_positions()].sum()) == 20
    assert int(sel.keep[0, row.video_positions()].sum()) == keep_count(84, 0.5) - 20
    with pytest.raises(ValueError, match="audio_policy='uniform'"):
        STVP(retention=0.1, audio_policy="none").select(batch)
    with pytest.raises(ValueError, match="audio_policy"):
        STVP(retention=0.5, audio_policy="drop")
