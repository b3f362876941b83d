"""OmniSelect (sift.compressors.omniselect): question, decision, split, temporal spread, in-window rules, and
exact budgets through sift.compress on real processor output of the tiny Qwen2.5-Omni."""

from __future__ import annotations

import math

import pytest
import torch

import sift
import sift.compressors.omniselect  # noqa: F401  (registers "omniselect")
from sift.budget import keep_count, split_modalities
from sift.compressors.omniselect import (
    OmniSelect,
    self_similarity,
    special_ids_from_config,
    spread_keep_ratios,
)
from sift.testbed.media import load_clip, sample_clip_path, synth_clip
from sift.saliency import AUDIO_SALIENCY
from sift.testbed.tiny import omni_inputs

RETENTIONS = [round(0.1 * i, 1) for i in range(1, 11)]


# ---------------------------------------------------------------------------- helpers
def _layout(config, inputs):
    return sift.build_layout(
        inputs["input_ids"],
        config,
        attention_mask=inputs["attention_mask"],
        video_grid_thw=inputs.get("video_grid_thw"),
        video_second_per_grid=inputs.get("video_second_per_grid"),
        feature_attention_mask=inputs.get("feature_attention_mask"),
        use_audio_in_video=inputs.get("use_audio_in_video"),
    )


def _batch(config, inputs, embeds=None, saliency=None, dim=16, seed=0):
    """A hand-made CompressionBatch on real processor output (embeddings and saliency made up)."""
    layout = _layout(config, inputs)
    ids = inputs["input_ids"]
    if embeds is None:
        embeds = torch.randn(*ids.shape, dim, generator=torch.Generator().manual_seed(seed))
    signals = {}
    if saliency is not None:
        signals[AUDIO_SALIENCY] = saliency
    return sift.CompressionBatch(
        embeds=embeds,
        layout=layout,
        input_ids=ids,
        attention_mask=inputs["attention_mask"],
        position_ids=torch.zeros(3, *ids.shape, dtype=torch.long),
        signals=signals,
    )


def _random_saliency(inputs, seed=0):
    g = torch.Generator().manual_seed(seed)
    counts = sift.layout.audio_tokens_from_features(inputs["feature_attention_mask"].sum(-1)).tolist()
    return [torch.rand(n, generator=g) for n in counts]


def _fixed(audio, video):
    """A relevance callable returning the given per-window scores."""

    def relevance(batch, b):
        return torch.tensor(audio, dtype=torch.float32), torch.tensor(video, dtype=torch.float32)

    return relevance


def _kept_per_window(keep_row, windows):
    audio = [int(keep_row[w.audio].sum()) for w in windows]
    video = [int(keep_row[w.video].sum()) if w.num_video else 0 for w in windows]
    return audio, video


@pytest.fixture(scope="module")
def clip6_inputs(processor):
    """6 s synthetic clip with audio: 3 windows of 50 audio + 2 frames x 16 video tokens."""
    return omni_inputs(processor, [synth_clip(6.0, seed=3)], ["Which sound is heard?"])


@pytest.fixture(scope="module")
def silent_inputs(processor):
    """4 s silent clip (use_audio_in_video=False): 2 windows of 2 frames (temporal grids) x 16 video tokens."""
    return omni_inputs(processor, [synth_clip(4.0, with_audio=False)], ["What moves?"], use_audio_in_video=False)


# ---------------------------------------------------------------------------- question
def test_question_is_the_user_text_after_the_media(thinker_config, tokenizer, processor, clip6_inputs):
    comp = OmniSelect(retention=0.5)
    batch = _batch(thinker_config, clip6_inputs)
    with pytest.raises(RuntimeError, match="configure"):
        comp.question_positions(batch, 0)
    comp.configure(thinker_config)
    q = comp.question_positions(batch, 0)
    assert tokenizer.decode(clip6_inputs["input_ids"][0, q]) == "Which sound is heard?"
    assert int(q.min()) > batch.layout.rows[0].segments[-1].end  # after <|vision_eos|>
    # an empty prompt leaves no question (template tokens and the generation prompt are not a question)
    empty = omni_inputs(processor, [synth_clip(2.0)], [""])
    assert comp.question_positions(_batch(thinker_config, empty), 0).numel() == 0
    ids = special_ids_from_config(thinker_config)
    assert ids.floor == tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert ids.end_of_turn == (tokenizer.convert_tokens_to_ids("<|im_end|>"),)


