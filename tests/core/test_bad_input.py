"""Bad input gets a clear error or a warning, never a silent surprise.

- a selector path that does not exist names the path (no Hub errors, no Hub round trip);
- a folder that is not a selector (a model folder, a selector config beside other weights) is refused
  instead of loading with random weights;
- a retention is required (except for `none`, and OmniZip given rho_audio/rho_video) instead of a silent
  1.0 that keeps everything; numpy scalars are accepted; error messages name the method once;
- audio longer than the feature extractor's 300 s cap warns and is recorded (the video goes on).
"""

from __future__ import annotations

import warnings

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import sift
from sift.compressors.omnizip import OmniZip
from sift.testbed.media import Clip
from sift.testbed import processing
from sift.selector import OmniSIFTConfig, OmniSIFTSelector
from sift.testbed.tiny import omni_inputs, tiny_thinker

SR = 16000


@pytest.fixture()
def offline(monkeypatch):
    """Hub offline, as on CI: a Hub lookup fails at once instead of after minutes of retries."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def _selector_folder(path) -> OmniSIFTSelector:
    selector = OmniSIFTSelector(OmniSIFTConfig(hidden_size=16))
    selector.save_pretrained(path)
    return selector


# ---------------------------------------------------------------- 1. missing selector paths
@pytest.mark.parametrize("kind", ["absolute", "dot-relative", "under-existing-folder", "bare-name"])
def test_missing_selector_path_is_named(tmp_path, monkeypatch, offline, kind):
    """Local-looking paths that do not exist raise FileNotFoundError naming the path, not a Hub error."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    path = {
        "absolute": str(tmp_path / "runs" / "my-selector"),
        "dot-relative": "./my-selector",
        "under-existing-folder": "checkpoints/my-selector",
        "bare-name": "my-selector",
    }[kind]
    with pytest.raises(FileNotFoundError, match="no OmniSIFT selector folder at .*my-selector") as info:
        sift.get_compressor("omnisift", retention=0.3, selector=path)
    assert "huggingface" not in str(info.value).lower() and "repo id" not in str(info.value).lower()
    with pytest.raises(FileNotFoundError, match="my-selector"):
        OmniSIFTSelector.from_pretrained(path)


def test_missing_hub_style_selector_names_the_path_when_the_hub_cannot_help(tmp_path, monkeypatch, offline):
    """"org/name" that is not a local folder is tried on the Hub; when that fails the error still names
    the path and says it is not a local folder."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="'no-such-org/no-such-selector': not a local folder"):
        sift.get_compressor("omnisift", retention=0.3, selector="no-such-org/no-such-selector")


# ---------------------------------------------------------------- 2. folders that are not selectors
def test_model_folder_is_refused_as_a_selector(tmp_path, thinker_config):
    """A model folder (tiny thinker's save_pretrained) has another model_type: refused, not random weights."""
    tiny_thinker(thinker_config).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="model_type 'qwen2_5_omni_thinker', not 'omnisift_selector'"):
        sift.get_compressor("omnisift", retention=0.3, selector=str(tmp_path))


