"""OmniSIFT as published: per-chunk audio top-k and the rho_audio / rho_video prune ratios.

The reference (dingyue772/OmniSIFT) keeps, per 2 s chunk, `n_p - int(n_p * rho_v)` tokens of each frame by
STVP saliency (first frame: distance to the frame mean; second: change from the same cell of the unpruned
first frame), then `n_a - int(n_a * rho_a)` audio tokens by the VGAS score against the chunk's kept video.
The selection below is recomputed here from those formulas and compared token for token.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import sift
from sift import hf_internals as hf
from sift.budget import keep_count
from sift.compressors.omnisift import OmniSIFT
from sift.selector import PUBLISHED_PREFIX, OmniSIFTConfig, OmniSIFTSelector


@pytest.fixture()
def published(thinker):
    """A selector converted by from_published from weights at the tiny model's hidden size."""
    torch.manual_seed(3)
    source = OmniSIFTSelector.from_config(thinker.config, init="random")
    return OmniSIFTSelector.from_published({PUBLISHED_PREFIX + k: v for k, v in source.vgas.state_dict().items()})


def _full_embeds(thinker, inputs) -> torch.Tensor:
    seen = {}
    handle = hf.language_model(thinker).register_forward_pre_hook(
        lambda m, a, kw: seen.update(embeds=kw["inputs_embeds"]), with_kwargs=True
    )
    try:
        with torch.no_grad():
            thinker(**inputs)
    finally:
        handle.remove()
    return seen["embeds"][0].float()


def _reference_keep(selector, emb, layout, rho_a: float, rho_v: float) -> set[int]:
    """The published rule, written from the paper's formulas (no sift selection code)."""
    kept: set[int] = set()
    for w in layout.rows[0].windows:
        video: list[int] = []
        first = None
        for frame in w.frames:
            pos = frame.positions
            x = emb[pos]
            if first is None:
                sal = 1 - F.cosine_similarity(x, x.mean(0, keepdim=True), dim=-1)
                first = x
            else:
                sal = 1 - F.cosine_similarity(x, first, dim=-1)
            n = pos.numel()
            video += pos[sal.topk(n - int(n * rho_v)).indices].tolist()
        kept |= set(video)
        if w.num_audio:
            a = emb[w.audio][None]
            v = emb[torch.tensor(sorted(video))][None]
            ones_a, ones_v = torch.ones(a.shape[:2], dtype=torch.bool), torch.ones(v.shape[:2], dtype=torch.bool)
            with torch.no_grad():
                score = torch.sigmoid(selector.vgas(a, v, ones_a, ones_v))[0]
            n = w.num_audio
            kept |= set(w.audio[score.topk(n - int(n * rho_a)).indices].tolist())
    return kept


def _kept_media(session, layout) -> set[int]:
    media = layout.media_mask(torch.device("cpu"))[0]
    kept = session.stats.kept_positions[0]
    return set(kept[media[kept]].tolist())


def test_published_selector_reproduces_the_reference_selection(thinker, synth_inputs, published):
    layout = sift.layout_of(synth_inputs, thinker.config)
    assert all(len(w.frames) == 2 for w in layout.rows[0].windows)  # real chunks: two frames each
    comp = sift.get_compressor("omnisift", selector=published)  # no retention: the reference's 0.3 / 0.7
    assert comp.retention is None and comp.ratios() == (0.3, 0.7) and comp.audio_rule == "chunk"
    with torch.no_grad(), sift.compress(thinker, comp) as session:
        thinker(**synth_inputs)
    expected = _reference_keep(published, _full_embeds(thinker, synth_inputs), layout, 0.3, 0.7)
    assert _kept_media(session, layout) == expected


def test_explicit_ratios_give_the_reference_counts_per_chunk_and_frame(thinker, synth_inputs):
    layout = sift.layout_of(synth_inputs, thinker.config)
    selector = OmniSIFTSelector.from_config(thinker.config)
    comp = OmniSIFT(selector=selector, rho_audio=0.5, rho_video=0.77, audio_topk="chunk")
    with torch.no_grad(), sift.compress(thinker, comp) as session:
        thinker(**synth_inputs)
    kept = _kept_media(session, layout)
    for w in layout.rows[0].windows:
        assert len(kept & set(w.audio.tolist())) == w.num_audio - int(w.num_audio * 0.5)
        for frame in w.frames:
            n = frame.num_tokens
            assert len(kept & set(frame.positions.tolist())) == n - int(n * 0.77)


def test_chunk_rule_with_a_retention_keeps_the_exact_budget(thinker, synth_inputs, published):
    layout = sift.layout_of(synth_inputs, thinker.config)
    with torch.no_grad(), sift.compress(thinker, "omnisift", retention=0.3, selector=published) as session:
        thinker(**synth_inputs)
    stats = session.stats
    n = stats.audio_before[0] + stats.video_before[0]
    assert stats.audio_after[0] + stats.video_after[0] == keep_count(n, 0.3)
    kept = _kept_media(session, layout)
    per_window = [len(kept & set(w.audio.tolist())) for w in layout.rows[0].windows]
    sizes = [w.num_audio for w in layout.rows[0].windows]
    assert sum(per_window) == stats.audio_after[0]
    assert max(abs(k / s - per_window[0] / sizes[0]) for k, s in zip(per_window, sizes) if s) < 0.1