# ---------------------------------------------------------------------------- decision and split
@pytest.mark.parametrize(
    "audio, video, expected",
    [
        ([0.1, 0.1, 0.1], [0.5, 0.6, 0.7], "video"),
        ([0.9, 0.2, 0.7], [0.1, 0.1, 0.1], "audio"),
        ([0.30, 0.30, 0.30], [0.31, 0.32, 0.30], "uniform"),  # gap 0.01 < margin 0.04
    ],
)
def test_decision_and_modality_split(thinker_config, clip6_inputs, audio, video, expected):
    comp = OmniSelect(retention=0.4, relevance=_fixed(audio, video)).configure(thinker_config)
    batch = _batch(thinker_config, clip6_inputs, saliency=_random_saliency(clip6_inputs))
    keep = comp.select(batch).keep
    assert comp.last_decisions == [expected]
    row = batch.layout.rows[0]
    n_a, n_v = row.num_audio, row.num_video
    kept_a, kept_v = int(keep[0, row.audio_positions()].sum()), int(keep[0, row.video_positions()].sum())
    assert kept_a + kept_v == keep_count(n_a + n_v, 0.4)
    if expected == "video":  # the leading modality keeps `lead_advantage` more of its tokens
        assert kept_v == split_modalities(n_v, n_a, 0.4, 0.2)[0]
        assert kept_v / n_v > kept_a / n_a
    elif expected == "audio":
        assert kept_a == split_modalities(n_a, n_v, 0.4, 0.2)[0]
    else:  # the reference's fixed split: audio prunes 40%, video 60% (advantage 0.2)
        assert kept_a == split_modalities(n_a, n_v, 0.4, 0.2)[0]
    assert bool(keep[0, ~batch.layout.media_mask()[0]].all())  # text and specials survive
    # a wider margin turns the same relevance into uniform pruning
    wide = OmniSelect(retention=0.4, relevance=_fixed(audio, video), margin=10.0).configure(thinker_config)
    wide.select(batch)
    assert wide.last_decisions == ["uniform"]


def test_no_question_means_uniform_and_relevance_is_not_asked(thinker_config, processor):
    inputs = omni_inputs(processor, [synth_clip(4.0)], [""])

    def never(batch, b):
        raise AssertionError("relevance must not be computed without a question")

    comp = OmniSelect(retention=0.3, relevance=never).configure(thinker_config)
    comp.select(_batch(thinker_config, inputs, saliency=_random_saliency(inputs)))
    assert comp.last_decisions == ["uniform"]
    assert comp.last_relevance == [None]


def test_relevance_must_match_the_windows(thinker_config, clip6_inputs):
    comp = OmniSelect(retention=0.5, relevance=_fixed([0.1, 0.2], [0.3, 0.4])).configure(thinker_config)
    with pytest.raises(ValueError, match="one per window"):
        comp.select(_batch(thinker_config, clip6_inputs, saliency=_random_saliency(clip6_inputs)))


