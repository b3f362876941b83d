"""`sift.compress(..., mode="mask")`: the full sequence runs, dropped tokens are masked out of attention.

What the math says: kept tokens compute exactly what they compute in the shrunk sequence (same keys, same
3D positions), and the straight-through key gates give every media token a gradient, dropped ones too.
"""

from __future__ import annotations

import pytest
import torch

import sift
from sift import hf_internals as hf
from sift.compressors.omnisift import OmniSIFT
from sift.masked_attention import MASKED_ATTENTION, GatedAttention
from sift.selector import OmniSIFTSelector
from sift.testbed.tiny import tiny_thinker


class GateSpy(OmniSIFT):
    """OmniSIFT that keeps its last selection, with the gate's gradient retained."""

    def select(self, batch):
        selection = super().select(batch)
        if selection.gate is not None and selection.gate.requires_grad:
            selection.gate.retain_grad()
        self.last = selection
        return selection


def test_fused_gated_attention_matches_the_formula_and_its_gradients():
    """DynamicViT's masked softmax, p = g e / sum(g e), then @ value; gradients checked numerically, gates at 0 too."""
    torch.manual_seed(0)
    B, H, L, D = 2, 3, 6, 4
    scores = torch.randn(B, H, L, L, dtype=torch.double, requires_grad=True)
    gate = (torch.rand(B, L, dtype=torch.double) > 0.4).double()
    gate[:, 0] = 1.0
    gate.requires_grad_(True)
    value = torch.randn(B, H, L, D, dtype=torch.double, requires_grad=True)
    e = (scores - scores.amax(-1, keepdim=True)).exp() * gate[:, None, None, :]
    torch.testing.assert_close(GatedAttention.apply(scores, gate, value), (e / e.sum(-1, keepdim=True)) @ value)
    assert torch.autograd.gradcheck(GatedAttention.apply, (scores, gate, value))


def _labels(inputs, n=6):
    labels = inputs["input_ids"].clone()
    labels[:, :-n] = -100
    return labels


@pytest.fixture(params=["eager", "sdpa"])
def frozen(request, thinker_config):
    model = tiny_thinker(thinker_config, seed=0, attn_implementation=request.param)
    model.requires_grad_(False)
    return model


def _run(model, inputs, comp, mode, labels=None):
    with sift.compress(model, comp, mode=mode) as session:
        out = model(**inputs, labels=labels)
    return out, session.stats


@pytest.mark.parametrize("method", ["random", "stvp", "omnizip"])
def test_masked_forward_equals_the_shrunk_forward(frozen, synth_inputs, method):
    comp = sift.get_compressor(method, retention=0.35)
    labels = _labels(synth_inputs)
    with torch.no_grad():
        shrunk, s_stats = _run(frozen, synth_inputs, comp, "shrink", labels)
        masked, m_stats = _run(frozen, synth_inputs, comp, "mask", labels)
    kept = m_stats.kept_positions[0]
    assert torch.equal(kept, s_stats.kept_positions[0])
    assert masked.logits.shape[1] == synth_inputs["input_ids"].shape[1]  # full length
    assert shrunk.logits.shape[1] == kept.numel()
    torch.testing.assert_close(masked.logits[0, kept], shrunk.logits[0], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(masked.loss, shrunk.loss, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_every_media_token_gets_gradient_only_in_mask_mode(frozen, synth_inputs):
    torch.manual_seed(0)
    selector = OmniSIFTSelector.from_config(frozen.config, init="random").train()
    labels = _labels(synth_inputs)
    layout = sift.layout_of(synth_inputs, frozen.config)
    media = layout.media_mask(torch.device("cpu"))[0]
    grads = {}
    for mode in ("shrink", "mask"):
        comp = GateSpy(retention=0.3, selector=selector)
        out, stats = _run(frozen, synth_inputs, comp, mode, labels)
        out.loss.backward()
        dropped = media & ~comp.last.keep[0]
        grads[mode] = comp.last.gate.grad[0]
        assert grads[mode][media & comp.last.keep[0]].abs().sum() > 0  # kept tokens: both modes
        selector.zero_grad()
    assert int(dropped.sum()) > 0
    assert grads["shrink"][dropped].abs().sum() == 0  # the published signal: dropped tokens learn nothing
    assert (grads["mask"][dropped] != 0).float().mean() > 0.95  # here nearly every dropped token does
    assert all(p.grad is None for p in frozen.parameters())


@pytest.mark.slow
def test_mask_mode_trains_the_selector_parameters(frozen, synth_inputs):
    selector = OmniSIFTSelector.from_config(frozen.config).train()  # init="omnizip": zero last layers
    comp = OmniSIFT(retention=0.3, selector=selector)
    with sift.compress(frozen, comp, mode="mask"):
        frozen(**synth_inputs, labels=_labels(synth_inputs)).loss.backward()
    assert selector.vgas.score_head[2].weight.grad.abs().sum() > 0
    assert selector.stvp.mlp[2].weight.grad.abs().sum() > 0


def test_mask_mode_restores_the_attention_implementation(frozen, synth_inputs):
    lm_config = hf.language_model(frozen).config
    before = lm_config._attn_implementation
    comp = sift.get_compressor("random", retention=0.5)
    with torch.no_grad(), sift.compress(frozen, comp, mode="mask"):
        seen = []
        attn = hf.language_model(frozen).layers[0].self_attn
        h = attn.register_forward_pre_hook(lambda m, a, kw: seen.append(m.config._attn_implementation), with_kwargs=True)
        try:
            frozen(**synth_inputs)
        finally:
            h.remove()
        assert seen == [MASKED_ATTENTION] and lm_config._attn_implementation == before
        bad = dict(synth_inputs, input_features=synth_inputs["input_features"][..., :7])
        with pytest.raises(Exception):
            frozen(**bad)
        assert lm_config._attn_implementation == before


def test_mask_mode_refuses_generate_and_keeps_no_cache(frozen, synth_inputs):
    comp = sift.get_compressor("random", retention=0.5)
    with torch.no_grad(), sift.compress(frozen, comp, mode="mask"):
        out = frozen(**synth_inputs, use_cache=True)
        assert hf.cache_out(out) is None
        with pytest.raises(RuntimeError, match="training forwards"):
            frozen.generate(**synth_inputs, max_new_tokens=2)
    with pytest.raises(ValueError, match="mode must be one of"):
        sift.compress(frozen, comp, mode="drop")
