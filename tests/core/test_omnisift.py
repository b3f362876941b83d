"""The learned OmniSIFT selector: sizes, straight-through training, checkpoints, init, conversion."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import sift
from sift import hf_internals as hf
from sift.budget import keep_count
from sift.compressors.omnisift import OmniSIFT
from sift.compressors.omnizip import OmniZip
from sift.compressors.stvp import STVP
from sift.selector import PUBLISHED_PREFIX, OmniSIFTConfig, OmniSIFTSelector
from sift.testbed.tiny import tiny_thinker


def _vgas_params(d):
    return sum(p.numel() for p in OmniSIFTSelector(OmniSIFTConfig(hidden_size=d)).vgas.parameters())


def test_parameter_counts_match_the_paper():
    assert _vgas_params(3584) == 4_856_321
    assert _vgas_params(2048) == 3_283_457
    sel = OmniSIFTSelector(OmniSIFTConfig(hidden_size=3584))
    stvp = sum(p.numel() for p in sel.stvp.parameters())
    assert stvp < 1_000_000
    assert sum(p.numel() for p in sel.parameters()) == 4_856_321 + stvp == 5_323_650


def _labels(inputs, n=6):
    labels = inputs["input_ids"].clone()
    labels[:, :-n] = -100
    return labels


@pytest.fixture()
def frozen(thinker_config):
    model = tiny_thinker(thinker_config)
    model.requires_grad_(False)
    return model


def test_gradients_reach_every_selector_parameter_and_never_the_model(frozen, synth_inputs):
    selector = OmniSIFTSelector.from_config(frozen.config).train()
    comp = OmniSIFT(retention=0.4, selector=selector)
    opt = torch.optim.SGD(selector.parameters(), lr=0.5)
    labels = _labels(synth_inputs)
    with sift.compress(frozen, comp):
        for step in range(2):  # the zero-initialised last layers open the gradient path after one step
            opt.zero_grad()
            loss = frozen(**synth_inputs, labels=labels).loss
            loss.backward()
            if step == 0:
                assert selector.vgas.score_head[2].weight.grad.abs().sum() > 0
                assert selector.stvp.mlp[2].weight.grad.abs().sum() > 0
                opt.step()
    for name, p in selector.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in frozen.parameters())


@pytest.mark.slow
def test_a_few_steps_lower_the_loss(frozen, synth_inputs):
    torch.manual_seed(0)
    selector = OmniSIFTSelector.from_config(frozen.config, init="random").train()
    comp = OmniSIFT(retention=0.3, selector=selector)
    opt = torch.optim.Adam(selector.parameters(), lr=3e-3)
    labels = _labels(synth_inputs)
    losses = []
    with sift.compress(frozen, comp):
        for _ in range(15):
            opt.zero_grad()
            loss = frozen(**synth_inputs, labels=labels).loss
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert min(losses[-3:]) < losses[0] - 1e-3, losses


def _decoder_inputs(model, inputs, comp, grad: bool):
    seen = {}

    def record(module, args, kwargs):
        seen["embeds"] = kwargs["inputs_embeds"]

    with torch.set_grad_enabled(grad), sift.compress(model, comp) as s:
        h = hf.language_model(model).register_forward_pre_hook(record, with_kwargs=True)
        try:
            model(**inputs)
        finally:
            h.remove()
    return seen["embeds"], s.stats


def test_training_gate_keeps_values_exact(frozen, synth_inputs):
    selector = OmniSIFTSelector.from_config(frozen.config)
    train_embeds, train_stats = _decoder_inputs(frozen, synth_inputs, OmniSIFT(retention=0.5, selector=selector.train()), True)
    eval_embeds, eval_stats = _decoder_inputs(frozen, synth_inputs, OmniSIFT(retention=0.5, selector=selector.eval()), False)
    assert train_embeds.requires_grad and not eval_embeds.requires_grad
    assert torch.equal(train_stats.kept_positions[0], eval_stats.kept_positions[0])
    assert torch.equal(train_embeds.detach(), eval_embeds)  # the gate is exactly 1 on kept tokens


def test_save_and_load_give_identical_selections(thinker, synth_inputs, tmp_path):
    torch.manual_seed(1)
    selector = OmniSIFTSelector.from_config(thinker.config, init="random")
    selector.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    n_params = sum(p.numel() for p in selector.parameters())
    assert (tmp_path / "model.safetensors").stat().st_size < 4 * n_params + 100_000  # the selector only
    loaded = OmniSIFTSelector.from_pretrained(tmp_path)
    runs = []
    for sel in (selector, str(tmp_path)):
        with torch.no_grad(), sift.compress(thinker, "omnisift", retention=0.35, selector=sel) as s:
            thinker(**synth_inputs)
        runs.append(s.stats.kept_positions[0])
    assert torch.equal(runs[0], runs[1])
    for (n1, p1), (n2, p2) in zip(selector.state_dict().items(), loaded.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)


@pytest.mark.slow
@pytest.mark.parametrize("retention", [0.2, 0.45, 0.8])
def test_omnizip_init_reproduces_training_free_selection(thinker, synth_inputs, retention):
    def kept(comp):
        with torch.no_grad(), sift.compress(thinker, comp) as s:
            thinker(**synth_inputs)
        return s.stats.kept_positions[0], s.stats

    learned, stats = kept(OmniSIFT(retention=retention))
    audio = (synth_inputs["input_ids"][0] == thinker.config.audio_token_id).nonzero().squeeze(1)
    video = (synth_inputs["input_ids"][0] == thinker.config.video_token_id).nonzero().squeeze(1)
    zip_kept, _ = kept(OmniZip(retention=retention, merge=False))
    stvp_kept, _ = kept(STVP(retention=retention, audio_advantage=0.3))
    assert torch.equal(learned[torch.isin(learned, audio)], zip_kept[torch.isin(zip_kept, audio)])
    assert torch.equal(learned[torch.isin(learned, video)], stvp_kept[torch.isin(stvp_kept, video)])
    n = stats.audio_before[0] + stats.video_before[0]
    assert stats.audio_after[0] + stats.video_after[0] == keep_count(n, retention)


def test_ablation_switches_remove_exactly_their_part():
    """visual_guidance=False: audio scores ignore the video; stvp_residual=False: video scores are STVP's."""
    torch.manual_seed(0)
    on = OmniSIFTSelector(OmniSIFTConfig(hidden_size=32, init="random", vgas_dim=16, vgas_heads=2, score_dim=8))
    torch.nn.init.normal_(on.stvp.mlp[2].weight)
    off = OmniSIFTSelector(OmniSIFTConfig(**{**on.config.to_dict(), "visual_guidance": False, "stvp_residual": False}))
    off.load_state_dict(on.state_dict())
    audio, video = torch.randn(2, 5, 32), torch.randn(2, 7, 32)
    a_mask, v_mask = torch.ones(2, 5, dtype=torch.bool), torch.ones(2, 7, dtype=torch.bool)
    with torch.no_grad():
        guided = [on.audio_logits(audio, v, a_mask, v_mask) for v in (video, -video)]
        alone = [off.audio_logits(audio, v, a_mask, v_mask) for v in (video, -video)]
        torch.testing.assert_close(alone[0], alone[1])
        torch.testing.assert_close(alone[0], on.audio_logits(audio, video[:, :0], a_mask, v_mask[:, :0]))
        assert not torch.allclose(guided[0], guided[1])
        tokens, spatial, temporal = torch.randn(6, 32), torch.rand(6), torch.rand(6)
        assert torch.equal(off.video_scores(tokens, spatial, temporal, temporal), temporal)
        assert not torch.equal(on.video_scores(tokens, spatial, temporal, temporal), temporal)


