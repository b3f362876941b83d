"""OmniZip audio saliency (sift.saliency): block-wise recomputation vs. a full-matrix reference, pooling,
batching without mixing, attention-implementation independence and hook removal."""

from __future__ import annotations

import pytest
import torch

from sift.layout import audio_tokens_from_features
from sift.testbed.media import synth_clip
from sift.saliency import (
    AUDIO_SALIENCY,
    attach_audio_saliency,
    block_attention_received,
    pool_like_encoder,
)
from sift.testbed.tiny import omni_inputs, tiny_thinker

PROMPT = "Describe the video."
#: The random tiny encoder attends almost uniformly (within-block spread ~1e-5, the size of the tolerance), so
#: most tests scale the last layer's q/k projections by this factor (scores x64): still the real hooked inputs
#: and the layer's own projections, but a peaked attention that makes 1e-5 comparisons meaningful.
SHARPEN = 8.0


def _sharpen(thinker, factor: float = SHARPEN):
    attn = thinker.model.audio_tower.layers[-1].self_attn
    with torch.no_grad():
        attn.q_proj.weight.mul_(factor)
        attn.q_proj.bias.mul_(factor)
        attn.k_proj.weight.mul_(factor)
    return thinker


def _clip_long():
    # 9 s -> 900 mel frames -> 450 positions: blocks of 100 (n_window=100 -> 200 mel frames) x4 + a partial 50.
    return synth_clip(9.0)


def _clip_short():
    # 4.7 s -> 470 mel frames -> 235 positions (odd: the encoder's pooling drops the last) in blocks 100, 100, 35.
    return synth_clip(4.7, tone_hz=880.0, seed=1)


def _run(thinker, inputs, *, saliency: bool = True) -> tuple[dict, list[torch.Tensor] | None]:
    """One forward recording the last audio layer's attention input, cu_seqlens and the tower's feature_lens,
    plus (optionally) the per-audio saliency from :func:`attach_audio_saliency`."""
    tower = thinker.model.audio_tower
    attn = tower.layers[-1].self_attn
    seen: dict = {}

    def pre_attn(module, args, kwargs):
        seen["hidden_states"] = kwargs["hidden_states"].detach().clone()
        seen["cu_seqlens"] = kwargs["cu_seqlens"].detach().clone()

    def pre_tower(module, args, kwargs):
        seen["feature_lens"] = kwargs["feature_lens"].detach().clone()

    signals: dict = {}
    handles = [
        attn.register_forward_pre_hook(pre_attn, with_kwargs=True),
        tower.register_forward_pre_hook(pre_tower, with_kwargs=True),
    ]
    if saliency:
        handles += attach_audio_saliency(thinker, signals)
    try:
        with torch.no_grad():
            thinker(**inputs)
    finally:
        for h in handles:
            h.remove()
    return seen, signals.get(AUDIO_SALIENCY)


def _full_matrix_reference(hidden_states, attn, cu_seqlens) -> torch.Tensor:
    """Eager reference: full T x T scores, off-block entries -inf, softmax, head mean, per-block column mean."""
    T = hidden_states.shape[0]
    H = attn.num_heads
    with torch.no_grad():
        q = attn.q_proj(hidden_states).reshape(T, H, -1).transpose(0, 1).double()
        k = attn.k_proj(hidden_states).reshape(T, H, -1).transpose(0, 1).double()
        scores = q @ k.transpose(1, 2) * attn.scaling  # (H, T, T)
    bounds = cu_seqlens.long()
    block_id = torch.bucketize(torch.arange(T), bounds[1:], right=True)
    same = block_id[:, None] == block_id[None, :]
    scores = scores.masked_fill(~same, float("-inf"))
    probs = torch.softmax(scores, dim=-1).mean(0)  # (T, T)
    received = torch.empty(T, dtype=torch.float64)
    for s, e in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        received[s:e] = probs[s:e, s:e].mean(0)
    # the masked-out part carries no mass
    assert probs[~same].abs().max() == 0
    return received.float()


def _saliency(thinker, inputs) -> list[torch.Tensor]:
    return _run(thinker, inputs)[1]


@pytest.fixture(scope="module")
def sharp(thinker_config):
    """An eager tiny thinker (own copy; the session ``thinker`` is left untouched) with a peaked last layer."""
    return _sharpen(tiny_thinker(thinker_config, seed=0, attn_implementation="eager"))