def test_selector_config_beside_unrelated_weights_is_refused(tmp_path):
    """A selector config.json with weights that are not the selector's: missing and unexpected keys named."""
    OmniSIFTConfig(hidden_size=16).save_pretrained(tmp_path)
    save_file({"foo.weight": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    match = r"does not hold OmniSIFT selector weights: missing .*unexpected foo\.weight"
    with pytest.raises(ValueError, match=match) as e:
        OmniSIFTSelector.from_pretrained(tmp_path)
    assert "(24 in all)" in str(e.value) and str(tmp_path) in str(e.value)


def test_selector_with_some_weights_missing_is_refused(tmp_path):
    """Partly matching weights (the STVP residual dropped) are refused too, naming the missing keys."""
    selector = _selector_folder(tmp_path)
    state = {k: v for k, v in selector.state_dict().items() if not k.startswith("stvp.")}
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing stvp\.mlp\.0\.bias"):
        OmniSIFTSelector.from_pretrained(tmp_path)


def test_folder_without_config_and_a_file_are_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no config.json"):
        OmniSIFTSelector.from_pretrained(tmp_path / "empty")
    _selector_folder(tmp_path / "sel")
    with pytest.raises(ValueError, match="is a file, not an OmniSIFT selector folder"):
        OmniSIFTSelector.from_pretrained(tmp_path / "sel" / "model.safetensors")


def test_a_real_selector_folder_still_loads(tmp_path):
    """The strict checks let a save_pretrained folder through, with its exact weights."""
    saved = _selector_folder(tmp_path)
    loaded, info = OmniSIFTSelector.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    for k, v in saved.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    comp = sift.get_compressor("omnisift", retention=0.3, selector=tmp_path)
    assert isinstance(comp.selector, OmniSIFTSelector)


# ---------------------------------------------------------------- 3. retention
@pytest.mark.parametrize("name", [m for m in sift.available_compressors() if m != "none"])
def test_every_method_but_none_needs_a_retention(name):
    """No silent 1.0: a one-line TypeError that names the method once."""
    with pytest.raises(TypeError, match=rf"^{name} needs retention=\.\.\.") as e:
        sift.get_compressor(name)
    assert "\n" not in str(e.value) and str(e.value).count(f"{name}:") == 0


def test_compress_by_name_needs_a_retention(thinker):
    """`sift.compress(model, "omnizip")` follows the same rule (it used to pass 1.0)."""
    with pytest.raises(TypeError, match="^omnizip needs retention="):
        sift.compress(thinker, "omnizip")
    with sift.compress(thinker, "none") as session:  # the control needs none
        assert session.compressor.retention == 1.0


def test_none_and_omnizip_ratios_need_no_retention():
    assert sift.get_compressor("none").retention == 1.0
    zip_rho = sift.get_compressor("omnizip", rho_audio=0.3, rho_video=0.6)
    assert zip_rho.retention is None and zip_rho.rho_audio == 0.3
    assert OmniZip.preset("45%").retention is None
    with pytest.raises(ValueError, match="either retention or rho"):
        sift.get_compressor("omnizip", retention=1.0, rho_audio=0.3, rho_video=0.6)


@pytest.mark.parametrize(
    "value", [np.float32(0.25), np.float64(0.25), np.array(0.25), np.array(0.25, dtype=np.float32), torch.tensor(0.25)]
)
def test_numpy_and_tensor_retentions_are_accepted(value):
    comp = sift.get_compressor("random", retention=value)
    assert type(comp.retention) is float and comp.retention == 0.25


@pytest.mark.parametrize("value", [1, np.int64(1), np.array(1)])
def test_integer_one_is_a_retention(value):
    comp = sift.get_compressor("stvp", retention=value)
    assert type(comp.retention) is float and comp.retention == 1.0


@pytest.mark.parametrize("value", [True, np.bool_(True), "0.3", np.array([0.3])])
def test_non_numbers_are_refused_naming_the_method_once(value):
    with pytest.raises(TypeError, match="^random: retention must be a number") as e:
        sift.get_compressor("random", retention=value)
    assert str(e.value).count("random:") == 1


def test_option_errors_name_the_method_once():
    with pytest.raises(TypeError) as e:
        sift.get_compressor("random", retention=0.5, colour="red")
    assert str(e.value).startswith("random: ") and str(e.value).count("random:") == 1
    with pytest.raises(ValueError, match="must be in") as e:
        sift.get_compressor("random", retention=np.float32(1.5))
    assert str(e.value).count("random:") == 1


# ---------------------------------------------------------------- 4. audio over the 300 s cap
def _long_clip(seconds: float, frames: int) -> Clip:
    t = np.arange(int(seconds * SR), dtype=np.float64) / SR
    audio = (0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
    return Clip(frames=np.zeros((frames, 112, 112, 3), dtype=np.uint8), audio=audio, fps=2.0)


def _cap_warnings(record) -> list[str]:
    return [str(w.message) for w in record if "cap of 300 s" in str(w.message)]


def test_audio_over_the_cap_warns_once_and_is_recorded(processor):
    """302 s of audio with 302 s of video: the processor keeps 300 s of audio and all the video; one
    warning names the clip length and the cap, and `truncated_audio_s` records the 2 s cut."""
    long, short = _long_clip(302.0, 604), _long_clip(4.0, 8)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        inputs = omni_inputs(processor, [long, short], ["What is heard?", "And here?"])
    messages = _cap_warnings(record)
    assert len(messages) == 1, messages
    assert "clip 0: 302.0 s" in messages[0] and "clip 1" not in messages[0]
    assert inputs.truncated_audio_s == [pytest.approx(2.0), 0.0]
    assert int(inputs["feature_attention_mask"][0].sum()) == 30000  # the audio stops at 300 s...
    assert int(inputs["video_grid_thw"][0, 0]) == 302  # ...the video goes on
    assert inputs.to("cpu").truncated_audio_s == [pytest.approx(2.0), 0.0]


def test_audio_within_the_cap_is_silent(processor):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        inputs = omni_inputs(processor, [_long_clip(4.0, 8)], ["What is heard?"])
    assert not _cap_warnings(record)
    assert inputs.truncated_audio_s == [0.0]


def test_processing_helpers_report_the_cut(processor):
    """The helpers the evaluation and training data use: `truncated_audio` says how much is cut,
    `audio_kwargs` warns about it."""
    z = lambda n: np.zeros(n, dtype=np.float32)  # noqa: E731
    assert processing.truncated_audio(processor, [z(300 * SR), z(301 * SR), z(SR)]) == [0.0, 1.0, 0.0]
    with pytest.warns(UserWarning, match=r"cap of 300 s is cut to 300 s \(clip 1: 301\.0 s\)"):
        assert processing.audio_kwargs(processor, [z(SR), z(301 * SR)]) == {"max_length": 300 * SR}
