"""Clip decoding / synthesis / writing with PyAV."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch

from sift.testbed.media import Clip, load_clip, sample_clip_path, synth_clip, write_clip
from sift.testbed.tiny import omni_inputs


def test_synth_clip_deterministic():
    a, b = synth_clip(4.0, seed=0), synth_clip(4.0, seed=0)
    assert a.frames.shape == (8, 112, 112, 3) and a.frames.dtype == np.uint8
    assert a.audio.dtype == np.float32 and a.audio.shape == (64000,)
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.audio, b.audio)
    assert not np.array_equal(a.frames[0], a.frames[-1])  # the square moves
    assert a.duration == pytest.approx(4.0)
    assert synth_clip(3.0, with_audio=False).audio is None
    assert synth_clip(1.5).frames.shape[0] % 2 == 0
    assert not np.array_equal(synth_clip(seed=1).frames, a.frames)


def test_bigbuckbunny_loads_and_processes(processor, tokenizer):
    path = sample_clip_path()
    clip = load_clip(path, size=(112, 112))
    assert clip.frames.shape[1:] == (112, 112, 3)
    assert clip.frames.shape[0] % 2 == 0 and clip.frames.shape[0] == 10  # 5.3 s at 2 fps -> 11 -> even 10
    assert clip.sample_rate == 16000
    assert len(clip.audio) / 16000 == pytest.approx(5.3, abs=0.1)
    assert clip.audio.dtype == np.float32 and np.abs(clip.audio).max() > 0.01

    small = load_clip(path, size=(112, 112), max_frames=4)
    assert small.frames.shape == (4, 112, 112, 3)
    assert np.array_equal(small.frames, clip.frames[:4])
    assert len(small.audio) == 2 * 16000
    inp = omni_inputs(processor, [small], ["What is shown?"])
    assert inp["video_grid_thw"].tolist() == [[2, 8, 8]]
    assert (inp["input_ids"] == tokenizer.audio_token_id).sum() == 50


def test_write_load_round_trip(tmp_path):
    clip = synth_clip(4.0, seed=2)
    path = write_clip(clip, tmp_path / "clip.mp4")
    back = load_clip(path)
    assert back.frames.shape == clip.frames.shape
    assert np.abs(back.frames.astype(int) - clip.frames).mean() < 20
    assert back.duration == pytest.approx(clip.duration, abs=0.2)
    assert len(back.audio) / 16000 == pytest.approx(4.0, abs=0.2)

    # container at a higher frame rate: loading at the clip's fps gives the same frames back
    back10 = load_clip(write_clip(clip, tmp_path / "clip10.mp4", video_fps=10))
    assert back10.frames.shape == clip.frames.shape
    assert np.abs(back10.frames.astype(int) - clip.frames).mean() < 20

    silent = load_clip(write_clip(synth_clip(2.0, with_audio=False), tmp_path / "silent.mp4"))
    assert silent.audio is None and silent.frames.shape[0] == 4


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        load_clip("/definitely/not/here/nope.mp4")


def test_corrupt_file(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match="bad.mp4"):
        load_clip(bad)


def test_audio_only_file_rejected(tmp_path):
    path = tmp_path / "tone.m4a"
    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=16000)
        s.layout = "mono"
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for p in s.encode(frame):
            c.mux(p)
        for p in s.encode():
            c.mux(p)
    with pytest.raises(ValueError, match="no video stream"):
        load_clip(path)


def test_clip_dataclass():
    c = Clip(frames=np.zeros((4, 8, 8, 3), np.uint8), audio=None, fps=2.0)
    assert c.duration == 2.0 and c.sample_rate == 16000
    assert torch.is_tensor(torch.from_numpy(c.frames))
