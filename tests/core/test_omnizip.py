"""OmniZip: each stage on hand-made tensors, then exact budgets through sift.compress on real inputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import sift
from sift import hf_internals as hf
from sift.budget import keep_count, split_row
from sift.compressors.omnizip import OmniZip, dpc_knn_scores, merge_weights, window_video_ratios
from sift.testbed.media import synth_clip
from sift.saliency import AUDIO_SALIENCY
from sift.testbed.tiny import omni_inputs


def _unit(deg: float) -> list[float]:
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


def test_dpc_knn_keeps_one_peak_per_cluster():
    # two tight clusters of three, centres at 0 and 90 degrees, plus a stray point
    angles = [-4, 0, 4, 86, 90, 94, 200]
    tokens = torch.tensor([_unit(a) for a in angles])
    scores = dpc_knn_scores(tokens, k=2)
    top2 = set(scores.topk(2).indices.tolist())
    assert top2 == {1, 4}
    # by hand for the 0-degree centre: its 2 nearest are at 4 degrees, so rho = exp(-(1 - cos 4deg))
    rho = math.exp(-(1 - math.cos(math.radians(4))))
    # it has no denser token (the 90-degree centre ties), so delta is its largest distance (to 200 deg)
    delta = 1 - math.cos(math.radians(200))
    assert scores[1].item() == pytest.approx(rho * delta, rel=1e-5)


def test_dpc_knn_delta_is_distance_to_denser_token():
    tokens = torch.tensor([_unit(a) for a in [0, 3, 6, 30]])
    scores = dpc_knn_scores(tokens, k=1)
    # token 3 (30 deg) is the sparsest; its nearest denser token is at 6 deg
    rho3 = math.exp(-(1 - math.cos(math.radians(24))))
    assert scores[3].item() == pytest.approx(rho3 * (1 - math.cos(math.radians(24))), rel=1e-5)


def test_window_ratios_follow_audio_retention_and_hit_budget_exactly():
    sizes = [10, 10, 10]
    # S_a = 1, 0.5, 0 -> 0.35, 0.55, 0.75; the target equal to their weighted sum needs no rescale
    same = window_video_ratios([1.0, 0.5, 0.0], sizes, 16.5, 0.35, 0.75)
    assert same == pytest.approx([0.35, 0.55, 0.75])
    scaled = window_video_ratios([1.0, 0.5, 0.0], sizes, 18.0, 0.35, 0.75)
    assert sum(r * s for r, s in zip(scaled, sizes)) == pytest.approx(18.0, abs=1e-9)
    assert scaled == pytest.approx([0.35 * 18 / 16.5, 0.55 * 18 / 16.5, 0.75 * 18 / 16.5])  # nothing frozen
    odd = window_video_ratios([0.2, 0.9, 0.4, 0.7, 0.1], [288] * 4 + [144], 0.6 * 1296, 0.35, 0.75)
    assert sum(r * s for r, s in zip(odd, [288] * 4 + [144])) == pytest.approx(0.6 * 1296, abs=1e-6)


def test_merge_weights_are_softmax():
    w = merge_weights(torch.tensor([1.0, 0.0]))
    assert w.tolist() == pytest.approx([math.e / (1 + math.e), 1 / (1 + math.e)])


def test_anchor_merge_by_hand(interleaved):
    ids, layout = interleaved(n_audio=40, grid=(2, 4, 4))
    (window,) = layout.rows[0].windows
    D = 8
    e = torch.eye(D)
    embeds = torch.zeros(1, ids.shape[1], D)
    audio = window.audio
    # tokens 0-14 point along e0, 15-29 along e1, 30-39 along e3; each has an e2 component c_i
    c = torch.linspace(0.0, 0.5, 40)
    for i, pos in enumerate(audio.tolist()):
        base = e[0] if i < 15 else (e[1] if i < 30 else e[3])
        embeds[0, pos] = base + c[i] * e[2]
    embeds[0, window.video] = e[2]  # the window's video: pure e2, so cross-modal score grows with c_i
    saliency = torch.arange(40, dtype=torch.float)  # tokens 30..39 are the most salient
    batch = sift.CompressionBatch(
        embeds=embeds,
        layout=layout,
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        position_ids=torch.zeros(3, 1, ids.shape[1], dtype=torch.long),
        signals={AUDIO_SALIENCY: [saliency]},
    )
    # keep 12 audio tokens: 2 anchors (round(0.05 * 40)) + the 10 most salient
    comp = OmniZip(retention=1.0)
    kept, merges = comp._select_audio(batch, 0, layout.rows[0].segments[0], 12)
    assert kept.tolist() == sorted(audio[[0, 15] + list(range(30, 40))].tolist())
    # anchors are rest[0] and rest[15] of the 30 non-dominant tokens (step 30 // 2)
    by_anchor = {a: (m, w) for a, m, w in merges}
    assert set(by_anchor) == {int(audio[0]), int(audio[15])}
    members, weights = by_anchor[int(audio[0])]
    # members of anchor 0 are tokens 1..14; the top 3 by cosine to e2 are the largest c: 14, 13, 12
    assert members.tolist() == audio[[14, 13, 12]].tolist()
    cos = torch.stack([F.cosine_similarity(embeds[0, p], e[2], dim=0) for p in members])
    assert torch.allclose(weights, torch.softmax(cos, 0), atol=1e-6)
    # applied by select(): anchor <- (anchor + sum w_i m_i) / 2
    expected = (embeds[0, audio[0]] + (weights[:, None] * embeds[0, members]).sum(0)) / 2
    # the same through select(): rho_audio 0.75 keeps 10 + 2 anchors of 40, rho_video 0.5 keeps 4 of 8
    sel = OmniZip(rho_audio=0.75, rho_video=0.5).select(batch)
    assert int(sel.keep[0, audio].sum()) == 12 and int(sel.keep[0, window.video].sum()) == 4
    rows, positions, values = sel.updates
    assert rows.tolist() == [0, 0] and sorted(positions.tolist()) == sorted([int(audio[0]), int(audio[15])])
    assert torch.allclose(values[positions.tolist().index(int(audio[0]))], expected, atol=1e-6)
    assert sel.embeds is None  # only the two anchors change: no full copy of the embeddings
    assert OmniZip(rho_audio=0.75, rho_video=0.5, merge=False).select(batch).updates is None


def test_odd_frame_keeps_the_changed_cells(interleaved):
    ids, layout = interleaved(n_audio=50, grid=(2, 8, 8))
    (window,) = layout.rows[0].windows
    f0, f1 = window.frames
    embeds = torch.randn(1, ids.shape[1], 8, generator=torch.Generator().manual_seed(0))
    embeds[0, f1.positions] = embeds[0, f0.positions]
    changed = [3, 9]
    embeds[0, f1.positions[changed]] = -embeds[0, f1.positions[changed]]
    batch = sift.CompressionBatch(
        embeds=embeds,
        layout=layout,
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        position_ids=torch.zeros(3, 1, ids.shape[1], dtype=torch.long),
        signals={AUDIO_SALIENCY: [torch.rand(50)]},
    )
    comp = OmniZip(retention=1.0, merge=False)
    keep = torch.zeros(1, ids.shape[1], dtype=torch.bool)
    # 4 tokens for a window of two 16-token frames: 2 each (one ratio per window, as in the reference)
    comp._select_video(batch, 0, layout.rows[0], 4, {id(window): 50}, keep)
    assert keep[0, f1.positions].tolist() == [i in changed for i in range(16)]
    expected_f0 = dpc_knn_scores(embeds[0, f0.positions], 5).topk(2).indices.sort().values
    assert torch.nonzero(keep[0, f0.positions]).squeeze(1).tolist() == expected_f0.tolist()


@pytest.mark.parametrize("retention", [0.1, 0.25, 0.35, 0.45, 0.7, 1.0])
def test_a_retention_splits_audio_and_video_as_the_presets_do(thinker, processor, retention):
    """The exact total is tests/core/test_methods.py's; here: audio keeps 0.3 more of its tokens than video."""
    inputs = omni_inputs(processor, [synth_clip(7.0, tone_hz=550.0)], ["What sound?"])
    with sift.compress(thinker, "omnizip", retention=retention) as session, torch.no_grad():
        thinker(**inputs)
    s = session.stats
    layout = sift.layout_of(inputs, thinker.config)
    assert (s.audio_after[0], s.video_after[0]) == split_row(layout.rows[0], retention, 0.3)