# ---------------------------------------------------------------------------- temporal spread
def test_spread_is_sigmoid_of_negative_zscore_rescaled():
    rel = torch.tensor([0.2, 0.5, 0.9, 0.4])
    sizes = [32, 32, 32, 32]
    keep = 64
    ratios = spread_keep_ratios(rel, sizes, keep)
    drops = [1 - r for r in ratios]
    assert sum(s * d for s, d in zip(sizes, drops)) == pytest.approx(sum(sizes) - keep, abs=1e-6)
    z = (rel - rel.mean()) / rel.std()
    base = torch.sigmoid(-z)
    for d, b in zip(drops, base.tolist()):  # no window clipped here: drops are exactly proportional
        assert d / drops[0] == pytest.approx(b / float(base[0]), rel=1e-5)
    assert sorted(range(4), key=lambda i: ratios[i]) == [0, 3, 1, 2]  # more relevant -> keeps more
    # constant relevance or a single window: equal ratios; empty windows get nothing
    assert spread_keep_ratios(torch.tensor([0.3, 0.3]), [10, 30], 20) == pytest.approx([0.5, 0.5])
    assert spread_keep_ratios(torch.tensor([1.0, float("nan")]), [10, 0], 4) == pytest.approx([0.4, 0.0])


def test_leading_modality_follows_relevance_other_is_uniform(thinker_config, clip6_inputs):
    saliency = _random_saliency(clip6_inputs)
    windows = _layout(thinker_config, clip6_inputs).rows[0].windows
    for retention in (0.2, 0.35, 0.5):
        video_led = OmniSelect(retention=retention, relevance=_fixed([0.0] * 3, [0.2, 0.9, 0.5]))
        keep = video_led.configure(thinker_config).select(_batch(thinker_config, clip6_inputs, saliency=saliency)).keep
        assert video_led.last_decisions == ["video"]
        audio, video = _kept_per_window(keep[0], windows)
        assert video[1] > video[2] > video[0], video
        assert max(audio) - min(audio) <= 1, audio  # the other modality: uniform over equal windows

        audio_led = OmniSelect(retention=retention, relevance=_fixed([0.9, 0.2, 0.5], [0.0] * 3))
        keep = audio_led.configure(thinker_config).select(_batch(thinker_config, clip6_inputs, saliency=saliency)).keep
        assert audio_led.last_decisions == ["audio"]
        audio, video = _kept_per_window(keep[0], windows)
        assert audio[0] > audio[2] > audio[1], audio
        per_frame = [int(keep[0, f.positions].sum()) for w in windows for f in w.frames]
        assert max(per_frame) - min(per_frame) <= 1, per_frame  # uniform over equal frames
        n = sum(w.num_tokens for w in windows)
        assert sum(audio) + sum(video) == keep_count(n, retention)


# ---------------------------------------------------------------------------- inside a window
def test_self_similarity_scores():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert torch.allclose(self_similarity(x), torch.tensor([0.5, 0.5, 0.0]))
    assert self_similarity(torch.ones(1, 4)).tolist() == [0.0]


def test_video_keeps_least_redundant_tokens_per_frame(thinker_config, silent_inputs):
    layout = _layout(thinker_config, silent_inputs)
    frames = [f for w in layout.rows[0].windows for f in w.frames]
    assert len(frames) == 4 and all(f.num_tokens == 16 for f in frames)
    dim = 32
    g = torch.Generator().manual_seed(0)
    embeds = torch.randn(1, silent_inputs["input_ids"].shape[1], dim, generator=g)
    common = torch.zeros(dim)
    common[0] = 1.0
    unique = {}
    for i, frame in enumerate(frames):
        embeds[0, frame.positions] = common + 0.01 * torch.randn(frame.num_tokens, dim, generator=g)
        picks = frame.positions[[3 + i, 11 - i]]
        for j, p in enumerate(picks):
            v = torch.zeros(dim)
            v[2 + 2 * i + j] = 1.0  # orthogonal to the common token and to each other
            embeds[0, p] = v
        unique[i] = set(picks.tolist())
    # 2 of 16 per frame, constant relevance -> equal spread
    comp = OmniSelect(retention=2 / 16, relevance=_fixed([0.0, 0.0], [0.5, 0.5])).configure(thinker_config)
    keep = comp.select(_batch(thinker_config, silent_inputs, embeds=embeds)).keep
    assert comp.last_decisions == ["video"]  # the only modality of the row leads
    for i, frame in enumerate(frames):
        assert set(frame.positions[keep[0, frame.positions]].tolist()) == unique[i]