@pytest.mark.slow
def test_clip_and_chunk_rules_differ_only_in_where_audio_is_ranked(thinker, synth_inputs):
    selector = OmniSIFTSelector.from_config(thinker.config, init="random")
    results = {}
    for rule in ("clip", "chunk"):
        with torch.no_grad(), sift.compress(thinker, "omnisift", retention=0.3, selector=selector, audio_topk=rule) as s:
            thinker(**synth_inputs)
        results[rule] = s.stats
    assert results["clip"].video_after == results["chunk"].video_after
    assert results["clip"].audio_after == results["chunk"].audio_after


def test_published_rule_survives_save_and_load(published, tmp_path):
    published.save_pretrained(tmp_path)
    config = OmniSIFTSelector.from_pretrained(tmp_path).config
    assert (config.audio_topk, config.rho_audio, config.rho_video) == ("chunk", 0.3, 0.7)
    assert OmniSIFTSelector.from_published(
        {PUBLISHED_PREFIX + k: v for k, v in published.vgas.state_dict().items()}, audio_topk="clip"
    ).config.audio_topk == "clip"


def test_budget_errors(thinker, published):
    selector = OmniSIFTSelector.from_config(thinker.config)
    with pytest.raises(TypeError, match="omnisift needs retention"):
        OmniSIFT(selector=selector)
    with pytest.raises(ValueError, match="either retention or rho_audio/rho_video"):
        OmniSIFT(selector=published, retention=0.3, rho_audio=0.3, rho_video=0.7)
    with pytest.raises(ValueError, match="both rho_audio and rho_video"):
        OmniSIFT(selector=selector, rho_audio=0.3)
    with pytest.raises(ValueError, match="rho_video is a prune ratio"):
        OmniSIFT(selector=selector, rho_audio=0.3, rho_video=1.0)
    with pytest.raises(ValueError, match="audio_topk"):
        OmniSIFT(selector=selector, retention=0.3, audio_topk="window")
    with pytest.raises(ValueError, match="audio_topk"):
        OmniSIFTConfig(audio_topk="window")
    with pytest.raises(ValueError, match="rho_audio/rho_video"):
        OmniSIFTConfig(rho_audio=0.3)


def _video_kept(thinker, inputs, layout, selector) -> set[int]:
    comp = OmniSIFT(selector=selector, rho_audio=0.5, rho_video=0.6)
    with torch.no_grad(), sift.compress(thinker, comp) as session:
        thinker(**inputs)
    video = {p for w in layout.rows[0].windows for f in w.frames for p in f.positions.tolist()}
    return _kept_media(session, layout) & video


def test_spatial_video_base_ranks_every_frame_by_distance_to_its_own_mean(thinker, synth_inputs):
    """video_base="spatial" (sift's option for moving cameras): no frame is scored by change over time."""
    layout = sift.layout_of(synth_inputs, thinker.config)
    emb = _full_embeds(thinker, synth_inputs)
    expected = set()
    for w in layout.rows[0].windows:
        for frame in w.frames:
            tokens = emb[frame.positions]
            distance = 1 - F.cosine_similarity(tokens, tokens.mean(0, keepdim=True), dim=-1)
            n = frame.num_tokens
            expected |= set(frame.positions[distance.topk(n - int(n * 0.6)).indices].tolist())
    spatial = _video_kept(thinker, synth_inputs, layout, OmniSIFTSelector.from_config(thinker.config, video_base="spatial"))
    temporal = _video_kept(thinker, synth_inputs, layout, OmniSIFTSelector.from_config(thinker.config))
    assert spatial == expected
    assert temporal != expected  # the default is the paper's temporal rule on second frames


def _z(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean()) / x.std()


def test_mixed_video_base_adds_standardised_spatial_and_temporal_saliency(thinker, synth_inputs):
    """video_base="mixed": z(distance to the frame mean) + z(change from the previous frame's same cell);
    a window's first frame has no previous frame and is ranked by the spatial rule."""
    layout = sift.layout_of(synth_inputs, thinker.config)
    emb = _full_embeds(thinker, synth_inputs)
    expected = set()
    for w in layout.rows[0].windows:
        previous = None
        for frame in w.frames:
            tokens = emb[frame.positions]
            score = 1 - F.cosine_similarity(tokens, tokens.mean(0, keepdim=True), dim=-1)
            if previous is not None:
                change = 1 - F.cosine_similarity(tokens, previous, dim=-1)
                score = _z(score) + _z(change)
            n = frame.num_tokens
            expected |= set(frame.positions[score.topk(n - int(n * 0.6)).indices].tolist())
            previous = tokens
    mixed = _video_kept(thinker, synth_inputs, layout, OmniSIFTSelector.from_config(thinker.config, video_base="mixed"))
    spatial = _video_kept(thinker, synth_inputs, layout, OmniSIFTSelector.from_config(thinker.config, video_base="spatial"))
    temporal = _video_kept(thinker, synth_inputs, layout, OmniSIFTSelector.from_config(thinker.config))
    assert mixed == expected
    assert mixed != spatial and mixed != temporal


def test_video_base_defaults_to_the_papers_rule_and_rejects_unknown_names():
    legacy = OmniSIFTConfig.from_dict({k: v for k, v in OmniSIFTConfig(hidden_size=8).to_dict().items() if k != "video_base"})
    assert legacy.video_base == "temporal"
    with pytest.raises(ValueError, match="video_base must be one of 'temporal', 'spatial', 'mixed', got 'motion'"):
        OmniSIFTConfig(hidden_size=8, video_base="motion")