def test_hidden_size_mismatch_names_both_sizes(thinker, synth_inputs):
    wrong = OmniSIFTSelector(OmniSIFTConfig(hidden_size=3584))
    with pytest.raises(ValueError, match="hidden size 3584.*hidden size is 64"):
        with sift.compress(thinker, OmniSIFT(retention=0.5, selector=wrong)):
            pass
    assert len(thinker._forward_pre_hooks) == 0  # a failed attach leaves no hook behind


def _published_state(d=3584, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = {
        "v_proj.weight": (512, d), "v_proj.bias": (512,), "a_proj.weight": (512, d), "a_proj.bias": (512,),
        "v_norm.weight": (512,), "v_norm.bias": (512,), "a_norm.weight": (512,), "a_norm.bias": (512,),
        "cross_attn.in_proj_weight": (1536, 512), "cross_attn.in_proj_bias": (1536,),
        "cross_attn.out_proj.weight": (512, 512), "cross_attn.out_proj.bias": (512,),
        "post_attn_norm.weight": (512,), "post_attn_norm.bias": (512,),
        "score_head.0.weight": (256, 512), "score_head.0.bias": (256,),
        "score_head.2.weight": (1, 256), "score_head.2.bias": (1,),
    }
    state = {PUBLISHED_PREFIX + k: torch.randn(*s, generator=g) for k, s in shapes.items()}
    state["thinker.model.embed_tokens.weight"] = torch.zeros(4, d)  # other weights in the shard are ignored
    return state


def test_published_checkpoint_conversion_round_trip(tmp_path):
    state = _published_state()
    from_dict = OmniSIFTSelector.from_published(state)
    assert from_dict.config.hidden_size == 3584 and from_dict.config.audio_prior == "none"
    for k, v in from_dict.vgas.state_dict().items():
        assert torch.equal(v, state[PUBLISHED_PREFIX + k]), k
    assert torch.count_nonzero(from_dict.stvp.mlp[2].weight) == 0
    shard = tmp_path / "model-00001-of-00002.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(shard))
    from_file = OmniSIFTSelector.from_published(shard)
    from_dir = OmniSIFTSelector.from_published(tmp_path)
    out = tmp_path / "converted"
    from_dir.save_pretrained(out)
    reloaded = OmniSIFTSelector.from_pretrained(out)
    for m in (from_file, from_dir, reloaded):
        for k, v in m.vgas.state_dict().items():
            assert torch.equal(v, state[PUBLISHED_PREFIX + k]), k
    with pytest.raises(ValueError, match="hidden size 3584, not 2048"):
        OmniSIFTSelector.from_published(state, hidden_size=2048)
    with pytest.raises(ValueError, match="no tensors under"):
        OmniSIFTSelector.from_published({"other.weight": torch.zeros(1)})


def test_bad_arguments():
    with pytest.raises(ValueError, match="init"):
        OmniSIFTConfig(init="zeros")
    with pytest.raises(TypeError, match="selector"):
        OmniSIFT(retention=0.5, selector=torch.nn.Linear(2, 2))


def test_generate_with_a_selector_checkpoint_on_bigbuckbunny(thinker, processor, tmp_path):
    from sift.testbed.media import load_clip, sample_clip_path
    from sift.testbed.tiny import omni_inputs

    OmniSIFTSelector.from_config(thinker.config).save_pretrained(tmp_path)
    inputs = omni_inputs(processor, [load_clip(sample_clip_path(), size=(112, 112))], ["What happens?"])
    with torch.no_grad(), sift.compress(thinker, "omnisift", retention=0.25, selector=str(tmp_path)) as s:
        out = thinker.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3
    n = s.history[0].audio_before[0] + s.history[0].video_before[0]
    assert s.history[0].audio_after[0] + s.history[0].video_after[0] == keep_count(n, 0.25)
