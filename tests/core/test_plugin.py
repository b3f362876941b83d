"""sift.compress on the tiny real Qwen2.5-Omni thinker: exactness, positions, generate, batches, labels."""

from __future__ import annotations

import copy

import pytest
import torch

import sift
from sift import hf_internals as hf
from sift.testbed.media import synth_clip
from sift.testbed.probes import DecoderCalls, greedy_from_decoder_inputs
from sift.testbed.tiny import omni_inputs, tiny_thinker

MAX_NEW = 6
DECODER_KEYS = ("inputs_embeds", "position_ids", "attention_mask")


def _greedy(model, inputs, **kw):
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=MAX_NEW, do_sample=False, **kw)


@pytest.fixture(scope="module")
def batch_inputs(processor):
    """Two different clips (4 s and 6 s, different tones) in one left-padded batch, and each alone."""
    clips = [synth_clip(4.0, tone_hz=440.0, seed=1), synth_clip(6.0, tone_hz=880.0, seed=2)]
    prompts = ["What moves?", "Which color is the square at the end?"]
    batch = omni_inputs(processor, clips, prompts)
    alone = [omni_inputs(processor, [c], [p]) for c, p in zip(clips, prompts)]
    return batch, alone


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("method", [("none", 1.0), ("random", 1.0)])
def test_full_retention_is_bit_identical(thinker_config, synth_inputs, attn, method):
    model = tiny_thinker(thinker_config, attn_implementation=attn)
    with torch.no_grad():
        ref = model(**synth_inputs).logits
    ref_tokens = _greedy(model, synth_inputs)
    name, retention = method
    with sift.compress(model, name, retention=retention) as session:
        with torch.no_grad():
            out = model(**synth_inputs).logits
        tokens = _greedy(model, synth_inputs)
    assert torch.equal(out, ref)
    assert torch.equal(tokens, ref_tokens)
    assert session.stats.retention == 1.0


def test_half_retention_token_count_and_positions(thinker, synth_inputs):
    ids = synth_inputs["input_ids"]
    layout = sift.layout_of(synth_inputs, thinker.config)
    n_media, n_text = layout.num_tokens, ids.shape[1] - layout.num_tokens
    full_positions, _ = thinker.model.get_rope_index(
        ids,
        None,
        synth_inputs["video_grid_thw"],
        synth_inputs["attention_mask"],
        True,
        synth_inputs["feature_attention_mask"].sum(-1),
        synth_inputs["video_second_per_grid"],
    )
    with sift.compress(thinker, "random", retention=0.5) as session, DecoderCalls(thinker, DECODER_KEYS) as spy:
        with torch.no_grad():
            out = thinker(**synth_inputs)
    seen = spy.calls[0]
    expected_len = n_text + round(0.5 * n_media)
    assert seen["inputs_embeds"].shape[1] == expected_len
    assert out.logits.shape[1] == expected_len
    kept = session.stats.kept_positions[0]
    assert kept.numel() == expected_len
    assert torch.equal(seen["position_ids"][:, 0], full_positions[:, 0, kept])
    # text and special tokens all survive
    assert torch.isin(torch.nonzero(~layout.media_mask()[0]).squeeze(1), kept).all()
    stats = session.stats
    assert stats.audio_after[0] + stats.video_after[0] == round(0.5 * n_media)
    assert stats.audio_before[0] + stats.video_before[0] == n_media
    assert stats.tokens_after == [expected_len]
    assert stats.selection_time_s > 0


def test_generate_equals_manual_cache_loop_on_shrunk_input(thinker, synth_inputs):
    with sift.compress(thinker, "random", retention=0.5), DecoderCalls(thinker, DECODER_KEYS) as spy:
        out = _greedy(thinker, synth_inputs)
    prefill = spy.calls[0]
    assert len(spy.calls) == MAX_NEW  # one prefill + MAX_NEW - 1 decode steps
    pos3 = prefill["position_ids"][1:] if prefill["position_ids"].shape[0] == 4 else prefill["position_ids"]
    manual = greedy_from_decoder_inputs(thinker, prefill, MAX_NEW)
    assert torch.equal(out[:, synth_inputs["input_ids"].shape[1] :], manual)
    # decode steps continue at max position + 1 of the kept prompt
    first_decode = spy.calls[1]["position_ids"]
    assert int(first_decode[-3:].max()) == int(pos3.max()) + 1


