"""`random`: keeps a uniformly random subset of each row's audio+video tokens (seeded).

The floor every method must beat. Each row draws from its own generator seeded with `seed`, so a row
selects the same tokens alone or in a batch, on CPU or GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from sift.compressors.base import CompressionBatch, Compressor, Selection, keep_count
from sift.compressors.registry import register

__all__ = ["RandomCompressor"]


@register("random")
@dataclass
class RandomCompressor(Compressor):
    name: ClassVar[str] = "random"
    seed: int = 0

    def select(self, batch: CompressionBatch) -> Selection:
        keep = self.keep_all(batch)
        for b, row in enumerate(batch.layout.rows):
            media = torch.cat([row.audio_positions(), row.video_positions()]).sort().values
            if media.numel() == 0:
                continue
            g = torch.Generator().manual_seed(self.seed)
            order = torch.randperm(media.numel(), generator=g)
            dropped = media[order[keep_count(media.numel(), self.retention) :]]
            keep[b, dropped.to(keep.device)] = False
        return Selection(keep=keep)
