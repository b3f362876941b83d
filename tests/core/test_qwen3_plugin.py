"""sift.compress on the tiny real Qwen3-Omni thinker (issue 14): the plug-in's invariants hold on the second
model family, DeepStack rows included: exactness, original positions, generate with a KV cache, a left-padded
batch, labels, the mixture-of-experts load-balancing loss, multi-turn and video without audio."""

from __future__ import annotations

import copy

import pytest
import torch

import sift
from sift import hf_internals as hf
from sift.models import Qwen3OmniAdapter, adapter_for
from sift.testbed.probes import DecoderCalls, decoder_inputs, greedy_from_decoder_inputs
from sift.testbed.tiny_qwen3 import qwen3_av_inputs, qwen3_batch, tiny_qwen3_thinker, tiny_qwen3_thinker_config

MAX_NEW = 5
DECODER_KEYS = ("inputs_embeds", "position_ids", "attention_mask", "visual_pos_masks", "deepstack_visual_embeds")


@pytest.fixture(scope="module")
def q3():
    return tiny_qwen3_thinker()


@pytest.fixture(scope="module")
def clip(q3):
    return qwen3_av_inputs(q3.config, seconds=4, fps=2.0, grid_hw=(8, 8))


def _greedy(model, inputs, **kw):
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=MAX_NEW, do_sample=False, **kw)


def test_the_qwen3_thinker_gets_its_adapter(q3, clip):
    adapter = adapter_for(q3)
    assert isinstance(adapter, Qwen3OmniAdapter) and adapter.name == "qwen3-omni"
    assert adapter.language_model(q3) is q3.model.language_model
    assert adapter.hidden_size(q3.config) == 64
    assert adapter.read_layout(clip, q3.config).num_tokens == int(torch.isin(clip["input_ids"], torch.tensor(
        [q3.config.audio_token_id, q3.config.video_token_id])).sum())
    assert torch.equal(sift.layout_of(clip, q3.config).media_mask(), adapter.read_layout(clip, q3.config).media_mask())


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_none_is_bit_identical_in_forward_and_generate(clip, attn):
    model = tiny_qwen3_thinker(tiny_qwen3_thinker_config(attn_implementation=attn))
    with torch.no_grad():
        reference = model(**clip).logits
    reference_tokens = _greedy(model, clip)
    with sift.compress(model, "none") as session:
        with torch.no_grad():
            logits = model(**clip).logits
        tokens = _greedy(model, clip)
    assert torch.equal(logits, reference) and torch.equal(tokens, reference_tokens)
    assert session.stats.retention == 1.0


def test_random_half_keeps_exact_count_original_positions_and_deepstack_rows(q3, clip):
    full = decoder_inputs(q3, clip)
    ids = clip["input_ids"]
    cfg = q3.config
    with sift.compress(q3, "random", retention=0.5, seed=1) as session, DecoderCalls(q3, DECODER_KEYS) as spy, torch.no_grad():
        logits = q3(**clip).logits
    stats, seen = session.stats, spy.calls[0]
    n_media = stats.audio_before[0] + stats.video_before[0]
    assert n_media == int(torch.isin(ids, torch.tensor([cfg.audio_token_id, cfg.video_token_id])).sum())
    assert stats.audio_after[0] + stats.video_after[0] == round(0.5 * n_media)
    assert 0 < stats.video_after[0] < stats.video_before[0]  # some video rows go, some stay
    keep = stats.kept_positions[0]
    assert torch.equal(seen["position_ids"], full["position_ids"][:, :, keep])  # original positions (float rows)
    video = ids[0] == cfg.video_token_id
    assert torch.equal(seen["visual_pos_masks"][0], video[keep])
    rank = torch.cumsum(video.long(), 0) - 1  # a video token's row in the full DeepStack levels
    kept_rows = rank[keep][video[keep]]
    for level, rows in zip(seen["deepstack_visual_embeds"], full["deepstack_visual_embeds"]):
        assert torch.equal(level, rows[kept_rows])
    # the stock decoder on the kept tokens alone, with their rows, gives the same logits
    with torch.no_grad():
        out = q3.model.language_model(
            inputs_embeds=full["inputs_embeds"][:, keep], position_ids=full["position_ids"][:, :, keep],
            attention_mask=torch.ones(1, keep.numel(), dtype=torch.long), visual_pos_masks=video[keep][None],
            deepstack_visual_embeds=[rows[kept_rows] for rows in full["deepstack_visual_embeds"]], use_cache=False,
        )
    assert torch.equal(logits, q3.lm_head(out.last_hidden_state))