def test_presets_match_reference_budget(thinker, synth_inputs):
    with sift.compress(thinker, OmniZip.preset("45%")) as session, torch.no_grad():
        thinker(**synth_inputs)
    s = session.stats
    n_a, n_v = s.audio_before[0], s.video_before[0]
    assert s.audio_after[0] == keep_count(n_a, 0.7) + round(0.05 * n_a)  # anchors on top, as in the reference
    assert s.video_after[0] == keep_count(n_v, 0.4)


def test_video_without_audio_falls_back_to_video_only(thinker, processor):
    inputs = omni_inputs(processor, [synth_clip(6.0, with_audio=False)], ["What moves?"], use_audio_in_video=False)
    with sift.compress(thinker, "omnizip", retention=0.3) as session, torch.no_grad():
        thinker.generate(**inputs, max_new_tokens=3, do_sample=False)
    s = session.history[0]
    assert s.audio_before == [0] and s.video_after[0] == keep_count(s.video_before[0], 0.3)


@pytest.mark.slow
def test_batch_rows_select_as_alone(thinker, processor):
    clips = [synth_clip(4.0, seed=1), synth_clip(8.0, seed=2, tone_hz=300.0)]
    prompts = ["a?", "b?"]
    batch = omni_inputs(processor, clips, prompts)
    with sift.compress(thinker, "omnizip", retention=0.35) as session, torch.no_grad():
        logits = thinker(**batch).logits
        together = session.stats
        for row, clip in enumerate(clips):
            alone = omni_inputs(processor, [clip], [prompts[row]])
            single = thinker(**alone).logits
            offset = batch["input_ids"].shape[1] - batch["attention_mask"][row].sum()
            kept_alone = session.stats.kept_positions[0] + offset
            assert torch.equal(together.kept_positions[row], kept_alone)
            assert torch.allclose(logits[row, -1], single[0, -1], atol=1e-5)


