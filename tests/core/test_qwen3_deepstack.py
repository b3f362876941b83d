"""DeepStack rows on the real Qwen3-Omni decoder: dropping video tokens with `shrink_sequence` and
`shrink_visual_rows` gives exactly the logits of the stock decoder run on only the kept tokens and their rows
(the groundwork of the Qwen3-Omni adapter, issue 14)."""

import torch

from sift.sequence import shrink_sequence, shrink_visual_rows
from sift.testbed.probes import decoder_inputs
from sift.testbed.tiny_qwen3 import qwen3_av_inputs, tiny_qwen3_thinker


def test_dropping_video_tokens_drops_their_deepstack_rows_exactly():
    thinker = tiny_qwen3_thinker()
    inputs = qwen3_av_inputs(thinker.config, seconds=4, fps=2.0)
    full = decoder_inputs(thinker, inputs)
    ids = inputs["input_ids"]
    video = ids == thinker.config.video_token_id
    gen = torch.Generator().manual_seed(0)
    drop = video & (torch.rand(ids.shape, generator=gen) < 0.5)
    drop |= (ids == thinker.config.audio_token_id) & (torch.rand(ids.shape, generator=gen) < 0.5)
    keep = ~drop
    assert 0 < int((drop & video).sum()) < int(video.sum())

    def shrink(module, args, kwargs):
        shrunk = shrink_sequence(kwargs["inputs_embeds"], kwargs["position_ids"], kwargs["attention_mask"], keep)
        mask, levels = shrink_visual_rows(
            kwargs["visual_pos_masks"], kwargs["deepstack_visual_embeds"], keep, shrunk.slots, shrunk.attention_mask.shape[1]
        )
        kwargs.update(inputs_embeds=shrunk.inputs_embeds, position_ids=shrunk.position_ids,
                      attention_mask=shrunk.attention_mask, visual_pos_masks=mask, deepstack_visual_embeds=levels)
        return args, kwargs

    handle = thinker.model.language_model.register_forward_pre_hook(shrink, with_kwargs=True)
    try:
        with torch.no_grad():
            logits = thinker(**inputs).logits
    finally:
        handle.remove()

    # reference, built independently: each level's rows scattered onto their tokens, then the kept tokens taken
    k = keep[0]
    dense = [torch.zeros(ids.shape[1], rows.shape[1]).index_put_((torch.nonzero(video[0]).squeeze(1),), rows)
             for rows in full["deepstack_visual_embeds"]]
    with torch.no_grad():
        out = thinker.model.language_model(
            inputs_embeds=full["inputs_embeds"][:, k],
            position_ids=full["position_ids"][:, :, k],
            attention_mask=torch.ones(1, int(k.sum()), dtype=torch.long),
            visual_pos_masks=video[:, k],
            deepstack_visual_embeds=[d[k][video[0, k]] for d in dense],
            use_cache=False,
        )
        expected = thinker.lm_head(out.last_hidden_state)
    assert logits.shape == expected.shape == (1, int(k.sum()), thinker.config.text_config.vocab_size)
    assert torch.equal(logits, expected)

    # and the rows matter: without them the decoder computes something else
    with torch.no_grad():
        plain = thinker.model.language_model(
            inputs_embeds=full["inputs_embeds"][:, k], position_ids=full["position_ids"][:, :, k],
            attention_mask=torch.ones(1, int(k.sum()), dtype=torch.long), use_cache=False,
        )
    assert not torch.allclose(thinker.lm_head(plain.last_hidden_state), expected)
