"""Fixtures shared by the training-signal tests (importance distillation, policy gradient)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def answer_labels(synth_inputs):
    """Labels on the last 6 positions of `synth_inputs` (the rest -100): an answer to train and score on."""
    labels = synth_inputs["input_ids"].clone()
    labels[:, :-6] = -100
    return labels
