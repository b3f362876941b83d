"""`none`: keeps every token. The control that must be bit-identical to the stock model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from sift.compressors.base import CompressionBatch, Compressor, Selection
from sift.compressors.registry import register

__all__ = ["NoCompression"]


@register("none")
@dataclass
class NoCompression(Compressor):
    name: ClassVar[str] = "none"
    default_retention: ClassVar[float | None] = 1.0  # the control keeps everything, so no retention is needed

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.retention != 1.0:
            raise ValueError(f"'none' keeps every token, so retention must be 1.0 (got {self.retention})")

    def select(self, batch: CompressionBatch) -> Selection:
        return Selection(keep=self.keep_all(batch))