def test_generate_continues_the_compressed_cache_at_original_positions(q3, clip):
    with sift.compress(q3, "random", retention=0.5) as session, DecoderCalls(q3, DECODER_KEYS) as spy:
        out = _greedy(q3, clip)
    assert len(spy.calls) == MAX_NEW  # one prefill, MAX_NEW - 1 decode steps
    prefill = spy.calls[0]
    assert prefill["position_ids"].shape[0] == 4  # generate's text row, rebuilt for the kept sequence
    assert prefill["inputs_embeds"].shape[1] == session.history[0].tokens_after[0]
    assert torch.equal(out[:, clip["input_ids"].shape[1]:], greedy_from_decoder_inputs(q3, prefill, MAX_NEW))
    first_decode = spy.calls[1]["position_ids"]
    assert float(first_decode[-3:].max()) == float(prefill["position_ids"][1:].max()) + 1


def test_left_padded_batch_of_two_rows_match_each_run_alone(q3):
    samples = [qwen3_av_inputs(q3.config, seconds=4, seed=1, prompt=(10, 11)),
               qwen3_av_inputs(q3.config, seconds=6, seed=2, prompt=(12, 13, 14, 15))]
    batch = qwen3_batch(q3.config, samples)
    assert bool((batch["attention_mask"] == 0).any())
    compressor = sift.get_compressor("random", retention=0.5, seed=3)
    with sift.compress(q3, compressor) as session:
        with torch.no_grad():
            batched = q3(**batch).logits
        batch_stats = session.stats
        batched_tokens = _greedy(q3, batch)
        for row, single in enumerate(samples):
            with torch.no_grad():
                alone = q3(**single).logits
            assert session.stats.tokens_after[0] == batch_stats.tokens_after[row]
            assert torch.allclose(batched[row, -alone.shape[1]:], alone[0], atol=1e-5)
            assert torch.equal(batched_tokens[row, -MAX_NEW:], _greedy(q3, single)[0, -MAX_NEW:])
    assert batch_stats.tokens_after[0] != batch_stats.tokens_after[1]


def test_labels_and_the_load_balancing_loss_cover_the_kept_tokens(q3, clip):
    ids = clip["input_ids"]
    labels = torch.full_like(ids, -100)
    labels[:, -3:] = ids[:, -3:]
    with torch.no_grad():
        stock = q3(**clip, labels=labels, output_router_logits=True)
        with sift.compress(q3, "none"):
            same = q3(**clip, labels=labels, output_router_logits=True)
    assert torch.equal(same.loss, stock.loss) and torch.equal(same.aux_loss, stock.aux_loss)

    with sift.compress(q3, "random", retention=0.4) as session, DecoderCalls(q3, DECODER_KEYS) as spy:
        out = q3(**clip, labels=labels, output_router_logits=True)
    keep = session.stats.kept_positions[0]
    text = q3.config.get_text_config()
    assert out.router_logits[0].shape == (keep.numel(), text.num_experts)
    with torch.no_grad():  # the stock thinker's own losses, on a decoder call with only the kept tokens
        seen = spy.calls[0]
        decoder = q3.model.language_model(**{k: seen[k] for k in DECODER_KEYS}, use_cache=False, output_router_logits=True)
        from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import load_balancing_loss_func

        aux = load_balancing_loss_func(decoder.router_logits, text.num_experts, text.num_experts_per_tok, None)
    ce = torch.nn.functional.cross_entropy(out.logits[0, :-1], labels[0, keep][1:], ignore_index=-100)
    assert torch.allclose(out.aux_loss, aux, atol=1e-6)
    assert torch.allclose(out.loss, ce + text.router_aux_loss_coef * aux, atol=1e-6)
    out.loss.backward()
    assert q3.lm_head.weight.grad is not None
    q3.zero_grad(set_to_none=True)