@pytest.fixture(scope="module")
def long_inputs(processor):
    return omni_inputs(processor, [_clip_long()], PROMPT)


@pytest.fixture(scope="module")
def pair_inputs(processor):
    return omni_inputs(processor, [_clip_long(), _clip_short()], PROMPT)


@pytest.fixture(scope="module")
def short_inputs(processor):
    return omni_inputs(processor, [_clip_short()], PROMPT)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["long", "pair", "pair-unsharpened"])
def test_blocks_match_full_matrix_reference(thinker, sharp, long_inputs, pair_inputs, which):
    inputs = long_inputs if which == "long" else pair_inputs
    model = thinker if which == "pair-unsharpened" else sharp
    seen, per_audio = _run(model, inputs)
    attn = model.model.audio_tower.layers[-1].self_attn
    hs, cu = seen["hidden_states"], seen["cu_seqlens"]
    lengths = (cu[1:] - cu[:-1]).tolist()
    if which == "long":
        assert lengths == [100, 100, 100, 100, 50]
    else:
        assert lengths == [100, 100, 100, 100, 50, 100, 100, 35]

    ref = _full_matrix_reference(hs, attn, cu)
    if model is sharp:  # the comparison is discriminative: values spread far beyond the tolerance
        assert float(ref[:100].std()) > 1e-3
    for group in (1, 3, 16):  # block grouping (incl. groups mixing audios / lengths) must not matter
        got = block_attention_received(hs, attn, cu, max_block_group=group)
        assert got.dtype == torch.float32 and got.shape == (hs.shape[0],)
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    got = block_attention_received(hs, attn, cu, max_block_group=2, max_head_group=1)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)

    # The hooked, pooled signal equals the reference pooled like the encoder (get_pool_indices semantics).
    from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import get_pool_indices

    pool_idx = get_pool_indices(seen["feature_lens"])
    relative = ref * torch.repeat_interleave(torch.tensor(lengths), torch.tensor(lengths)).float()  # x block length
    ref_pooled = (relative[pool_idx] + relative[pool_idx + 1]) / 2
    torch.testing.assert_close(torch.cat(per_audio), ref_pooled, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_lengths_positivity_and_block_invariant(sharp, thinker_config, pair_inputs):
    seen, per_audio = _run(sharp, pair_inputs)
    mel_lens = pair_inputs["feature_attention_mask"].sum(1)
    tokens_in_ids = (pair_inputs["input_ids"] == thinker_config.audio_token_id).sum(1).tolist()
    assert len(per_audio) == 2
    assert [len(s) for s in per_audio] == tokens_in_ids == audio_tokens_from_features(mel_lens).tolist() == [225, 117]
    for s in per_audio:
        assert s.dtype == torch.float32 and s.dim() == 1
        assert bool((s > 0).all()) and bool(torch.isfinite(s).all())
        assert not s.requires_grad

    # Pre-pool invariant: each block's softmax rows sum to 1, so the mean over the block's n queries of the
    # attention received sums over the block's positions to exactly 1 (mean value 1/n), for every head mean.
    attn = sharp.model.audio_tower.layers[-1].self_attn
    pos = block_attention_received(seen["hidden_states"], attn, seen["cu_seqlens"])
    cu = seen["cu_seqlens"].tolist()
    sums = torch.stack([pos[s:e].sum() for s, e in zip(cu[:-1], cu[1:])])
    torch.testing.assert_close(sums, torch.ones_like(sums), atol=1e-5, rtol=0)
    assert bool((pos > 0).all())


@pytest.mark.slow
def test_no_mixing_across_audios(sharp, long_inputs, short_inputs, pair_inputs, processor):
    alone_long = _saliency(sharp, long_inputs)
    alone_short = _saliency(sharp, short_inputs)
    pair = _saliency(sharp, pair_inputs)
    torch.testing.assert_close(pair[0], alone_long[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(pair[1], alone_short[0], atol=1e-6, rtol=0)
    # order follows the batch (feature_attention_mask rows)
    swapped = _saliency(sharp, omni_inputs(processor, [_clip_short(), _clip_long()], PROMPT))
    assert [len(s) for s in swapped] == [117, 225]
    torch.testing.assert_close(swapped[0], alone_short[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(swapped[1], alone_long[0], atol=1e-6, rtol=0)


def test_same_saliency_eager_and_sdpa(sharp, thinker_config, pair_inputs):
    assert sharp.model.audio_tower.config._attn_implementation == "eager"
    eager = _saliency(sharp, pair_inputs)
    sdpa_model = _sharpen(tiny_thinker(thinker_config, seed=0, attn_implementation="sdpa"))
    assert sdpa_model.model.audio_tower.config._attn_implementation == "sdpa"
    sdpa = _saliency(sdpa_model, pair_inputs)
    assert len(eager) == len(sdpa) == 2
    for a, b in zip(eager, sdpa):
        assert float(a.std()) > 1e-3
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_hooks_removable_and_overwrite_per_call(thinker, long_inputs, short_inputs):
    signals: dict = {}
    handles = attach_audio_saliency(thinker, signals)
    assert len(handles) == 3
    with torch.no_grad():
        thinker(**long_inputs)
    assert [len(s) for s in signals[AUDIO_SALIENCY]] == [225]
    # A later encoder call replaces (never appends to / mixes with) the earlier result.
    with torch.no_grad():
        thinker.model.get_audio_features(
            short_inputs["input_features"], feature_attention_mask=short_inputs["feature_attention_mask"]
        )
    assert [len(s) for s in signals[AUDIO_SALIENCY]] == [117]
    stored = signals[AUDIO_SALIENCY]

    for h in handles:
        h.remove()
    with torch.no_grad():
        thinker(**long_inputs)
    assert signals[AUDIO_SALIENCY] is stored and [len(s) for s in stored] == [117]
    tower = thinker.model.audio_tower
    assert not tower._forward_pre_hooks and not tower._forward_hooks
    assert not tower.layers[-1].self_attn._forward_pre_hooks


def test_pool_like_encoder_matches_pool_indices():
    from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import get_pool_indices

    feature_lens = torch.tensor([900, 470, 3, 1, 7])
    n_pos = (feature_lens - 1) // 2 + 1
    sal = torch.rand(int(n_pos.sum()), generator=torch.Generator().manual_seed(0))
    pooled = pool_like_encoder(sal, n_pos)
    assert [len(p) for p in pooled] == audio_tokens_from_features(torch.as_tensor(feature_lens)).tolist()
    idx = get_pool_indices(feature_lens)
    torch.testing.assert_close(torch.cat(pooled), (sal[idx] + sal[idx + 1]) / 2)
    with pytest.raises(ValueError):
        pool_like_encoder(sal[:-1], n_pos)


def test_qwen3_omni_saliency_is_per_llm_audio_token_with_no_pooling():
    """On the tiny real Qwen3-Omni thinker: one value per LLM audio token of each audio (13 per second; its
    encoder pools nothing after the last attention), equal to the full-matrix reference, audios never mixed."""
    from sift.models.qwen3_omni import qwen3_audio_tokens
    from sift.testbed.tiny_qwen3 import qwen3_av_inputs, qwen3_batch, tiny_qwen3_thinker

    thinker = tiny_qwen3_thinker()
    _sharpen(thinker)
    samples = [qwen3_av_inputs(thinker.config, seconds=s, seed=s) for s in (4, 7)]
    seen, saliency = _run(thinker, qwen3_batch(thinker.config, samples))
    lengths = qwen3_audio_tokens(seen["feature_lens"], thinker.config.audio_config.n_window).tolist()
    assert lengths == [52, 91] and [len(s) for s in saliency] == lengths
    attn = thinker.model.audio_tower.layers[-1].self_attn
    reference = _full_matrix_reference(seen["hidden_states"], attn, seen["cu_seqlens"])
    bounds = seen["cu_seqlens"].long()
    block_length = torch.repeat_interleave(bounds[1:] - bounds[:-1], bounds[1:] - bounds[:-1]).float()
    torch.testing.assert_close(torch.cat(saliency), reference * block_length, atol=1e-5, rtol=1e-4)
    assert float(torch.cat(saliency).std()) > 0.05  # peaked: the ranking means something
    alone = _run(thinker, samples[1])[1]
    torch.testing.assert_close(alone[0], saliency[1], atol=1e-5, rtol=1e-4)
