"""Each transformers internal named in sift.hf_internals, checked against the installed transformers.

When an upgrade moves one of them, the failure is here and names it, instead of deep inside a method.
"""

from __future__ import annotations

import inspect
import tomllib
import warnings
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from packaging.version import Version
from transformers import DynamicCache, Qwen2_5OmniThinkerForConditionalGeneration

import sift
from sift import hf_internals as hf

ROOT = Path(__file__).resolve().parents[2]
GEN = dict(max_new_tokens=3, do_sample=False)


def _forward_params() -> set[str]:
    return set(inspect.signature(Qwen2_5OmniThinkerForConditionalGeneration.forward).parameters)


def test_installed_transformers_is_in_the_tested_range():
    assert hf.MIN_TRANSFORMERS <= hf.TRANSFORMERS_VERSION < hf.MAX_TRANSFORMERS, hf.TRANSFORMERS_VERSION


def test_pyproject_bound_is_the_tested_range():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    spec = next(Requirement(d).specifier for d in deps if Requirement(d).name == "transformers")
    assert {(s.operator, Version(s.version)) for s in spec} == {
        (">=", hf.MIN_TRANSFORMERS),
        ("<", hf.MAX_TRANSFORMERS),
    }


def test_constraints_pin_a_transformers_in_the_tested_range():
    pins = dict(
        line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines() if "==" in line
    )
    assert hf.MIN_TRANSFORMERS <= Version(pins["transformers"]) < hf.MAX_TRANSFORMERS
    for name in ("torch", "torchvision", "tokenizers", "lightning", "deepspeed", "peft", "datasets", "av", "numpy"):
        assert name in pins, f"constraints.txt pins no {name}"


def test_media_and_cache_keywords_are_thinker_inputs():
    params = _forward_params()
    assert hf.CACHE_KWARG in params
    assert set(hf.MEDIA_INPUT_KEYS) <= params
    assert hf.MM_ENCODER_OUTPUTS in params


def test_cache_travels_under_the_current_name_without_warnings(thinker, synth_inputs):
    cache = DynamicCache(config=thinker.config.get_text_config())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            out = thinker(**synth_inputs, **{hf.CACHE_KWARG: cache}, use_cache=True)
    assert hf.cache_out(out) is cache
    assert cache.get_seq_length() == synth_inputs["input_ids"].shape[1]
    assert hf.cache_in({hf.CACHE_KWARG: cache}) is cache


@pytest.mark.skipif(hf.CACHE_KWARG != "cache", reason="the cache keyword was renamed in transformers 5.24")
def test_old_cache_name_still_works_inside_compress(thinker, synth_inputs):
    """A user on 5.24 who still writes past_key_values gets transformers' warning, and compression still works."""
    assert hf.cache_in({"past_key_values": 1}) == 1
    comp = sift.get_compressor("random", retention=0.5)
    with sift.compress(thinker, comp) as session, torch.no_grad():
        first = thinker(**synth_inputs, use_cache=True)
        kept = session.stats.tokens_after[0]
        nxt = first.logits[:, -1:].argmax(-1)
        mask = torch.cat([synth_inputs["attention_mask"], torch.ones_like(nxt)], 1)
        with pytest.warns(FutureWarning, match="past_key_values"):
            step = thinker(input_ids=nxt, attention_mask=mask, past_key_values=hf.cache_out(first), use_cache=True)
    assert hf.cache_out(step).get_seq_length() == kept + 1  # the step continued the compressed cache


def test_language_model_gets_embeds_positions_and_mask(thinker, synth_inputs):
    """The plug-in's pre-hook needs inputs_embeds, (3 or 4)-row positions and a 2D mask, as keywords."""
    seen: list[dict] = []
    lm = hf.language_model(thinker)
    assert all(n.startswith(hf.LANGUAGE_MODEL_PATH + ".") for n, _ in thinker.named_parameters() if ".layers." in n and "audio" not in n and "visual" not in n)
    handle = lm.register_forward_pre_hook(lambda m, a, kw: seen.append(kw), with_kwargs=True)
    try:
        with torch.no_grad():
            thinker(**synth_inputs)
            thinker.generate(**synth_inputs, **GEN)
    finally:
        handle.remove()
    mask = synth_inputs["attention_mask"]
    assert torch.equal(seen[0]["attention_mask"], mask)
    assert seen[1]["attention_mask"] is None, "generate drops an all-ones mask (the plug-in puts one back)"
    for kw in (seen[0], seen[1]):  # plain forward, generate's prefill
        assert kw["inputs_embeds"].shape[:2] == mask.shape
        text_row, pos3 = hf.split_text_positions(kw["position_ids"])
        assert pos3.shape == (3, *mask.shape)
        if text_row is not None:
            assert torch.equal(text_row, hf.text_positions(mask, text_row.dtype))
    assert hf.split_text_positions(seen[1]["position_ids"])[0] is not None, "generate sends 4-row positions"


