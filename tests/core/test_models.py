"""The model seam: every model-specific question goes to the model's adapter, and a new adapter is all a new
model family needs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sift
import sift.models.base as models_base
from sift.models import OmniAdapter, Qwen25OmniAdapter, adapter_for, register_adapter


def test_qwen25_omni_thinker_gets_its_adapter_and_the_plugin_hooks_its_language_model(thinker, synth_inputs):
    adapter = adapter_for(thinker)
    assert isinstance(adapter, Qwen25OmniAdapter) and adapter.thinker(thinker) is thinker
    assert adapter.language_model(thinker) is thinker.model.language_model
    layout = adapter.read_layout(synth_inputs, thinker.config)
    reference = sift.layout_of(synth_inputs, thinker.config)
    assert layout.num_tokens == reference.num_tokens > 0
    assert torch.equal(layout.media_mask(), reference.media_mask())
    assert adapter.hidden_size(thinker.config) == thinker.config.get_text_config().hidden_size
    ids = adapter.media_token_ids(thinker.config)
    assert thinker.config.audio_token_id in ids and thinker.config.video_token_id in ids


def test_an_unknown_model_is_refused_naming_what_is_supported():
    with pytest.raises(TypeError, match="sift supports Qwen2_5OmniThinkerForConditionalGeneration, "
                                        "Qwen2_5OmniForConditionalGeneration, Qwen3OmniMoeThinkerForConditionalGeneration, "
                                        "Qwen3OmniMoeForConditionalGeneration; got Linear"):
        adapter_for(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="^sift.compress: sift supports"):
        sift.compress(nn.Linear(2, 2), "random", 0.5)


class Holder(nn.Module):
    """A model family sift has never seen: it keeps a Qwen2.5-Omni thinker under another attribute."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner


class HolderAdapter(Qwen25OmniAdapter):
    name = "holder"
    thinker_classes = ()
    wrapper_classes = (Holder,)

    def thinker(self, model: nn.Module) -> nn.Module:
        return model.inner


def test_one_new_adapter_is_all_a_new_model_family_needs(thinker, synth_inputs, monkeypatch):
    monkeypatch.setattr(models_base, "_ADAPTERS", list(models_base._ADAPTERS))
    register_adapter(HolderAdapter)
    assert isinstance(adapter_for(Holder(thinker)), HolderAdapter)
    with torch.no_grad():
        with sift.compress(Holder(thinker), "random", 0.5, seed=0) as via_holder:
            a = thinker(**synth_inputs).logits
        with sift.compress(thinker, "random", 0.5, seed=0) as direct:
            b = thinker(**synth_inputs).logits
    assert via_holder.stats.tokens_after == direct.stats.tokens_after
    assert torch.equal(a, b)


def test_the_interface_leaves_nothing_model_specific_to_a_default():
    class Bare(OmniAdapter):
        name = "bare"
        language_model_path = "model"

    bare = Bare()
    for method, args in [("read_layout", ({}, None)), ("split_positions", (None,)), ("media_token_ids", (None,)),
                         ("audio_tower", (None,)), ("continuation_positions", (None, None, 1)),
                         ("audio_positions", (None, None))]:
        with pytest.raises(NotImplementedError):
            getattr(bare, method)(*args)