@pytest.mark.slow
def test_batch_rows_match_runs_alone(thinker, batch_inputs):
    batch, alone = batch_inputs
    assert (batch["attention_mask"] == 0).any(), "the batch must be padded for this test to mean something"
    compressor = sift.get_compressor("random", retention=0.5, seed=3)
    with sift.compress(thinker, compressor) as session:
        with torch.no_grad():
            batched = thinker(**batch).logits
        batch_stats = session.stats
        batched_tokens = _greedy(thinker, batch)
        for row, single in enumerate(alone):
            with torch.no_grad():
                logits = thinker(**single).logits
            assert session.stats.tokens_after[0] == batch_stats.tokens_after[row]
            assert torch.allclose(batched[row, -1], logits[0, -1], atol=1e-5)
            # left-padded batch: each row's kept tokens end at the last column
            n = logits.shape[1]
            assert torch.allclose(batched[row, -n:], logits[0], atol=1e-5)
            tokens = _greedy(thinker, single)
            assert torch.equal(batched_tokens[row, -MAX_NEW:], tokens[0, -MAX_NEW:])
    assert batch_stats.tokens_after[0] != batch_stats.tokens_after[1]


def test_labels_loss_over_kept_sequence(thinker, synth_inputs):
    ids = synth_inputs["input_ids"]
    labels = ids.clone()
    labels[:, : ids.shape[1] - 5] = -100  # supervise the last 5 (text) tokens only
    with torch.no_grad():
        stock = thinker(**synth_inputs, labels=labels).loss
    with sift.compress(thinker, "none"):
        with torch.no_grad():
            same = thinker(**synth_inputs, labels=labels).loss
    assert torch.equal(same, stock)

    with sift.compress(thinker, "random", retention=0.4) as session:
        out = thinker(**synth_inputs, labels=labels)
    kept = session.stats.kept_positions[0]
    shrunk = labels[0, kept]
    expected = torch.nn.functional.cross_entropy(out.logits[0, :-1], shrunk[1:], ignore_index=-100)
    assert torch.allclose(out.loss, expected, atol=1e-6)
    assert not torch.allclose(out.loss, stock)  # the context changed what the answer tokens see
    out.loss.backward()
    assert thinker.lm_head.weight.grad is not None and thinker.lm_head.weight.grad.abs().sum() > 0
    thinker.zero_grad(set_to_none=True)


def test_multi_turn_follow_up_on_compressed_cache(thinker, synth_inputs, tokenizer):
    comp = sift.get_compressor("random", retention=0.5)
    cfg = thinker.config
    # a random tiny model may emit placeholder ids; the follow-up history must parse as the same media
    gen = dict(max_new_tokens=4, do_sample=False, suppress_tokens=[cfg.audio_token_id, cfg.video_token_id, cfg.image_token_id])
    with sift.compress(thinker, comp) as session:
        with torch.no_grad():
            first = thinker.generate(**synth_inputs, **gen, return_dict_in_generate=True)
        kept = session.stats.tokens_after[0]
        assert hf.cache_out(first).get_seq_length() == kept + 3  # the cache holds only kept tokens
        follow = tokenizer(
            "<|im_end|>\n<|im_start|>user\nAnd then?<|im_end|>\n<|im_start|>assistant\n", return_tensors="pt"
        ).input_ids
        history = torch.cat([first.sequences, follow], dim=1)
        mask = torch.ones_like(history)
        media = {k: v for k, v in synth_inputs.items() if k not in ("input_ids", "attention_mask")}
        with torch.no_grad():
            # Reference: the whole history compressed from scratch (random keeps the same media tokens).
            scratch = thinker.generate(input_ids=history, attention_mask=mask, **media, **gen)
            # A chat loop continuing the compressed cache, with the full history ids and the media passed again...
            cache = copy.deepcopy(hf.cache_out(first))
            again = thinker.generate(
                input_ids=history, attention_mask=mask, **media, **{hf.CACHE_KWARG: cache}, **gen
            )
            # ...or with only the new tokens and the full-history mask.
            cache = copy.deepcopy(hf.cache_out(first))
            only_new = thinker.generate(
                input_ids=follow, attention_mask=mask, **{hf.CACHE_KWARG: cache}, **gen
            )
    assert torch.equal(again[:, -4:], scratch[:, -4:])
    assert torch.equal(only_new[:, -4:], scratch[:, -4:])


