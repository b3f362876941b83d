"""Policy-gradient training of the selector on whole selections: a set-level signal.

Why: the two other signals judge tokens one at a time. The LM loss of a shrink-mode run reaches only the
kept tokens, and importance distillation (`train.importance`) ranks each token by its first-order effect
on the answer, which ranks sets poorly at low retention (benchmarks/results/oracle_selection_synthav_v2.md:
that oracle loses to parameter-free rules at r >= 0.15). What a top-k needs to know is how good a whole
keep set is, and the frozen model can say so directly: draw a few selections, run the compressed model on
each, and use the answer's log-likelihood as the reward (REINFORCE).

- Sampling: each top-k unit (a frame; an audio clip or 2 s window) draws its keep set from the
  Plackett-Luce distribution of its scores / T, by Gumbel-top-k (`OmniSIFT(sample_temperature=T)`), with
  the budgets of the greedy selection. The rollouts need no gradient of the model: a sampled selection
  carries no gates, so the frozen model's forward builds no graph, while the selector's scores of that
  rollout stay differentiable.
- Baseline: self-critical. The advantage of a sample is its reward minus the greedy selection's reward
  (the training step's own compressed run), so the selector moves towards draws that beat what it would
  keep at inference, and away from draws that lose to it.
- The budget split: a selector with a learned split (`budget_split="learned"`) can also draw each
  window's audio-share offset around its own (`split_noise`, a normal draw). The draw's log-probability
  (`Selection.log_prob`) joins the keep sets'; the greedy baseline uses the learned offsets. It is the only
  signal that reaches the split: a budget is an integer count, so no loss gradient flows into it. With the
  temperature None the keep sets are the greedy top-k and only the split is drawn (a far smaller space:
  a few windows per row instead of every token).
- Log-probability: of each sampled set under the Plackett-Luce distribution of the scores it was drawn
  from (that rollout's own: audio scores depend on the video the draw kept), its kept tokens taken in
  their score order. A first version scored every draw with the greedy run's scores instead; under those
  a draw's audio could be all but impossible, the loss spiked by orders of magnitude and one training seed
  in two lost its audio questions at r >= 0.25 (README).

Cost: `samples` compressed forwards of the frozen model per step, without a graph (cheap at low
retention), and their logits; no backward through the model.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F

import sift
from sift.compressors.omnisift import OmniSIFT
from train.importance import selection_groups

__all__ = ["POLICY_TEMPERATURE", "answer_log_likelihood", "sample_rollouts", "plackett_luce_log_prob", "policy_loss", "step_policy_loss"]


#: The default sampling temperature T of the draws (the training app's `policy_temperature`): with scores
#: spread about 0.5 within a frame or audio window, scores / T puts the top ranks well ahead while still
#: swapping tokens near each unit's budget.
POLICY_TEMPERATURE = 0.1


def answer_log_likelihood(
    logits: torch.Tensor, labels: torch.Tensor, stats: sift.CompressionStats | None, cap: float = 1.0
) -> torch.Tensor:
    """(B,) summed log-probability of each row's supervised labels, each label's probability capped at `cap`.

    `logits` come from a run inside `sift.compress` (shrink mode: at the kept positions, found through
    `stats.slots_of`) or, with `stats` None, cover the input positions. Why the cap: as a reward, the plain
    log-likelihood keeps paying for confidence in answers that are already right; capped, a label above
    `cap` earns nothing more, and the reward moves only with answers in doubt (what accuracy counts).
    """
    if not 0.0 < cap <= 1.0:
        raise ValueError(f"cap must be in (0, 1], got {cap}")
    rows, cols = torch.nonzero(labels[:, 1:] != -100, as_tuple=True)  # cols: the position predicting label cols+1
    slots = cols if stats is None else stats.slots_of(rows, cols)
    dev = logits.device
    logp = F.log_softmax(logits[rows.to(dev), slots.to(dev)].float(), dim=-1)
    target = labels[rows, cols + 1].to(dev)
    picked = logp.gather(1, target[:, None]).squeeze(1)
    if cap < 1.0:
        picked = picked.clamp(max=math.log(cap))
    return torch.zeros(labels.shape[0], device=dev).index_add_(0, rows.to(dev), picked)


def sample_rollouts(
    model: torch.nn.Module,
    compressor: OmniSIFT,
    inputs: dict,
    labels: torch.Tensor,
    samples: int,
    reward_cap: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """`samples` sampled selections: keeps (S, B, L) bool, rewards log p(answer) (S, B), the scores each
    was drawn from (S, B, L), differentiable when the selector is in training mode and grad is enabled, and
    the log-probabilities of their budget draws (S, B), or None when the compressor draws no budget.

    `compressor` is the step's (same selector, same retention) with its sampling on; `reward_cap` as in
    `answer_log_likelihood`.
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    keeps, rewards, scores, budget = [], [], [], []
    for _ in range(samples):
        with sift.compress(model, compressor) as session:
            out = model(**inputs)
        if session.selection is None:
            raise RuntimeError("policy rollout: the compressor made no selection (no media in the batch?)")
        keeps.append(session.selection.keep)
        scores.append(session.selection.scores)
        budget.append(session.selection.log_prob)
        rewards.append(answer_log_likelihood(out.logits.detach(), labels, session.stats, reward_cap))
    budget_log_probs = None if budget[0] is None else torch.stack(budget)
    return torch.stack(keeps), torch.stack(rewards), torch.stack(scores), budget_log_probs


