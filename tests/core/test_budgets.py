"""The budget property of every registered method, over random layouts (hypothesis).

Rule under test: per row, kept audio+video tokens == keep_count(N, retention) exactly (the issue allows
one token per window of slack; sift's allocator needs none), text/special tokens are never dropped, and
while the budget allows every frame keeps at least one token.
"""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sift
from sift.budget import keep_count
from sift.layout import audio_tokens_from_features
from sift.saliency import AUDIO_SALIENCY
from sift.selector import OmniSIFTConfig, OmniSIFTSelector

METHODS = [m for m in sift.available_compressors() if m != "none"]
# the learned selector at its untrained init, sized for the random 16-d embeddings below
EXTRA = {"omnisift": {"selector": OmniSIFTSelector(OmniSIFTConfig(hidden_size=16))}}


def _feature_len(n_audio: int) -> int:
    f = 1
    while int(audio_tokens_from_features(torch.tensor(f))) < n_audio:
        f += 1
    return f


@st.composite
def layouts(draw):
    """Rows of 1-2 media segments: audio-in-video, silent video (flag off) or audio alone."""
    use_aiv = draw(st.booleans())
    n_rows = draw(st.integers(1, 2))
    rows = []
    for _ in range(n_rows):
        segs = []
        for _ in range(draw(st.integers(1, 2))):
            kinds = ["aiv", "audio"] if use_aiv else ["video", "audio"]
            kind = draw(st.sampled_from(kinds))
            t = draw(st.integers(1, 7))
            h, w = draw(st.integers(1, 3)), draw(st.integers(1, 3))
            n_audio = draw(st.integers(1, 230))
            segs.append((kind, t, 2 * h, 2 * w, n_audio))
        rows.append(segs)
    return use_aiv, rows


def _build(tokenizer, processor, thinker_config, use_aiv, rows):
    texts, grids, audio_lens = [], [], []
    for segs in rows:
        text = "q "
        for kind, t, hh, ww, n_audio in segs:
            if kind == "aiv":
                s = processor.replace_video_with_audio_token(
                    {"video_grid_thw": torch.tensor([[t, hh, ww]]), "video_second_per_grid": [1.0]},
                    0,
                    {"num_audio_tokens": [n_audio]},
                    0,
                    position_id_per_seconds=25,
                    seconds_per_chunk=2.0,
                )
                text += "<|vision_bos|>" + s + "<|vision_eos|>"
                grids.append([t, hh, ww])
                audio_lens.append(_feature_len(n_audio))
            elif kind == "video":
                text += "<|vision_bos|>" + "<|VIDEO|>" * (t * hh * ww // 4) + "<|vision_eos|>"
                grids.append([t, hh, ww])
            else:
                text += "<|audio_bos|>" + "<|AUDIO|>" * n_audio + "<|audio_eos|>"
                audio_lens.append(_feature_len(n_audio))
        texts.append(text + " what color is it?")
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    grid_t = torch.tensor(grids) if grids else None
    layout = sift.build_layout(
        enc.input_ids,
        thinker_config,
        attention_mask=enc.attention_mask,
        video_grid_thw=grid_t,
        video_second_per_grid=torch.ones(len(grids)) if grids else None,
        audio_feature_lengths=torch.tensor(audio_lens) if audio_lens else None,
        use_audio_in_video=use_aiv,
    )
    return enc, layout, len(audio_lens)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=layouts(), retention=st.floats(0.1, 1.0), seed=st.integers(0, 1000))
def test_every_method_meets_the_budget_exactly(tokenizer, processor, thinker_config, spec, retention, seed):
    use_aiv, rows = spec
    enc, layout, n_audio_items = _build(tokenizer, processor, thinker_config, use_aiv, rows)
    g = torch.Generator().manual_seed(seed)
    B, L = enc.input_ids.shape
    embeds = torch.randn(B, L, 16, generator=g)
    saliency = [torch.rand(int(n), generator=g) for n in _audio_counts(layout, n_audio_items)]
    media = layout.media_mask()
    for name in METHODS:
        batch = sift.CompressionBatch(
            embeds=embeds,
            layout=layout,
            input_ids=enc.input_ids,
            attention_mask=enc.attention_mask,
            position_ids=torch.zeros(3, B, L, dtype=torch.long),
            signals={AUDIO_SALIENCY: saliency},
            config=thinker_config,
        )
        sel = sift.get_compressor(name, retention=retention, **EXTRA.get(name, {})).select(batch)
        valid = enc.attention_mask.bool()
        assert bool(sel.keep[valid & ~media].all()), f"{name} dropped text"
        for b, row in enumerate(layout.rows):
            kept = int((sel.keep[b] & media[b]).sum())
            assert kept == keep_count(row.num_tokens, retention), (name, b, kept, row.num_tokens, retention)
            frames = [f for w in row.windows for f in w.frames]
            if keep_count(row.num_tokens, retention) >= row.num_audio + len(frames) and name not in ("random",):
                kept_frames = [bool(sel.keep[b, f.positions].any()) for f in frames]
                assert all(kept_frames) or name == "dycoke", f"{name} emptied a frame"


def _audio_counts(layout, n_items):
    counts = [0] * n_items
    for row in layout.rows:
        for seg in row.segments:
            if seg.audio_item >= 0:
                counts[seg.audio_item] = sum(w.num_audio for w in seg.windows)
    return counts