def test_hooks_removed_on_exit_and_on_error(thinker, synth_inputs):
    lm = hf.language_model(thinker)

    def counts():
        return (len(thinker._forward_pre_hooks), len(thinker._forward_hooks), len(lm._forward_pre_hooks))

    before = counts()
    with sift.compress(thinker, "random", retention=0.5):
        assert counts() != before
        assert "generate" in thinker.__dict__
    assert counts() == before
    assert "generate" not in thinker.__dict__ and "prepare_inputs_for_generation" not in thinker.__dict__
    with pytest.raises(RuntimeError, match="boom"):
        with sift.compress(thinker, "random", retention=0.5):
            raise RuntimeError("boom")
    assert counts() == before
    with torch.no_grad():
        n = thinker(**synth_inputs).logits.shape[1]
    assert n == synth_inputs["input_ids"].shape[1]  # no compression left behind


def test_nested_context_is_refused(thinker):
    with sift.compress(thinker, "none"):
        with pytest.raises(RuntimeError, match="already inside"):
            with sift.compress(thinker, "none"):
                pass


def test_unsupported_model_and_bad_arguments():
    with pytest.raises(TypeError, match="Qwen2_5OmniThinkerForConditionalGeneration"):
        sift.compress(torch.nn.Linear(2, 2), "none")
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="retention"):
            sift.get_compressor("random", retention=bad)
    with pytest.raises(ValueError, match="unknown compressor 'nope'"):
        sift.get_compressor("nope")
    with pytest.raises(ValueError, match="'none' keeps every token"):
        sift.get_compressor("none", retention=0.5)
    with pytest.raises(TypeError, match="random"):
        sift.get_compressor("random", retention=0.5, colour="red")


def test_compressor_that_drops_text_is_rejected(thinker, synth_inputs):
    class Greedy(sift.Compressor):
        name = "greedy"

        def select(self, batch):
            keep = torch.zeros_like(batch.input_ids, dtype=torch.bool)
            return sift.Selection(keep=keep)

    with sift.compress(thinker, Greedy(retention=0.5)):
        with pytest.raises(RuntimeError, match="dropped text or special tokens"):
            with torch.no_grad():
                thinker(**synth_inputs)


def test_text_only_input_is_untouched(thinker, tokenizer):
    enc = tokenizer(["hello there", "hi"], return_tensors="pt", padding=True)
    with torch.no_grad():
        ref = thinker(**enc).logits
        with sift.compress(thinker, "random", retention=0.3) as session:
            out = thinker(**enc).logits
    assert torch.equal(ref, out)
    assert session.stats is None


def test_full_omni_model_compresses_its_thinker(thinker_config, synth_inputs):
    from transformers import Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration

    torch.manual_seed(0)
    full = Qwen2_5OmniForConditionalGeneration(
        Qwen2_5OmniConfig(thinker_config=thinker_config.to_dict(), enable_audio_output=False)
    ).eval()
    with sift.compress(full, "random", retention=0.5) as session:
        assert session.thinker is full.thinker
        with torch.no_grad():
            out = full.thinker(**synth_inputs)
            tokens = full.thinker.generate(**synth_inputs, max_new_tokens=3, do_sample=False)
    n_media = session.history[0].audio_before[0] + session.history[0].video_before[0]
    assert out.logits.shape[1] == synth_inputs["input_ids"].shape[1] - n_media + round(0.5 * n_media)
    assert tokens.shape[1] == synth_inputs["input_ids"].shape[1] + 3
    assert len(full.thinker._forward_pre_hooks) == 0


def _flash_available() -> bool:
    import importlib.util

    return torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None


@pytest.mark.gpu
@pytest.mark.skipif(not _flash_available(), reason="flash_attention_2 needs a CUDA GPU and the flash-attn package")
def test_flash_attention_2_matches_sdpa(thinker_config, synth_inputs):
    inputs = {k: (v.cuda() if torch.is_tensor(v) else v) for k, v in synth_inputs.items()}
    for key in ("pixel_values_videos", "input_features"):
        inputs[key] = inputs[key].to(torch.bfloat16)
    results = {}
    for attn in ("sdpa", "flash_attention_2"):
        model = tiny_thinker(thinker_config, attn_implementation=attn, dtype=torch.bfloat16).cuda()
        with sift.compress(model, "random", retention=0.5) as session, torch.no_grad():
            logits = model(**inputs).logits
            model.generate(**inputs, max_new_tokens=3, do_sample=False)
        results[attn] = (logits.float(), session.stats.tokens_after)
    assert results["sdpa"][1] == results["flash_attention_2"][1]
    assert torch.allclose(results["sdpa"][0], results["flash_attention_2"][0], atol=5e-2)
