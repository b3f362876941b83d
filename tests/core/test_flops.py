"""sift.flops: OmniZip Eq. 9 against hand-computed values, its ratio, and the real 7B / 3B dimensions."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    Qwen2_5OmniConfig,
    Qwen2_5OmniTextConfig,
    Qwen2_5OmniThinkerConfig,
    Qwen2_5OmniThinkerForConditionalGeneration,
)

from sift import hf_internals as hf
from sift.flops import QWEN25_OMNI_3B, QWEN25_OMNI_7B, flops, flops_ratio, text_dims
from sift.testbed.random_models import omni_thinker_config

# A small LLM: T = 2 layers, hidden d = 4, FFN m = 8.
SMALL = dict(num_hidden_layers=2, hidden_size=4, intermediate_size=8)


def test_flops_small_config_by_hand():
    # n = 3 prompt tokens, R = 2 new tokens.
    # prefill, per layer: 4*n*d^2 = 4*3*16 = 192;  2*n^2*d = 2*9*4 = 72;  2*n*d*m = 2*3*4*8 = 192  -> 456
    #   x T = 2 layers                                                                              -> 912
    # decode, per layer and step: 4*d^2 + 2*d*m = 64 + 64 = 128;  2*(d*n + d*(R+1)/2) = 2*(12 + 6) = 36
    #   -> 164, x T*R = 4                                                                           -> 656
    assert flops(SMALL, 3, new_tokens=2) == 912 + 656 == 1568
    assert flops(SMALL, 3, new_tokens=0) == 912  # prefill only
    # no prompt, one step: T*R*((4d^2 + 2dm) + 2*(0 + d*(1+1)/2)) = 2*(128 + 8) = 272
    assert flops(SMALL, 0, new_tokens=1) == 272
    # default R = 100: decode per layer = 100*(128 + 2*(12 + 4*101/2)) = 100*(128 + 24 + 404) = 55600
    assert flops(SMALL, 3) == 912 + 2 * 55600
    assert isinstance(flops(SMALL, 3), float)


def test_flops_accepts_every_config_form():
    text = Qwen2_5OmniTextConfig(**SMALL, num_attention_heads=2, num_key_value_heads=1, vocab_size=64)
    thinker = Qwen2_5OmniThinkerConfig(text_config=text.to_dict())
    full = Qwen2_5OmniConfig(thinker_config=thinker.to_dict())
    nested = {"text": dict(SMALL)}
    for cfg in (SMALL, nested, text, thinker, full):
        assert text_dims(cfg) == (2, 4, 8)
        assert flops(cfg, 3, new_tokens=2) == 1568
    with pytest.raises(TypeError):
        text_dims({"hidden_size": 4})
    with pytest.raises(ValueError):
        flops(SMALL, -1)


def test_flops_ratio():
    # n = 1: prefill per layer 4*16 + 2*1*4 + 2*1*4*8 = 64 + 8 + 64 = 136 -> x2 = 272
    #        decode per layer and step 128 + 2*(4 + 6) = 148 -> x T*R = 4 -> 592;  total 864
    assert flops(SMALL, 1, new_tokens=2) == 864
    assert flops_ratio(SMALL, 1, 3, new_tokens=2) == pytest.approx(864 / 1568)
    assert flops_ratio(SMALL, 3, 3) == 1.0
    # long prompts: the quadratic attention term makes the ratio fall below the token ratio
    r = flops_ratio(QWEN25_OMNI_7B, 2535, 10140)
    assert 0.19 < r < 0.25


def test_7b_and_3b_constants():
    t7, t3 = QWEN25_OMNI_7B["text"], QWEN25_OMNI_3B["text"]
    assert (t7["hidden_size"], t7["num_hidden_layers"], t7["intermediate_size"]) == (3584, 28, 18944)
    assert (t7["num_attention_heads"], t7["num_key_value_heads"], t7["head_dim"], t7["vocab_size"]) == (28, 4, 128, 152064)
    assert (t3["hidden_size"], t3["num_hidden_layers"], t3["intermediate_size"]) == (2048, 36, 11008)
    assert (t3["num_attention_heads"], t3["num_key_value_heads"], t3["vocab_size"]) == (16, 2, 151936)
    assert QWEN25_OMNI_7B["audio"]["d_model"] == QWEN25_OMNI_7B["vision"]["hidden_size"] == 1280
    assert QWEN25_OMNI_3B["audio"]["output_dim"] == QWEN25_OMNI_3B["vision"]["out_hidden_size"] == 2048
    # transformers' default thinker config is the 7B one
    assert text_dims(Qwen2_5OmniThinkerConfig()) == text_dims(QWEN25_OMNI_7B) == (28, 3584, 18944)
    # Eq. 9 at 7B for 60 s of video (10140 media tokens), R = 100, written out
    T, d, m, n, R = 28, 3584, 18944, 10140, 100
    expected = T * (4 * n * d**2 + 2 * n**2 * d + 2 * n * d * m) + T * R * ((4 * d**2 + 2 * d * m) + 2 * d * n + d * (R + 1))
    assert flops(QWEN25_OMNI_7B, n) == float(expected)
    assert flops(QWEN25_OMNI_7B, n) == pytest.approx(7.4506e13, rel=1e-4)


@pytest.mark.parametrize("size", ["7b", "3b"])
def test_thinker_config_reproduces_real_parameter_counts(size):
    dims = {"7b": QWEN25_OMNI_7B, "3b": QWEN25_OMNI_3B}[size]
    config = omni_thinker_config(size, encoders="real")
    with torch.device("meta"):  # no memory: only the shapes
        model = Qwen2_5OmniThinkerForConditionalGeneration(config)
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    expected = dims["parameters"]
    assert count(model) == pytest.approx(expected["thinker"], rel=2e-3)
    assert count(model.model.audio_tower) == pytest.approx(expected["audio"], rel=2e-3)
    assert count(model.model.visual) == pytest.approx(expected["vision"], rel=2e-3)
    assert count(hf.language_model(model)) == pytest.approx(expected["llm"], rel=2e-3)
    # fewer layers, tiny encoders, small vocabulary: the LLM dims stay real
    small = omni_thinker_config(size, layers=1, encoders="tiny", vocab_size=1024)
    assert small.text_config.num_hidden_layers == 1 and small.text_config.vocab_size == 1024
    assert small.text_config.hidden_size == dims["text"]["hidden_size"]
    assert small.audio_config.output_dim == small.vision_config.out_hidden_size == dims["text"]["hidden_size"]
    with pytest.raises(ValueError):
        omni_thinker_config(size, layers=0)


def test_qwen3_omni_30b_a3b_dims_give_the_published_size_and_the_active_parameters_formula():
    """On the meta device: the dims give the published 30,532,122,624 text-model + lm_head parameters, and
    active_parameters is exactly the decoder's matrix weights with only k of E experts counted."""
    from transformers import Qwen3OmniMoeThinkerConfig
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeThinkerTextModel

    from sift.flops import QWEN3_OMNI_30B_A3B, active_parameters

    text = {k: v for k, v in QWEN3_OMNI_30B_A3B["text"].items() if k not in ("rope_theta", "mrope_section")}
    config = Qwen3OmniMoeThinkerConfig(text_config=text)
    with torch.device("meta"):
        model = Qwen3OmniMoeThinkerTextModel._from_config(config.text_config)
    d, vocab = text["hidden_size"], text["vocab_size"]
    assert sum(p.numel() for p in model.parameters()) + vocab * d == QWEN3_OMNI_30B_A3B["parameters"]["llm_and_lm_head"]
    share = text["num_experts_per_tok"] / text["num_experts"]
    counted = 0
    for name, p in model.layers.named_parameters():
        if p.ndim >= 2:
            counted += p.numel() * share if ".experts." in name else p.numel()
    assert active_parameters(config) == counted == 2_730_491_904
    assert text_dims(config) == (48, 2048, 8 * 768)  # FLOPs use the active FFN width
    assert flops(config, 1000, 0) == 48 * (4 * 1000 * d * d + 2 * 1000**2 * d + 2 * 1000 * d * 6144)