def test_audio_keeps_top_saliency_per_window(thinker_config, clip6_inputs):
    saliency = _random_saliency(clip6_inputs, seed=5)
    comp = OmniSelect(retention=0.3).configure(thinker_config)
    batch = _batch(thinker_config, clip6_inputs, saliency=saliency)
    keep = comp.select(batch).keep
    for w in batch.layout.rows[0].windows:
        kept = keep[0, w.audio]
        k = int(kept.sum())
        assert 0 < k < w.num_audio
        scores = saliency[w.audio_item][w.audio_offset : w.audio_offset + w.num_audio]
        assert set(torch.nonzero(kept).flatten().tolist()) == set(scores.topk(k).indices.tolist())
    with pytest.raises(RuntimeError, match="audio_saliency"):
        comp.select(_batch(thinker_config, clip6_inputs))
    # nothing to prune: no saliency needed
    OmniSelect(retention=1.0).configure(thinker_config).select(_batch(thinker_config, clip6_inputs))


def test_registry_and_arguments():
    comp = sift.get_compressor("omniselect", retention=0.3, margin=0.1, lead_advantage=0.3)
    assert isinstance(comp, OmniSelect) and comp.margin == 0.1 and comp.name == "omniselect"
    with pytest.raises(ValueError, match="margin"):
        OmniSelect(retention=0.5, margin=-1.0)
    with pytest.raises(ValueError, match="lead_advantage"):
        OmniSelect(retention=0.5, lead_advantage=1.0)
    with pytest.raises(TypeError, match="relevance"):
        OmniSelect(retention=0.5, relevance="audioclip")


# ---------------------------------------------------------------------------- through sift.compress
@pytest.fixture(scope="module")
def real_inputs(processor):
    """Real processor output: synth clip with audio, a silent clip, bigbuckbunny, a padded batch of two, audio alone."""
    bunny = load_clip(sample_clip_path(), size=(112, 112))
    speech = processor.tokenizer.apply_chat_template(
        [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "Which pitch?"}]}],
        tokenize=False,
        add_generation_prompt=True,
    )
    return {
        "audio": processor(text=[speech], audio=[synth_clip(5.0).audio], return_tensors="pt"),
        "synth": omni_inputs(processor, [synth_clip(4.0)], ["What sound is playing?"]),
        "silent": omni_inputs(
            processor, [synth_clip(4.0, with_audio=False)], ["What moves?"], use_audio_in_video=False
        ),
        "bunny": omni_inputs(processor, [bunny], ["What animal appears?"]),
        "batch": omni_inputs(
            processor, [synth_clip(2.0, seed=1), synth_clip(5.0, seed=2)], ["", "Which color is the square?"]
        ),
    }


