"""Which positions a keep-count keeps: the best-scored ones, or ones evenly spread in time.

`sift.budget` decides how many tokens each frame, window or clip keeps; every method then turns a count
into positions with one of these two rules, so ties and spacing are the same whichever method asks.
"""

from __future__ import annotations

import torch

__all__ = ["top_positions", "uniform_pick"]


def top_positions(positions: torch.Tensor, scores: torch.Tensor, k: int) -> torch.Tensor:
    """The `k` positions with the highest scores (ties: earlier position first)."""
    if k >= positions.numel():
        return positions
    order = torch.sort(scores.detach().float().cpu(), descending=True, stable=True).indices[:k]
    return positions[order]


def uniform_pick(n: int, k: int) -> torch.Tensor:
    """k indices out of n, evenly spaced (centres of k equal slices)."""
    if k <= 0:
        return torch.empty(0, dtype=torch.long)
    return ((torch.arange(k, dtype=torch.float64) + 0.5) * n / k).floor().long().clamp_(max=n - 1)