def test_argument_errors():
    with pytest.raises(ValueError, match="both"):
        OmniZip(rho_audio=0.3)
    with pytest.raises(ValueError, match="either retention or rho"):
        OmniZip(retention=0.5, rho_audio=0.3, rho_video=0.6)
    with pytest.raises(ValueError, match="rho_min"):
        OmniZip(rho_min=0.8, rho_max=0.5)
    with pytest.raises(ValueError, match="unknown preset"):
        OmniZip.preset("50%")


def test_audio_keeps_follow_encoder_saliency(thinker, synth_inputs):
    comp = OmniZip(retention=0.5, merge=False)
    with sift.compress(thinker, comp) as session, torch.no_grad():
        thinker(**synth_inputs)
    (saliency,) = session.signals[AUDIO_SALIENCY]
    audio_positions = (synth_inputs["input_ids"][0] == thinker.config.audio_token_id).nonzero().squeeze(1)
    assert saliency.numel() == audio_positions.numel()
    k = session.stats.audio_after[0]
    expected = audio_positions[torch.sort(saliency, descending=True, stable=True).indices[:k]].sort().values
    kept = session.stats.kept_positions[0]
    assert torch.equal(kept[torch.isin(kept, audio_positions)], expected)


def test_merged_anchors_reach_the_decoder(thinker, synth_inputs):
    """The plug-in writes the merged anchors into the shrunk decoder input, at the anchors' slots."""
    seen = {}

    def record(module, args, kwargs):
        seen["embeds"] = kwargs["inputs_embeds"]

    comp = OmniZip(retention=0.4)
    original_select = comp.select
    captured = {}

    def select(batch):
        sel = original_select(batch)
        captured["sel"], captured["embeds"] = sel, batch.embeds
        return sel

    comp.select = select
    with torch.no_grad(), sift.compress(thinker, comp) as session:
        h = hf.language_model(thinker).register_forward_pre_hook(record, with_kwargs=True)
        thinker(**synth_inputs)
        h.remove()
    rows, positions, values = captured["sel"].updates
    kept = session.stats.kept_positions[0].tolist()
    for pos, value in zip(positions.tolist(), values):
        assert torch.equal(seen["embeds"][0, kept.index(pos)], value)
    others = [i for i, pos in enumerate(kept) if pos not in positions.tolist()]
    assert torch.equal(seen["embeds"][0, others], captured["embeds"][0, [kept[i] for i in others]])
