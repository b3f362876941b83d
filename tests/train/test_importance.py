"""Importance distillation (`train.importance`): the teacher's target is the derivative it claims to be, its
groups are the selector's top-k units, and the ranking loss trains the selector towards the teacher's order."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch

import sift
from sift import hf_internals as hf
from sift.compressors.omnisift import OmniSIFT
from sift.masked_attention import key_gates
from sift.selector import OmniSIFTSelector
from sift.testbed.tiny import tiny_thinker
from train.importance import gate_importance, ranking_loss, selection_groups


@pytest.fixture(scope="module")
def frozen(thinker_config):
    model = tiny_thinker(thinker_config, seed=0, attn_implementation="sdpa").double()
    model.requires_grad_(False)
    return model


def _log_likelihood(model, inputs, labels, gate=None):
    """Summed log-likelihood of the labels, in the model's dtype (transformers' loss is float32)."""
    with torch.no_grad(), key_gates(hf.language_model(model).config, gate) if gate is not None else nullcontext():
        logits = model(**inputs).logits
    rows, cols = torch.nonzero(labels[:, 1:] != -100, as_tuple=True)
    return torch.log_softmax(logits[rows, cols], dim=-1).gather(-1, labels[rows, cols + 1][:, None]).sum()


@pytest.mark.slow
def test_importance_is_the_first_order_effect_of_dropping_a_token(frozen, synth_inputs, answer_labels):
    inputs = {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in synth_inputs.items()}
    labels = answer_labels
    importance = gate_importance(frozen, inputs, labels)
    layout = sift.layout_of(inputs, frozen.config)
    media = torch.nonzero(layout.media_mask(torch.device("cpu"))[0]).flatten()
    assert importance.shape == inputs["input_ids"].shape
    assert (importance[0, media] != 0).float().mean() > 0.95

    ones = torch.ones(inputs["input_ids"].shape, dtype=torch.float64)
    full = _log_likelihood(frozen, inputs, labels, ones)
    stock = _log_likelihood(frozen, inputs, labels)
    torch.testing.assert_close(full, stock)  # at gate = 1 the teacher is the full-token model
    eps = 1e-3  # central differences; the model's rotary tables are float32, so smaller steps are noise
    for j in media[torch.argsort(importance[0, media].abs(), descending=True)[:3]].tolist():
        up, down = ones.clone(), ones.clone()
        up[0, j], down[0, j] = 1.0 + eps, 1.0 - eps
        numeric = (_log_likelihood(frozen, inputs, labels, up) - _log_likelihood(frozen, inputs, labels, down)) / (2 * eps)
        assert numeric.item() == pytest.approx(importance[0, j].item(), rel=1e-2)
    assert all(p.grad is None for p in frozen.parameters())


@pytest.mark.slow
def test_importance_at_a_keep_mask_is_the_first_order_effect_of_adding_a_dropped_token(frozen, synth_inputs, answer_labels):
    inputs = {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in synth_inputs.items()}
    labels = answer_labels
    media = torch.nonzero(sift.layout_of(inputs, frozen.config).media_mask(torch.device("cpu"))[0]).flatten()
    keep = torch.ones(inputs["input_ids"].shape, dtype=torch.float64)
    dropped = media[::2]
    keep[0, dropped] = 0.0
    importance = gate_importance(frozen, inputs, labels, at=keep)
    assert not torch.equal(importance, gate_importance(frozen, inputs, labels))  # another operating point
    eps = 1e-3
    for j in dropped[torch.argsort(importance[0, dropped].abs(), descending=True)[:3]].tolist():
        up, down = keep.clone(), keep.clone()
        up[0, j], down[0, j] = eps, -eps
        numeric = (_log_likelihood(frozen, inputs, labels, up) - _log_likelihood(frozen, inputs, labels, down)) / (2 * eps)
        assert numeric.item() == pytest.approx(importance[0, j].item(), rel=1e-2)


@pytest.mark.parametrize("rule", ["clip", "chunk"])
def test_groups_are_the_selectors_topk_units_and_cover_every_media_token_once(frozen, synth_inputs, rule):
    layout = sift.layout_of(synth_inputs, frozen.config)
    groups = list(selection_groups(layout, rule))
    covered = torch.cat([pos for _, pos in groups])
    media = torch.nonzero(layout.media_mask(torch.device("cpu"))[0]).flatten()
    assert torch.equal(covered.sort().values, media)
    frames = [f for w in layout.rows[0].windows for f in w.frames]
    audio_windows = [w for w in layout.rows[0].windows if w.num_audio]
    clips = [s for s in layout.rows[0].segments if s.audio_item >= 0]
    assert len(groups) == len(frames) + (len(audio_windows) if rule == "chunk" else len(clips))
    with pytest.raises(ValueError, match="audio_rule"):
        list(selection_groups(layout, "window"))


def test_ranking_loss_prefers_the_teachers_order_and_skips_groups_without_one():
    importance = torch.tensor([[0.0, 3.0, 1.0, 2.0, 5.0, 5.0]])
    groups = [(0, torch.tensor([0, 1, 2, 3])), (0, torch.tensor([4, 5])), (0, torch.tensor([2]))]
    same = ranking_loss(importance * 4, importance, iter(groups))
    reversed_ = ranking_loss(-importance * 4, importance, iter(groups))
    assert same < reversed_
    flat = ranking_loss(torch.zeros(1, 6), importance, iter(groups))
    assert flat.item() == pytest.approx(torch.log(torch.tensor(4.0)).item())  # only the first group counts
    empty = ranking_loss(torch.zeros(1, 6, requires_grad=True), importance, iter(groups[1:]))
    assert empty.item() == 0.0 and empty.requires_grad
    with pytest.raises(ValueError, match="temperature"):
        ranking_loss(importance, importance, iter(groups), temperature=0.0)


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


@pytest.mark.slow
def test_ranking_loss_trains_the_selector_towards_the_teachers_order(thinker_config, synth_inputs, answer_labels):
    """Only the selector learns; after a few steps its video scores follow the teacher's order much better."""
    torch.manual_seed(0)
    model = tiny_thinker(thinker_config, seed=0, attn_implementation="sdpa")
    model.requires_grad_(False)
    labels = answer_labels
    importance = gate_importance(model, synth_inputs, labels)
    selector = OmniSIFTSelector.from_config(model.config).train()
    comp = OmniSIFT(retention=0.3, selector=selector)
    layout = sift.layout_of(synth_inputs, model.config)
    video = torch.cat([f.positions for w in layout.rows[0].windows for f in w.frames])
    opt = torch.optim.Adam(selector.parameters(), lr=3e-3)
    correlations = []
    for _ in range(30):
        with sift.compress(model, comp, mode="shrink") as session:
            model(**synth_inputs)
        scores = session.selection.scores
        correlations.append(_spearman(scores[0, video].detach(), importance[0, video]))
        loss = ranking_loss(scores, importance, selection_groups(session.layout, comp.audio_rule))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(p.grad is None for p in model.parameters())
    assert correlations[-1] > correlations[0] + 0.3, correlations


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")  # a step outside a Trainer
def test_selector_module_adds_the_ranking_term(thinker_config, synth_inputs, answer_labels):
    pytest.importorskip("lightning")
    from train.module import SelectorModule

    module = SelectorModule(model="tiny", importance_weight=1.0, train_mode="mask", retention_range=(0.3, 0.3))
    module.configure_model()
    module.train()
    batch = {**synth_inputs, "labels": answer_labels}
    loss = module.training_step(batch, 0)
    with sift.compress(module.model, module._compressor(0.3), mode="mask"):
        ce = module.model(**module._model_inputs(batch), labels=batch["labels"]).loss
    assert loss.item() > ce.item()  # CE plus a positive ranking term
    loss.backward()
    assert module.selector.stvp.mlp[2].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in module.model.parameters())
    with pytest.raises(ValueError, match="importance_weight"):
        SelectorModule(model="tiny", importance_weight=-1.0)


