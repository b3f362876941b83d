"""sift.testbed.processing: the processor keyword arguments every part of sift uses (``audio_kwargs``, ``video_size``).

The claim pinned here: padding audio to the next 30 s multiple (``audio_kwargs``) instead of the Whisper
feature extractor's default 300 s gives bit-identical token ids, feature attention mask and log-mel
features on the audio's own frames, so the speed-up cannot change what the model sees.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import torch

from sift.testbed.media import Clip, synth_clip
from sift.testbed.processing import audio_kwargs, video_size
from sift.testbed.tiny import MAX_PIXELS, MIN_PIXELS, tiny_processor

SR = 16000


def _clip(samples: int, seed: int = 0, tone_hz: float = 440.0) -> Clip:
    """A synthetic 2 fps clip whose audio is exactly ``samples`` long (frames cover the audio's span)."""
    seconds = samples / SR
    clip = synth_clip(seconds, seed=seed, tone_hz=tone_hz)
    audio = clip.audio
    if len(audio) < samples:  # synth_clip rounds the length; extend the tone to the exact sample count
        t = np.arange(samples, dtype=np.float64) / SR
        audio = (0.5 * np.sin(2 * np.pi * tone_hz * t)).astype(np.float32)
    return Clip(frames=clip.frames, audio=audio[:samples], fps=clip.fps, sample_rate=SR)


def _call(processor: Any, clips: list[Clip], *, fast: bool):
    """The processor call of ``sift.testbed.tiny.omni_inputs`` (audio in video), with or without ``audio_kwargs``."""
    tok = processor.tokenizer
    texts = [
        tok.apply_chat_template(
            [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": f"What is shown {i}?"}]}],
            tokenize=False,
            add_generation_prompt=True,
        )
        for i in range(len(clips))
    ]
    audio = [np.asarray(c.audio, dtype=np.float32) for c in clips]
    kwargs: dict[str, Any] = dict(
        text=texts,
        videos=[np.ascontiguousarray(c.frames, dtype=np.uint8) for c in clips],
        return_tensors="pt",
        padding=True,
        padding_side="left",
        videos_kwargs=dict(fps=2.0, do_sample_frames=False, size=video_size(processor)),
        audio=audio,
        load_audio_from_video=True,
        audio_from_video_indices=list(range(len(clips))),
    )
    if fast:
        kwargs["audio_kwargs"] = audio_kwargs(processor, audio)
    return processor(**kwargs)


def _assert_same_on_valid_frames(ref, fast, lengths: list[int]) -> None:
    hop = 160
    assert torch.equal(ref["input_ids"], fast["input_ids"])
    assert torch.equal(ref["attention_mask"], fast["attention_mask"])
    m_ref, m_fast = ref["feature_attention_mask"], fast["feature_attention_mask"]
    f_ref, f_fast = ref["input_features"], fast["input_features"]
    assert m_ref.shape[-1] == 30000  # the default: 300 s of 10 ms frames
    width = m_fast.shape[-1]
    assert width % 3000 == 0 and width < 30000  # a multiple of 30 s, shorter than the default
    assert f_fast.shape == (len(lengths), 128, width)
    # the mask: same on the fast call's span, and nothing valid beyond it in the default call
    assert torch.equal(m_ref[:, :width], m_fast)
    assert int(m_ref[:, width:].sum()) == 0
    for i, n_samples in enumerate(lengths):
        n_valid = int(m_fast[i].sum())
        assert n_valid == -(-n_samples // hop)  # ceil(samples / hop): the frames the audio covers
        assert torch.equal(f_ref[i, :, :n_valid], f_fast[i, :, :n_valid]), f"clip {i}: features differ"
    # and the rest of the model inputs do not depend on the audio padding at all
    assert torch.equal(ref["pixel_values_videos"], fast["pixel_values_videos"])
    assert torch.equal(ref["video_grid_thw"], fast["video_grid_thw"])


@pytest.mark.parametrize(
    "n_samples",
    [int(3.3 * SR), 30 * SR, 30 * SR - 100],
    ids=["3.3s", "exactly-30s", "30s-minus-100-samples"],
)
def test_audio_kwargs_bit_identical_to_default_padding(processor, n_samples):
    """With ``audio_kwargs`` the processor's input ids, feature mask and the features on the audio's own
    frames are bit-identical to the default 300 s padding, including at the 30 s boundary (where the
    padding must still leave one STFT window of zeros after the audio)."""
    clip = _clip(n_samples)
    ak = audio_kwargs(processor, [clip.audio])
    expected = 30 * SR if n_samples + 400 <= 30 * SR else 60 * SR
    assert ak == {"max_length": expected}
    _assert_same_on_valid_frames(_call(processor, [clip], fast=False), _call(processor, [clip], fast=True), [n_samples])


def test_audio_kwargs_bit_identical_for_a_batch_of_different_lengths(processor):
    """A batch of two clips of different lengths (padded to the longer one's 30 s multiple) gives the same
    ids, masks and per-clip valid features as the default padding."""
    lengths = [int(2.5 * SR), int(31.2 * SR)]
    clips = [_clip(lengths[0], seed=1, tone_hz=330.0), _clip(lengths[1], seed=2, tone_hz=880.0)]
    ak = audio_kwargs(processor, [c.audio for c in clips])
    assert ak == {"max_length": 60 * SR}  # one length for the batch: the longest clip's
    ref, fast = _call(processor, clips, fast=False), _call(processor, clips, fast=True)
    assert fast["input_features"].shape[-1] == 6000
    _assert_same_on_valid_frames(ref, fast, lengths)


@pytest.mark.parametrize("n_samples", [30 * SR, 30 * SR - 10], ids=["exactly-30s", "30s-minus-10-samples"])
def test_padding_without_margin_would_change_the_last_frames(processor, n_samples):
    """Why ``audio_kwargs`` adds n_fft samples before rounding up: padding audio that ends within half an
    STFT window (200 samples) of 30 s to exactly 30 s leaves too few zeros after it, the STFT's reflect
    padding mirrors audio into the last valid frame, and the features differ from the default's. (With
    the margin, the same audio pads to 60 s and is bit-identical; see the test above.)"""
    clip = _clip(n_samples)
    ref = _call(processor, [clip], fast=False)
    tok = processor.tokenizer
    text = tok.apply_chat_template(
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What is shown 0?"}]}],
        tokenize=False,
        add_generation_prompt=True,
    )
    tight = processor(
        text=[text],
        videos=[clip.frames],
        return_tensors="pt",
        padding=True,
        padding_side="left",
        videos_kwargs=dict(fps=2.0, do_sample_frames=False, size=video_size(processor)),
        audio=[clip.audio],
        load_audio_from_video=True,
        audio_from_video_indices=[0],
        audio_kwargs={"max_length": 30 * SR},
    )
    n_valid = int(tight["feature_attention_mask"][0].sum())
    assert n_valid == int(ref["feature_attention_mask"][0].sum()) == 3000
    a, b = ref["input_features"][0, :, :n_valid], tight["input_features"][0, :, :n_valid]
    assert torch.equal(a[:, :-1], b[:, :-1])  # only the last frame sees past the audio's end
    assert not torch.equal(a[:, -1], b[:, -1])


def test_audio_kwargs_lengths_and_cap(processor):
    """``max_length`` is the next 30 s multiple of (longest audio + n_fft), at least 30 s, for any batch
    (including an empty one), and never above the feature extractor's own cap ``n_samples`` (300 s):
    longer audio is cut exactly as with the default."""
    fe = processor.feature_extractor
    cap = fe.n_samples
    assert cap == 300 * SR
    z = lambda n: np.zeros(n, dtype=np.float32)  # noqa: E731
    assert audio_kwargs(processor, []) == {"max_length": 30 * SR}
    assert audio_kwargs(processor, [z(1)]) == {"max_length": 30 * SR}
    assert audio_kwargs(processor, [z(30 * SR - 400)]) == {"max_length": 30 * SR}
    assert audio_kwargs(processor, [z(30 * SR - 399)]) == {"max_length": 60 * SR}
    assert audio_kwargs(processor, [z(5 * SR), z(95 * SR), z(SR)]) == {"max_length": 120 * SR}
    assert audio_kwargs(processor, [z(10 * SR)], step_seconds=10) == {"max_length": 20 * SR}
    for seconds in (299, 300, 400):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ak = audio_kwargs(processor, [z(seconds * SR)])
        assert any("300" in str(w.message) for w in caught) == (seconds > 300)  # only a cut warns
        assert ak["max_length"] <= cap
        assert ak == {"max_length": cap}


def test_video_size_of_tiny_processor():
    """``video_size`` reads the video processor's own pixel budget (the tiny one: 56x56 .. 112x112 pixels);
    ``max_pixels`` replaces the longest edge and lowers the shortest edge when it would exceed it."""
    processor = tiny_processor()
    assert video_size(processor) == {"shortest_edge": 3136, "longest_edge": 12544}
    assert (MIN_PIXELS, MAX_PIXELS) == (3136, 12544)
    assert video_size(processor, max_pixels=5000) == {"shortest_edge": 3136, "longest_edge": 5000}
    assert video_size(processor, max_pixels=2000) == {"shortest_edge": 2000, "longest_edge": 2000}
    assert video_size(processor, max_pixels=100000) == {"shortest_edge": 3136, "longest_edge": 100000}
    # the processor itself is not modified
    assert video_size(processor) == {"shortest_edge": 3136, "longest_edge": 12544}


def test_video_size_min_max_pixels_and_missing():
    """Processors configured with ``min_pixels`` / ``max_pixels`` (instead of shortest/longest edge) are
    read too; a budget that cannot be determined gives ``None``."""

    class VP:
        def __init__(self, size):
            self.size = size

    class P:
        def __init__(self, size):
            self.video_processor = VP(size)

    assert video_size(P({"min_pixels": 100, "max_pixels": 400})) == {"shortest_edge": 100, "longest_edge": 400}
    assert video_size(P({"height": 224, "width": 224})) is None
    assert video_size(P({"height": 224}), max_pixels=300) == {"shortest_edge": 300, "longest_edge": 300}
