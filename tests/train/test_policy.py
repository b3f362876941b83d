"""Policy-gradient training (`train.policy`): the reward is the answer's log-likelihood under the compressed
run, sampled selections keep the exact budgets and are Plackett-Luce draws, the log-probability is the
Plackett-Luce formula, and the loss moves the selector towards the sample that beat the greedy one."""

from __future__ import annotations

import math

import pytest
import torch

import sift
from sift.compressors.omnisift import OmniSIFT
from sift.selector import OmniSIFTSelector, gumbel_noise
from sift.testbed.tiny import tiny_thinker
from train.importance import selection_groups
from train.policy import answer_log_likelihood, plackett_luce_log_prob, policy_loss, sample_rollouts


@pytest.fixture(scope="module")
def frozen(thinker_config):
    model = tiny_thinker(thinker_config, seed=0, attn_implementation="sdpa")
    model.requires_grad_(False)
    return model


def test_answer_log_likelihood_is_the_models_own_loss_times_the_label_count(frozen, synth_inputs, answer_labels):
    labels = answer_labels
    comp = OmniSIFT(retention=0.3, selector=OmniSIFTSelector.from_config(frozen.config))
    with torch.no_grad(), sift.compress(frozen, comp) as session:
        out = frozen(**synth_inputs, labels=labels)
    assert out.logits.shape[1] < labels.shape[1]  # compressed: the slots are needed
    total = answer_log_likelihood(out.logits, labels, session.stats)
    assert total.shape == (1,)
    assert total.item() == pytest.approx(-out.loss.item() * 6, rel=1e-5)
    with torch.no_grad():
        full = frozen(**synth_inputs, labels=labels)
    assert answer_log_likelihood(full.logits, labels, None).item() == pytest.approx(-full.loss.item() * 6, rel=1e-5)


def test_gumbel_top_1_is_a_softmax_draw():
    torch.manual_seed(0)
    scores = torch.tensor([0.3, 0.1, -0.2, 0.0])
    T = 0.25
    draws = (scores + T * gumbel_noise(scores.expand(40000, 4))).argmax(dim=1)
    freq = torch.bincount(draws, minlength=4).float() / draws.numel()
    assert torch.allclose(freq, torch.softmax(scores / T, dim=0), atol=0.01), freq


def test_sampled_selections_keep_the_budgets_and_differ_from_the_greedy_one(frozen, synth_inputs, answer_labels):
    torch.manual_seed(0)
    selector = OmniSIFTSelector.from_config(frozen.config)
    labels = answer_labels
    with torch.no_grad(), sift.compress(frozen, OmniSIFT(retention=0.3, selector=selector)) as session:
        frozen(**synth_inputs)
    greedy = session.selection.keep
    keeps, rewards, scores, budget = sample_rollouts(
        frozen, OmniSIFT(retention=0.3, selector=selector, sample_temperature=0.1), synth_inputs, labels, 3
    )
    assert budget is None  # a fixed budget split draws nothing
    assert keeps.shape == scores.shape == (3, *greedy.shape) and rewards.shape == (3, 1)
    assert scores.requires_grad  # the scores each draw came from, for its log-probability
    with sift.compress(frozen, OmniSIFT(retention=0.3, selector=selector, sample_temperature=0.1)) as rollout:
        out = frozen(**synth_inputs)
    assert rollout.selection.gate is None and not out.logits.requires_grad  # the frozen model built no graph
    groups = list(selection_groups(session.layout, "clip"))
    for keep in keeps:
        assert not torch.equal(keep, greedy)
        for b, pos in groups:  # every top-k unit keeps exactly the greedy selection's count
            assert int(keep[b, pos].sum()) == int(greedy[b, pos].sum())
        assert torch.equal(keep & ~session.layout.media_mask(), greedy & ~session.layout.media_mask())
    # a vanishing temperature draws the greedy selection
    tiny_t, *_ = sample_rollouts(
        frozen, OmniSIFT(retention=0.3, selector=selector, sample_temperature=1e-9), synth_inputs, labels, 1
    )
    assert torch.equal(tiny_t[0], greedy)
    with pytest.raises(ValueError, match="sample_temperature must be > 0"):
        OmniSIFT(retention=0.3, selector=selector, sample_temperature=0.0)


