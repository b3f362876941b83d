"""What a thinker hands its decoder, recorded at the one seam sift hooks (the language model's inputs).

Why in the testbed: the plug-in and layout tests of both model families compare sift's view of a call with the
stock model's own; one recorder serves them all, and the one-call form (:func:`decoder_inputs`) gives the stock
reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from sift.models import adapter_for

__all__ = ["DecoderCalls", "decoder_inputs"]


class DecoderCalls:
    """``with DecoderCalls(thinker) as calls:``: ``calls.calls`` holds the keyword inputs of every decoder call.

    Entered inside ``sift.compress``, its hook runs after sift's, so it sees the compressed inputs. ``keys``
    limits what is kept (default: everything).
    """

    def __init__(self, thinker: torch.nn.Module, keys: Sequence[str] | None = None):
        self.thinker, self.keys = thinker, keys
        self.calls: list[dict[str, Any]] = []
        self._handle: Any = None

    def _record(self, module: Any, args: tuple, kwargs: dict) -> None:
        self.calls.append(dict(kwargs) if self.keys is None else {k: kwargs.get(k) for k in self.keys})

    def __enter__(self) -> "DecoderCalls":
        language_model = adapter_for(self.thinker).language_model(self.thinker)
        self._handle = language_model.register_forward_pre_hook(self._record, with_kwargs=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._handle.remove()


def decoder_inputs(thinker: torch.nn.Module, inputs: dict[str, Any]) -> dict[str, Any]:
    """What the thinker hands its decoder for one no-grad forward on ``inputs`` (embeddings, positions, ...)."""
    with DecoderCalls(thinker) as recorder, torch.no_grad():
        thinker(**inputs)
    return recorder.calls[0]