@pytest.mark.slow
def test_agreement_benchmark_reports_every_selector(tmp_path, benchmark_script):
    """benchmarks/importance_agreement.py runs on the shipped v2 model; an exact copy of the untrained
    selector agrees with it exactly, and agreement numbers are in range."""
    from pathlib import Path

    from transformers import AutoConfig

    from sift.testbed.synthav import generate

    repo = Path(__file__).resolve().parents[2]
    model = repo / "checkpoints" / "tiny-omni-v2"
    generate(tmp_path / "data", {"test": 1}, seed=5, workers=1, progress=False, version=2, min_seconds=6, max_seconds=6)
    OmniSIFTSelector.from_config(AutoConfig.from_pretrained(model)).save_pretrained(tmp_path / "copy")
    with benchmark_script("importance_agreement") as script:
        summary = script.main(["--model", str(model), "--manifest", str(tmp_path / "data" / "test.jsonl"), "--samples", "2",
                               "--selector", str(tmp_path / "copy"), "--out", str(tmp_path / "out")])
    assert summary["copy"] == summary["untrained"]
    for key in ("video", "audio", "video_recall", "audio_recall"):
        assert -1.0 <= summary["untrained"][key] <= 1.0
    assert "| untrained |" in (tmp_path / "out.md").read_text()
