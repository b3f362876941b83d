"""The learned budget split (`budget_split="learned"`): `shift_split` keeps every window's total and its floors,
an untrained split selects exactly what the fixed one does, a trained offset moves budget between a window's
audio and its video without changing any total, and its draws carry a differentiable log-probability."""

from __future__ import annotations

import math

import pytest
import torch

import sift
from sift.budget import keep_count, shift_split
from sift.compressors.omnisift import OmniSIFT
from sift.selector import OmniSIFTConfig, OmniSIFTSelector


def test_shift_split_keeps_the_total_and_is_the_identity_at_offset_zero():
    for audio in range(0, 40):
        for video in range(0, 40):
            caps = dict(audio_cap=40, video_cap=40, video_floor=2)
            assert shift_split(audio, video, 0.0, **caps) == (audio, video)
            for offset in (-3.0, -0.4, 0.7, 2.5):
                a, v = shift_split(audio, video, offset, **caps)
                assert a + v == audio + video and 0 <= a <= 40 and 0 <= v <= 40
                assert v >= min(2, video) and a >= min(1, audio)  # floors, never above what the window had
                assert (a - audio) * offset >= 0  # moves the way the offset points
    # the logit move: share 0.25 of 20 plus log(3) is share 0.5
    assert shift_split(5, 15, math.log(3.0), audio_cap=20, video_cap=20) == (10, 10)
    # a window that gave audio nothing can still get some; caps bound the move
    assert shift_split(0, 10, 3.0, audio_cap=20, video_cap=20)[0] > 0
    assert shift_split(2, 18, 9.0, audio_cap=4, video_cap=20) == (4, 16)
    assert shift_split(2, 18, -9.0, audio_cap=20, video_cap=19) == (1, 19)


@pytest.fixture()
def selectors(thinker):
    """A learned-split selector and a fixed one with the same VGAS and STVP weights (random, so both score)."""
    torch.manual_seed(5)
    learned = OmniSIFTSelector.from_config(thinker.config, init="random", budget_split="learned")
    fixed = OmniSIFTSelector.from_config(thinker.config, init="random")
    missing, unexpected = fixed.load_state_dict(learned.state_dict(), strict=False)
    assert not missing and all(k.startswith("split.") for k in unexpected)
    return learned, fixed


def _run(thinker, inputs, comp):
    with torch.no_grad(), sift.compress(thinker, comp) as session:
        thinker(**inputs)
    return session


def _window_counts(session, layout):
    keep = session.selection.keep[0]
    return [(int(keep[w.audio].sum()), int(keep[w.video].sum())) for w in layout.rows[0].windows]


@pytest.mark.parametrize("rule", ["clip", "chunk"])
def test_an_untrained_split_selects_what_the_fixed_split_selects(thinker, synth_inputs, selectors, rule):
    learned, fixed = selectors
    assert learned.config.budget_split == "learned" and fixed.split is None
    D = learned.config.hidden_size
    offsets = learned.split_offsets([torch.randn(5, D), torch.randn(3, D)], [torch.randn(8, D), torch.randn(8, D)],
                                    [0.3, 0.9], [0.1, 0.5])
    assert offsets.tolist() == [0.0, 0.0]  # exactly zero until trained, whatever the window holds
    for retention in (0.1, 0.3):
        a = _run(thinker, synth_inputs, OmniSIFT(retention=retention, selector=learned, audio_topk=rule))
        b = _run(thinker, synth_inputs, OmniSIFT(retention=retention, selector=fixed, audio_topk=rule))
        assert torch.equal(a.selection.keep, b.selection.keep)
        assert a.selection.log_prob is None  # nothing was drawn