def test_multi_turn_follow_up_on_a_compressed_cache(q3, clip):
    cfg = q3.config
    gen = dict(max_new_tokens=3, do_sample=False, suppress_tokens=[cfg.audio_token_id, cfg.video_token_id, cfg.image_token_id])
    with sift.compress(q3, "random", retention=0.5) as session, torch.no_grad():
        first = q3.generate(**clip, **gen, return_dict_in_generate=True)
        assert hf.cache_out(first).get_seq_length() == session.stats.tokens_after[0] + 2
        history = torch.cat([first.sequences, torch.tensor([[12, 13, 14]])], dim=1)
        media = {k: v for k, v in clip.items() if k not in ("input_ids", "attention_mask")}
        scratch = q3.generate(input_ids=history, attention_mask=torch.ones_like(history), **media, **gen)
        again = q3.generate(input_ids=history, attention_mask=torch.ones_like(history), **media,
                            **{hf.CACHE_KWARG: copy.deepcopy(hf.cache_out(first))}, **gen)
        only_new = q3.generate(input_ids=history[:, first.sequences.shape[1]:], attention_mask=torch.ones_like(history),
                               **{hf.CACHE_KWARG: copy.deepcopy(hf.cache_out(first))}, **gen)
    assert torch.equal(again[:, -3:], scratch[:, -3:])
    assert torch.equal(only_new[:, -3:], scratch[:, -3:])


def test_video_without_audio(q3):
    silent = qwen3_av_inputs(q3.config, seconds=4, with_audio=False)
    with sift.compress(q3, "random", retention=0.5) as session, torch.no_grad():
        out = _greedy(q3, silent)
    stats = session.history[0]
    assert stats.audio_before == [0] and stats.video_after[0] == round(0.5 * stats.video_before[0]) > 0
    assert out.shape[1] == silent["input_ids"].shape[1] + MAX_NEW


def test_a_fresh_selector_is_sized_for_qwen3_30b_a3b_and_a_qwen25_selector_is_refused(q3, clip):
    from transformers import Qwen2_5OmniThinkerConfig, Qwen3OmniMoeConfig

    from sift.selector import OmniSIFTSelector

    from sift.flops import QWEN3_OMNI_30B_A3B

    real = Qwen3OmniMoeConfig(thinker_config={"text_config": QWEN3_OMNI_30B_A3B["text"]})  # a full model's config
    selector = OmniSIFTSelector.from_config(real)
    assert selector.config.hidden_size == 2048 and selector.config.base_model == "qwen3_omni_moe_thinker"
    qwen25_3b = OmniSIFTSelector.from_config(Qwen2_5OmniThinkerConfig(text_config={"hidden_size": 2048}))
    assert qwen25_3b.config.hidden_size == 2048  # the same width: only the family tells them apart
    with pytest.raises(ValueError, match="trained on qwen2_5_omni_thinker embeddings, but the model is qwen3_omni_moe_thinker"):
        qwen25_3b.check_model(real)
    tiny25 = OmniSIFTSelector.from_config(Qwen2_5OmniThinkerConfig(text_config={"hidden_size": 64}))
    with pytest.raises(ValueError, match="is qwen3_omni_moe_thinker"):  # refused on entry, before any forward
        with sift.compress(q3, sift.get_compressor("omnisift", retention=0.5, selector=tiny25)):
            pass
    assert not q3._forward_pre_hooks
    fresh = OmniSIFTSelector.from_config(q3.config)
    with sift.compress(q3, sift.get_compressor("omnisift", retention=0.5, selector=fresh)) as session, torch.no_grad():
        q3(**clip)
    assert session.stats.retention == pytest.approx(0.5, abs=0.01)


def test_a_full_qwen3_checkpoint_loads_as_its_thinker_and_compresses(tmp_path, clip):
    """load_thinker reads the family off config.json: a saved full Qwen3OmniMoeForConditionalGeneration comes
    back as its thinker, weight for weight, and sift.compress on the full model hooks that thinker."""
    from transformers import Qwen3OmniMoeConfig, Qwen3OmniMoeForConditionalGeneration

    from sift.models import adapter_for_config, load_thinker

    config = tiny_qwen3_thinker_config()
    torch.manual_seed(0)
    full = Qwen3OmniMoeForConditionalGeneration(Qwen3OmniMoeConfig(thinker_config=config.to_dict(), enable_audio_output=False)).eval()
    assert isinstance(adapter_for_config(full.config), Qwen3OmniAdapter)
    full.save_pretrained(tmp_path)
    thinker = load_thinker(str(tmp_path))
    assert type(thinker) is type(full.thinker)
    with sift.compress(full, "random", retention=0.5) as session, torch.no_grad():
        assert session.thinker is full.thinker
        compressed = full.thinker(**clip).logits
    with sift.compress(thinker, "random", retention=0.5), torch.no_grad():
        assert torch.equal(thinker(**clip).logits, compressed)
    with pytest.raises(ValueError, match="sift supports model types .*qwen3_omni_moe.*; got 'bert'"):
        from transformers import BertConfig

        adapter_for_config(BertConfig())