@pytest.mark.slow
@pytest.mark.parametrize("name", ["synth", "silent", "bunny", "batch", "audio"])
def test_exact_budgets_through_compress(thinker, real_inputs, name):
    inputs = real_inputs[name]
    layout = _layout(thinker.config, inputs)
    for retention in RETENTIONS if name in ("synth", "silent", "bunny") else (0.1, 0.45, 1.0):
        comp = OmniSelect(retention=retention)
        with sift.compress(thinker, comp) as session, torch.no_grad():
            thinker(**inputs)
        stats = session.stats
        assert len(comp.last_decisions) == layout.batch_size
        for b, row in enumerate(layout.rows):
            n = row.num_tokens
            kept_media = stats.audio_after[b] + stats.video_after[b]
            assert kept_media == keep_count(n, retention), (name, retention, b)
            assert stats.tokens_after[b] - kept_media == stats.tokens_before[b] - n  # text all kept
            kept = session.stats.kept_positions[b]
            frames = [f for w in row.windows for f in w.frames]
            audio_windows = [w for w in row.windows if w.num_audio]
            # floors: a token per frame, then per audio window, while the budget allows
            floor_v = min(len(frames), keep_count(n, retention))
            assert stats.video_after[b] >= floor_v
            assert stats.audio_after[b] >= min(len(audio_windows), keep_count(n, retention) - floor_v)
            if stats.video_after[b] >= len(frames):
                assert all(bool(torch.isin(f.positions, kept).any()) for f in frames)
            if stats.audio_after[b] >= len(audio_windows):
                assert all(bool(torch.isin(w.audio, kept).any()) for w in audio_windows)
            if retention == 1.0:
                assert kept_media == n
    if name == "batch":
        assert comp.last_decisions[0] == "uniform"  # the first row has an empty prompt
        assert comp.last_decisions[1] in ("audio", "video", "uniform")
    elif name in ("silent", "audio"):  # a row's only modality leads
        assert comp.last_decisions == ["video" if name == "silent" else "audio"]


def test_batch_rows_select_as_alone(thinker, processor, real_inputs):
    batch = real_inputs["batch"]
    comp = OmniSelect(retention=0.3)
    with sift.compress(thinker, comp) as session, torch.no_grad():
        thinker(**batch)
        kept_batch, decisions = session.stats.kept_positions, comp.last_decisions
        clips, prompts = [synth_clip(2.0, seed=1), synth_clip(5.0, seed=2)], ["", "Which color is the square?"]
        for row, (clip, prompt) in enumerate(zip(clips, prompts)):
            alone = omni_inputs(processor, [clip], [prompt])
            thinker(**alone)
            shift = batch["input_ids"].shape[1] - alone["input_ids"].shape[1]  # left padding
            assert torch.equal(kept_batch[row] - shift, session.stats.kept_positions[0])
            assert comp.last_decisions == [decisions[row]]


def test_generate_inside_context_uses_encoder_saliency(thinker, real_inputs):
    inputs = real_inputs["synth"]
    tower = thinker.model.audio_tower
    hooks_before = len(tower._forward_hooks)
    comp = OmniSelect(retention=0.3)
    seen = {}
    original = comp._select_audio

    def spy(batch, b, windows, keep_a, rel):
        seen["saliency"] = batch.signals.get(AUDIO_SALIENCY)
        return original(batch, b, windows, keep_a, rel)

    comp._select_audio = spy
    with sift.compress(thinker, comp) as session, torch.no_grad():
        assert len(tower._forward_hooks) > hooks_before  # attach installed sift.saliency's hooks
        out = thinker.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert len(tower._forward_hooks) == hooks_before
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3
    n = session.stats.audio_before[0] + session.stats.video_before[0]
    assert session.stats.audio_after[0] + session.stats.video_after[0] == keep_count(n, 0.3)
    assert session.stats.audio_after[0] < session.stats.audio_before[0]
    (sal,) = seen["saliency"]  # one audio item, one value per audio token
    assert sal.shape == (session.stats.audio_before[0],) and math.isfinite(float(sal.sum()))
    assert comp.last_decisions[0] in ("audio", "video", "uniform")
    rel_a, rel_v = comp.last_relevance[0]
    assert rel_a.shape == rel_v.shape == (len(_layout(thinker.config, inputs).rows[0].windows),)


def test_no_question_is_uniform_end_to_end(thinker, processor):
    inputs = omni_inputs(processor, [synth_clip(4.0)], [""])
    comp = OmniSelect(retention=0.5, margin=0.0)  # margin 0 would never give uniform with a question
    with sift.compress(thinker, comp) as session, torch.no_grad():
        thinker(**inputs)
    assert comp.last_decisions == ["uniform"]
    s = session.stats
    assert (s.audio_after[0], s.video_after[0]) == split_modalities(s.audio_before[0], s.video_before[0], 0.5, 0.2)