def test_a_trained_offset_moves_budget_within_each_window_only(thinker, synth_inputs, selectors):
    learned, fixed = selectors
    layout = sift.layout_of(synth_inputs, thinker.config)
    base = _window_counts(_run(thinker, synth_inputs, OmniSIFT(retention=0.3, selector=fixed, audio_topk="chunk")), layout)
    with torch.no_grad():
        learned.split.mlp[2].bias.fill_(1.5)  # every window: more audio
    session = _run(thinker, synth_inputs, OmniSIFT(retention=0.3, selector=learned, audio_topk="chunk"))
    moved = _window_counts(session, layout)
    stats = session.stats
    assert stats.audio_after[0] + stats.video_after[0] == keep_count(stats.audio_before[0] + stats.video_before[0], 0.3)
    assert stats.audio_after[0] > sum(a for a, _ in base)
    for (a0, v0), (a1, v1), w in zip(base, moved, layout.rows[0].windows):
        assert a1 + v1 == a0 + v0  # the window's budget, exactly
        assert a1 >= a0 and v1 <= v0
        keep = session.selection.keep[0]
        assert all(int(keep[f.positions].sum()) >= 1 for f in w.frames)  # a token per frame
    with torch.no_grad():
        learned.split.mlp[2].bias.fill_(-1.5)
    fewer = _window_counts(_run(thinker, synth_inputs, OmniSIFT(retention=0.3, selector=learned, audio_topk="chunk")), layout)
    assert sum(a for a, _ in fewer) < sum(a for a, _ in base)
    # prune ratios fix every count: the split does not apply
    ratios = _run(thinker, synth_inputs, OmniSIFT(rho_audio=0.5, rho_video=0.7, selector=learned))
    assert torch.equal(ratios.selection.keep, _run(thinker, synth_inputs, OmniSIFT(rho_audio=0.5, rho_video=0.7, selector=fixed)).selection.keep)


def test_split_draws_vary_the_budgets_and_carry_a_differentiable_log_prob(thinker, synth_inputs, selectors):
    learned, _ = selectors
    layout = sift.layout_of(synth_inputs, thinker.config)
    learned.train()
    torch.manual_seed(0)
    counts, log_probs = set(), []
    for _ in range(6):
        with sift.compress(thinker, OmniSIFT(retention=0.3, selector=learned, audio_topk="chunk", split_noise=1.0)) as s:
            thinker(**synth_inputs)
        counts.add(tuple(_window_counts(s, layout)))
        assert s.selection.log_prob.shape == (1,) and s.selection.log_prob.requires_grad
        assert s.selection.gate is not None  # only the budget is drawn: keep sets are the gated top-k
        log_probs.append(s.selection.log_prob)
    assert len(counts) > 1
    windows = sum(1 for w in layout.rows[0].windows if w.num_audio and w.frames)
    # a normal log-density of `windows` draws at sigma 1 is at most -windows/2 log(2 pi)
    assert all(lp.item() <= -0.5 * windows * math.log(2 * math.pi) + 1e-5 for lp in log_probs)
    torch.stack(log_probs).sum().backward()
    assert learned.split.mlp[2].bias.grad.abs().item() > 0
    assert learned.vgas.a_proj.weight.grad is None  # the draw's density depends on the split head alone
    learned.eval()
    with pytest.raises(ValueError, match="split_noise must be > 0"):
        OmniSIFT(retention=0.3, selector=learned, split_noise=0.0)


def test_budget_split_config_and_checkpoints(thinker, selectors, tmp_path):
    with pytest.raises(ValueError, match="budget_split must be one of"):
        OmniSIFTConfig(budget_split="window")
    learned, _ = selectors
    with torch.no_grad():
        learned.split.mlp[2].bias.fill_(0.25)
    learned.save_pretrained(tmp_path)
    loaded = OmniSIFTSelector.from_pretrained(tmp_path)
    assert loaded.config.budget_split == "learned" and loaded.split.mlp[2].bias.item() == 0.25
    assert OmniSIFTSelector.from_config(thinker.config).split is None  # the default: fixed, no extra weights
    with pytest.raises(RuntimeError, match="no learned budget split"):
        OmniSIFTSelector.from_config(thinker.config).split_offsets([], [], [], [])