def test_rope_deltas_follow_the_model_convention(thinker, synth_inputs):
    seen: list[torch.Tensor] = []
    lm = hf.language_model(thinker)
    handle = lm.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["position_ids"]), with_kwargs=True)
    try:
        with torch.no_grad():
            thinker(**synth_inputs)
    finally:
        handle.remove()
    pos3 = hf.split_text_positions(seen[0])[1]
    ours = hf.rope_deltas(pos3, synth_inputs["attention_mask"].bool())
    assert torch.equal(ours.cpu(), thinker.model.rope_deltas.cpu().reshape(ours.shape).to(ours.dtype))


def test_generate_passes_encoder_outputs_and_the_slice_length(thinker, synth_inputs):
    prefill_keys: list[set] = []
    prepare_keys: list[set] = []
    prepare = type(thinker).prepare_inputs_for_generation

    def spy(*args, **kwargs):
        prepare_keys.append(set(kwargs))
        return prepare(thinker, *args, **kwargs)

    handle = thinker.register_forward_pre_hook(lambda m, a, kw: prefill_keys.append(set(kw)), with_kwargs=True)
    thinker.prepare_inputs_for_generation = spy
    try:
        with torch.no_grad():
            thinker.generate(**synth_inputs, **GEN)
    finally:
        handle.remove()
        del thinker.prepare_inputs_for_generation
    assert hf.MM_ENCODER_OUTPUTS in prefill_keys[0]
    assert all(hf.NEXT_SEQUENCE_LENGTH in k for k in prepare_keys)
    assert any(hf.CACHE_KWARG in k for k in prefill_keys[1:])


def test_audio_tower_and_attention_call_arguments(thinker, synth_inputs):
    tower, attn = hf.audio_tower(thinker), hf.audio_attention(thinker)
    for name in ("q_proj", "k_proj", "scaling", "num_heads"):
        assert hasattr(attn, name), f"audio attention lost {name}"
    got: dict = {}

    def on_tower(m, a, kw):
        got["lens"] = hf.audio_tower_feature_lens(a, kw)

    def on_attn(m, a, kw):
        got["hidden"], got["cu"] = hf.audio_attention_inputs(a, kw)

    handles = [
        tower.register_forward_pre_hook(on_tower, with_kwargs=True),
        attn.register_forward_pre_hook(on_attn, with_kwargs=True),
        hf.vision_tower(thinker).register_forward_pre_hook(lambda m, a: got.update(vision=True)),
    ]
    try:
        with torch.no_grad():
            thinker(**synth_inputs)
    finally:
        for h in handles:
            h.remove()
    assert torch.equal(torch.as_tensor(got["lens"]).cpu(), synth_inputs["feature_attention_mask"].sum(-1))
    cu = torch.as_tensor(got["cu"]).reshape(-1)
    assert got["hidden"].ndim == 2 and int(cu[0]) == 0 and int(cu[-1]) == got["hidden"].shape[0]
    assert got["vision"]


def test_qwen3_omni_internals_hold():
    """The Qwen3-Omni decoder takes the DeepStack keywords, and its thinker's seam has Qwen2.5's names."""
    from transformers import Qwen3OmniMoeThinkerForConditionalGeneration
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeThinkerTextModel

    assert set(hf.DEEPSTACK_KWARGS) <= set(inspect.signature(Qwen3OmniMoeThinkerTextModel.forward).parameters)
    params = set(inspect.signature(Qwen3OmniMoeThinkerForConditionalGeneration.forward).parameters)
    assert hf.CACHE_KWARG in params and set(hf.MEDIA_INPUT_KEYS) <= params and set(hf.THINKER_INPUT_KEYS) <= params
    logits = (torch.randn(6, 4),)
    assert float(hf.load_balancing_loss(logits, 4, 2, torch.ones(1, 6))) > 0