def plackett_luce_log_prob(
    scores: torch.Tensor, keep: torch.Tensor, groups: Iterable[tuple[int, torch.Tensor]], temperature: float
) -> torch.Tensor:
    """(B,) log-probability of the keep set of every unit under Plackett-Luce(scores / T), summed per row.

    The kept tokens of a unit are taken in descending score order: log P = sum_i [x_i - logsumexp(x_i..)]
    over them, x the unit's scores / T with the kept first. Units that keep all or none of their tokens
    are deterministic and add nothing.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    per_row = [scores.new_zeros(())] * scores.shape[0]
    for b, positions in groups:
        pos = positions.to(scores.device)
        kept = keep[b, pos].to(scores.device)
        k = int(kept.sum())
        if k == 0 or k == pos.numel():
            continue
        x = scores[b, pos].float() / temperature
        kept_x = torch.sort(x[kept], descending=True).values
        ordered = torch.cat([kept_x, x[~kept]])
        suffix = torch.logcumsumexp(ordered.flip(0), dim=0).flip(0)
        per_row[b] = per_row[b] + (kept_x - suffix[:k]).sum()
    return torch.stack(per_row)


def policy_loss(
    scores: torch.Tensor,
    keeps: torch.Tensor,
    rewards: torch.Tensor,
    greedy_reward: torch.Tensor,
    groups: list[tuple[int, torch.Tensor]],
    temperature: float | None,
    budget_log_probs: torch.Tensor | None = None,
) -> torch.Tensor:
    """Self-critical REINFORCE: -mean over samples and rows of (reward - greedy reward) * log P(sample).

    scores (S, B, L) differentiable, the scores each sample was drawn from; keeps (S, B, L); rewards (S, B);
    greedy_reward (B,). log P(sample) is the keep sets' Plackett-Luce term at `temperature` (None: the keep
    sets were the greedy top-k, no term) plus `budget_log_probs` (S, B), the budget draws', when given.
    """
    if temperature is None and budget_log_probs is None:
        raise ValueError("policy_loss: nothing was sampled (no temperature and no budget draws)")
    advantage = (rewards - greedy_reward.detach()[None]).detach()
    log_probs = torch.zeros_like(advantage)
    if temperature is not None:
        log_probs = torch.stack([plackett_luce_log_prob(sc, keep, groups, temperature) for sc, keep in zip(scores, keeps)])
    if budget_log_probs is not None:
        log_probs = log_probs + budget_log_probs.to(log_probs.device)
    return -(advantage.to(log_probs.device) * log_probs).mean()


def step_policy_loss(
    model: torch.nn.Module,
    compressor: OmniSIFT,
    session: Any,
    logits: torch.Tensor,
    inputs: dict,
    labels: torch.Tensor,
    samples: int,
    temperature: float | None,
    shrink: bool = True,
    split_noise: float | None = None,
    reward_cap: float = 1.0,
) -> torch.Tensor:
    """The policy term of one training step: `session` and `logits` are the step's own compressed run, the
    greedy baseline; `shrink` False when that run was `mode="mask"` (logits at every input position). The
    selector must be in training mode (its rollout scores differentiable). `temperature` None draws no keep
    sets; `split_noise` draws the learned budget split (a selector with `budget_split="learned"`); rewards
    are answer log-likelihoods capped at `reward_cap` (`answer_log_likelihood`)."""
    if temperature is None and split_noise is None:
        raise ValueError("step_policy_loss: give a sampling temperature, a split_noise, or both")
    if split_noise is not None and compressor.selector.split is None:
        raise ValueError("split_noise needs a selector with a learned budget split (budget_split='learned')")
    greedy = answer_log_likelihood(logits.detach(), labels, session.stats if shrink else None, reward_cap)
    sampled = dataclasses.replace(compressor, sample_temperature=temperature, split_noise=split_noise)
    keeps, rewards, scores, budget = sample_rollouts(model, sampled, inputs, labels, samples, reward_cap)
    groups = list(selection_groups(session.layout, compressor.audio_rule))
    return policy_loss(scores, keeps, rewards, greedy, groups, temperature, budget)