def test_plackett_luce_log_prob_is_the_sequential_softmax_formula():
    scores = torch.tensor([[2.0, 0.5, 1.0, -1.0, 0.0]])
    T = 0.5
    x = scores[0] / T
    groups = [(0, torch.tensor([0, 1, 2])), (0, torch.tensor([3, 4]))]
    keep = torch.tensor([[False, True, True, False, True]])  # unit 1 keeps {1, 2}; unit 2 keeps {4}
    # in descending score order: token 2 (score 1.0) first, then token 1 (0.5), whatever their positions
    first = x[2] - torch.logsumexp(x[[0, 1, 2]], 0) + x[1] - torch.logsumexp(x[[0, 1]], 0)
    second = x[4] - torch.logsumexp(x[[3, 4]], 0)
    got = plackett_luce_log_prob(scores, keep, groups, T)
    assert got.item() == pytest.approx((first + second).item(), rel=1e-6)
    everything = torch.tensor([[True, True, True, False, False]])  # unit 1 all kept, unit 2 none: deterministic
    assert plackett_luce_log_prob(scores, everything, groups, T).item() == 0.0
    # over one unit's k = 1 sets the probabilities sum to one
    total = sum(math.exp(plackett_luce_log_prob(scores, torch.eye(5, dtype=torch.bool)[i : i + 1], groups[:1], T).item())
                for i in range(3))
    assert total == pytest.approx(1.0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        plackett_luce_log_prob(scores, keep, groups, 0.0)


def test_policy_loss_moves_the_scores_towards_the_sample_that_beat_the_greedy_one():
    scores = torch.zeros(1, 4, requires_grad=True)
    groups = [(0, torch.arange(4))]
    better = torch.tensor([[False, False, True, True]])
    worse = torch.tensor([[True, True, False, False]])
    keeps = torch.stack([better, worse])
    drawn_from = scores.expand(2, 1, 4)  # both drawn from the same scores
    rewards = torch.tensor([[-0.5], [-3.0]])
    loss = policy_loss(drawn_from, keeps, rewards, torch.tensor([-1.0]), groups, 0.1)
    loss.backward()
    step = scores - 0.1 * scores.grad
    assert step[0, 2:].min() > step[0, :2].max()
    same = policy_loss(drawn_from, keeps, torch.tensor([[-1.0], [-1.0]]), torch.tensor([-1.0]), groups, 0.1)
    assert same.item() == 0.0  # no sample beat or lost to the greedy one: no signal


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")  # a step outside a Trainer
def test_selector_module_adds_the_policy_term_and_trains_only_the_selector(thinker_config, synth_inputs, answer_labels):
    pytest.importorskip("lightning")
    from train.module import SelectorModule

    torch.manual_seed(0)
    module = SelectorModule(model="tiny", policy_weight=1.0, policy_samples=2, retention_range=(0.3, 0.3))
    module.configure_model()
    module.train()
    batch = {**synth_inputs, "labels": answer_labels}
    loss = module.training_step(batch, 0)
    with torch.no_grad(), sift.compress(module.model, module._compressor(0.3)):
        ce = module.model(**module._model_inputs(batch), labels=batch["labels"]).loss
    assert loss.item() != pytest.approx(ce.item())  # CE plus a policy term
    loss.backward()
    assert module.selector.stvp.mlp[2].weight.grad.abs().sum() > 0
    assert module.selector.vgas.score_head[2].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in module.model.parameters())
    with pytest.raises(ValueError, match="policy_samples"):
        SelectorModule(model="tiny", policy_weight=1.0, policy_samples=0)


def test_policy_loss_with_budget_draws_only_moves_the_split_towards_the_draw_that_won():
    """Keep sets greedy (temperature None), offsets drawn: the loss is -mean(advantage * log N(draw; mu, sigma))."""
    mu = torch.zeros(1, requires_grad=True)
    draws = torch.tensor([0.8, -0.8])  # one window, two draws
    log_probs = (-((draws - mu) ** 2) / 2 - 0.5 * math.log(2 * math.pi))[:, None]  # (S, B) at sigma 1
    rewards = torch.tensor([[-0.5], [-3.0]])  # the draw with more audio beat greedy (-1), the other lost
    keeps = torch.zeros(2, 1, 4, dtype=torch.bool)
    loss = policy_loss(torch.zeros(2, 1, 4), keeps, rewards, torch.tensor([-1.0]), [], None, log_probs)
    advantage = rewards - (-1.0)
    assert loss.item() == pytest.approx(-(advantage * log_probs).mean().item())
    loss.backward()
    assert mu.grad.item() < 0  # gradient descent raises mu towards the winning draw
    with pytest.raises(ValueError, match="nothing was sampled"):
        policy_loss(torch.zeros(2, 1, 4), keeps, rewards, torch.tensor([-1.0]), [], None, None)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")  # a step outside a Trainer
def test_selector_module_trains_a_learned_split_by_its_draws_alone(synth_inputs, answer_labels):
    pytest.importorskip("lightning")
    from train.module import SelectorModule

    torch.manual_seed(0)
    module = SelectorModule(model="tiny", selector={"budget_split": "learned"}, policy_weight=1.0, policy_samples=2,
                            policy_temperature=0.0, policy_split_noise=1.0, retention_range=(0.3, 0.3))
    module.configure_model()
    module.train()
    loss = module.training_step({**synth_inputs, "labels": answer_labels}, 0)
    loss.backward()
    assert module.selector.split.mlp[2].bias.grad.abs().item() > 0
    assert all(p.grad is None for p in module.model.parameters())
    with pytest.raises(ValueError, match="needs a selector with a learned budget split"):
        SelectorModule(model="tiny", policy_weight=1.0, policy_split_noise=1.0)
    with pytest.raises(ValueError, match="trains only through its policy draws"):
        SelectorModule(model="tiny", selector={"budget_split": "learned"})
    with pytest.raises(ValueError, match="samples nothing"):
        SelectorModule(model="tiny", policy_weight=1.0, policy_temperature=0.0)


def test_a_capped_reward_stops_paying_for_confidence_above_the_cap():
    labels = torch.tensor([[-100, 1, 2]])  # positions 0 and 1 predict labels 1 and 2
    probs = torch.tensor([[[0.05, 0.95, 0.0], [0.3, 0.3, 0.4], [1.0, 0.0, 0.0]]]) + 1e-12
    logits = probs.log()
    plain = answer_log_likelihood(logits, labels, None)
    assert plain.item() == pytest.approx(math.log(0.95) + math.log(0.4), rel=1e-5)
    capped = answer_log_likelihood(logits, labels, None, cap=0.9)
    assert capped.item() == pytest.approx(math.log(0.9) + math.log(0.4), rel=1e-5)  # only the confident label is capped
    assert answer_log_likelihood(logits, labels, None, cap=1.0).item() == plain.item()
    with pytest.raises(ValueError, match="cap must be in"):
        answer_log_likelihood(logits, labels, None, cap=0.0)
