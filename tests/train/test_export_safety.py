"""`python -m train export` treats a checkpoint as data: a pickle that would run code is refused, unrun.

Each hostile file carries a payload that, if unpickled by a plain `torch.load(weights_only=False)`, writes a
marker file; the tests check that export refuses it with one clear line and that the marker never appears
(and, once, that the payload is real: the unsafe load does write it). A genuine checkpoint from a short
real training run still exports.
"""

from __future__ import annotations

import builtins
import json
import os
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

pytest.importorskip("lightning")

from sift.selector import OmniSIFTSelector  # noqa: E402
from train.export import export  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny-cpu.yaml"


class Payload:
    """Unpickles to a call of `exec` that writes `marker` (what a hostile checkpoint would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def _plain_sift_info() -> dict:
    """The `sift` entry SelectorModule writes (plain JSON types)."""
    return {"selector_config": {"hidden_size": 64}, "model": "tiny", "finetune": "none"}


def _hostile_lightning_ckpt(path: Path, marker: Path) -> Path:
    """A Lightning-shaped checkpoint (state_dict, sift entry) with the payload among its hyper-parameters."""
    checkpoint = {
        "state_dict": {"selector.w": torch.zeros(2)},
        "sift": _plain_sift_info(),
        "hyper_parameters": {"lr": 1e-3, "hook": Payload(marker)},
        "global_step": 1,
    }
    torch.save(checkpoint, path)
    return path


def _refused(checkpoint: Path, out: Path, marker: Path) -> str:
    with pytest.raises(ValueError, match="refusing to load") as info:
        export(checkpoint, out)
    assert info.type.__name__ == "UnsafeCheckpointError"
    assert not marker.exists(), "the checkpoint's payload ran during export"
    assert not out.exists()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_hostile_lightning_checkpoint_is_refused_and_its_payload_never_runs(tmp_path):
    marker = tmp_path / "PWNED"
    ckpt = _hostile_lightning_ckpt(tmp_path / "last.ckpt", marker)
    message = _refused(ckpt, tmp_path / "out", marker)
    assert "exec" in message and str(ckpt) in message

    torch.load(ckpt, map_location="cpu", weights_only=False)  # the payload is real: an unsafe load runs it
    assert marker.read_text() == "pwned"


@pytest.mark.slow
def test_cli_export_of_a_hostile_checkpoint_fails_with_one_line(tmp_path):
    marker = tmp_path / "PWNED"
    ckpt = _hostile_lightning_ckpt(tmp_path / "last.ckpt", marker)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("SIFT_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, "-m", "train", "export", str(ckpt), str(tmp_path / "out")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if "refusing to load" in line]
    assert len(lines) == 1 and "exec" in lines[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert not marker.exists()


def _deepspeed_dir(root: Path, model_states: object, optim_states: object | None = None) -> Path:
    """A ZeRO checkpoint directory as Lightning's DeepSpeedStrategy lays it out (`latest` + tag folder)."""
    ckpt = root / "step=1.ckpt"
    (ckpt / "checkpoint").mkdir(parents=True)
    (ckpt / "latest").write_text("checkpoint")
    torch.save(model_states, ckpt / "checkpoint" / "mp_rank_00_model_states.pt")
    if optim_states is not None:
        torch.save(optim_states, ckpt / "checkpoint" / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    return ckpt


def test_hostile_deepspeed_model_states_are_refused(tmp_path):
    pytest.importorskip("deepspeed")
    marker = tmp_path / "PWNED"
    states = {"module": {}, "buffer_names": [], "sift": _plain_sift_info(), "hyper_parameters": Payload(marker)}
    ckpt = _deepspeed_dir(tmp_path, states)
    message = _refused(ckpt, tmp_path / "out", marker)
    assert "mp_rank_00_model_states.pt" in message


def test_hostile_deepspeed_optimizer_shard_is_refused_inside_deepspeeds_loader(tmp_path):
    """DeepSpeed's zero_to_fp32 reads the shards itself with weights_only=False; export must still refuse."""
    deepspeed = pytest.importorskip("deepspeed")
    marker = tmp_path / "PWNED"
    states = {  # plain model states, enough for zero_to_fp32 to go on to the optimizer shard
        "module": {},
        "buffer_names": [],
        "param_shapes": [OrderedDict()],
        "shared_params": {},
        "frozen_param_shapes": None,
        "frozen_param_fragments": None,
        "ds_version": deepspeed.__version__,
        "sift": _plain_sift_info(),
    }
    ckpt = _deepspeed_dir(tmp_path, states, {"optimizer_state_dict": {"zero_stage": 2, "hook": Payload(marker)}})
    message = _refused(ckpt, tmp_path / "out", marker)
    assert "exec" in message and "a shard of" in message  # refused by torch inside DeepSpeed's own load


# ----------------------------------------------------------------------------------------- a genuine checkpoint


def _train_two_steps(root: Path) -> Path:
    """`python -m train fit --config configs/tiny-cpu.yaml` for 2 steps on 2 short clips; its last.ckpt."""
    from sift.testbed.media import synth_clip, write_clip

    records = []
    for i in range(2):
        write_clip(synth_clip(2.0, seed=i, tone_hz=300.0 + 110.0 * i), root / f"c{i}.mp4")
        options = ["red", "green", "blue", "yellow"]
        records.append({"id": f"q{i}", "video": f"c{i}.mp4", "question": "What color?", "options": options, "answer": "AB"[i], "category": "color"})
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    args = ["fit", "--config", str(TINY), "--data.train_manifest", str(root / "train.jsonl")]
    args += ["--trainer.max_steps", "2", "--data.batch_size", "1", "--data.max_frames", "4"]
    proc = subprocess.run([sys.executable, "-m", "train", *args], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-6000:]
    return root / "runs" / "tiny-cpu" / "checkpoints" / "last.ckpt"


@pytest.mark.slow
def test_a_genuine_training_checkpoint_is_plain_data_and_exports(tmp_path):
    ckpt = _train_two_steps(tmp_path)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)  # what export does, without allowlist
    assert state["global_step"] == 2 and state["sift"]["selector_config"]["hidden_size"] == 64
    out = export(ckpt, tmp_path / "selector")
    selector = OmniSIFTSelector.from_pretrained(out)
    for name, value in selector.state_dict().items():
        assert torch.equal(value, state["state_dict"][f"selector.{name}"].float()), name
