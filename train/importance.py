"""Importance distillation: a dense ranking target for the selector, from the full-token frozen model.

Why: the LM loss on a compressed run says how good *this* selection was; it says little about the tokens
that were never kept (shrink mode: nothing at all). The frozen model run on every token can say how much
each media token matters for the answer, for all of them at once, and the selector's scores can be
trained to rank tokens the same way.

The target is each token's first-order effect on the answer: the gradient of the answer's log-likelihood
with respect to the token's attention-key gate (`sift.masked_attention`), taken at gate = 1 (every token
kept, so the forward is exactly the full-token model). Dropping token j sets g_j = 0 in every layer, so

    log p(answer | without j) - log p(answer) ~= -d log p(answer) / d g_j.

Unlike gradient x input on the embeddings, this is the derivative of the very operation the selector
performs. It costs one forward and backward of the frozen model through masked attention per step.

The loss is listwise (ListNet): within each unit the selector ranks in (a video frame; an audio clip, or
a 2 s window under the per-chunk rule), the teacher's importances, standardised, become a softmax target
for the selector's scores. Only the order matters to a top-k, so the standardisation removes the
teacher's scale, and the selector's own scale is free.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from sift.layout import TokenLayout
from sift.masked_attention import key_gates
from sift.models import adapter_for

__all__ = ["gate_importance", "selection_groups", "has_order", "ranking_loss"]


def gate_importance(
    model: torch.nn.Module, inputs: dict, labels: torch.Tensor, at: torch.Tensor | None = None
) -> torch.Tensor:
    """(B, L) d log p(labels) / d g_j for every position, at g = 1 (a full-token forward of `model`) or at `at`.

    `at` (B, L) in [0, 1] is the operating point, e.g. a selection's keep mask: then the importance of a
    dropped token is the first-order gain of adding it back, that of a kept one the loss of dropping it.
    `model` is a thinker whose parameters need no gradient (only the gates are differentiated); its
    answer log-likelihood is summed over the supervised tokens of the batch.
    """
    mask = inputs["attention_mask"]
    start = torch.ones(mask.shape, device=mask.device) if at is None else at.detach()
    gate = start.to(device=mask.device, dtype=torch.float32, copy=True).requires_grad_(True)
    with torch.enable_grad(), key_gates(adapter_for(model).language_model(model).config, gate):
        out = model(**inputs, labels=labels)
        n = (labels[:, 1:] != -100).sum().clamp_min(1)
        (grad,) = torch.autograd.grad(-out.loss * n, gate)
    return grad.detach() * mask


def selection_groups(layout: TokenLayout, audio_rule: str = "clip") -> Iterator[tuple[int, torch.Tensor]]:
    """(row, positions) of each unit the OmniSIFT selector takes a top-k over.

    Video: each frame. Audio: each audio clip (`"clip"`), or each 2 s window (`"chunk"`).
    """
    if audio_rule not in ("clip", "chunk"):
        raise ValueError(f"audio_rule must be 'clip' or 'chunk', got {audio_rule!r}")
    for b, row in enumerate(layout.rows):
        for segment in row.segments:
            for window in segment.windows:
                for frame in window.frames:
                    yield b, frame.positions
                if audio_rule == "chunk" and window.num_audio:
                    yield b, window.audio
            if audio_rule == "clip" and segment.audio_item >= 0:
                audio = [w.audio for w in segment.windows if w.num_audio]
                if audio:
                    yield b, torch.cat(audio)


def has_order(importance: torch.Tensor) -> bool:
    """Whether a unit's importances rank its tokens at all: two or more tokens, not all equal."""
    return importance.numel() >= 2 and bool(importance.float().std() > 0)


def ranking_loss(
    scores: torch.Tensor,
    importance: torch.Tensor,
    groups: Iterator[tuple[int, torch.Tensor]],
    temperature: float = 1.0,
) -> torch.Tensor:
    """Mean over groups of the cross-entropy between softmax(standardised importance / T) and softmax(scores).

    scores: (B, L) the selector's differentiable scores; importance: (B, L) the teacher's target.
    Groups of fewer than two tokens, or whose importances are all equal, carry no order and are skipped.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    losses = []
    for b, positions in groups:
        pos = positions.to(scores.device)
        target = importance[b, pos.to(importance.device)].float().to(scores.device)
        if not has_order(target):
            continue
        target = F.softmax((target - target.mean()) / target.std() / temperature, dim=0)
        losses.append(-(target * F.log_softmax(scores[b, pos].float(), dim=0)).sum())
    if not losses:
        return scores.sum() * 0.0
    return torch.stack(losses).mean()
