"""A training run killed mid-epoch (`kill -9`) and resumed with `--ckpt_path last` sees exactly the batches
the uninterrupted run saw from that step on (train.data.ResumableDataLoader), on CPU with the tiny thinker.

The runs are `python -m train fit --config configs/tiny-cpu.yaml` subprocesses (a checkpoint after every
step) with one extra callback, written to a temporary module, that records the sample ids of each batch
and can stall the run at a given step, so that the test kills it at a known point.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("lightning")
pytest.importorskip("jsonargparse")
pytest.importorskip("datasets")

from sift.testbed.media import synth_clip, write_clip  # noqa: E402
from train.data import AVQADataModule, ResumableDataLoader, ResumableSampler  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny-cpu.yaml"
SAMPLES = 6  # batch 1, 2 epochs: 12 steps
KILL_AFTER = 8  # steps done when the run is killed: 2 batches into the second epoch
TIMEOUT = 300

PROBE = '''
import json, time
from pathlib import Path
from lightning.pytorch.callbacks import Callback


class RecordBatches(Callback):
    """Append {step, epoch, ids} per training batch to `path`; before step `stall_at`, mark and hang."""

    def __init__(self, path: str, stall_at: int = -1):
        self.path, self.stall_at = Path(path), stall_at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.stall_at:  # the checkpoint of the step before is complete
            self.path.with_suffix(".stalled").write_text(str(trainer.global_step))
            time.sleep(3600)
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": trainer.global_step, "epoch": trainer.current_epoch, "ids": batch["id"]}) + "\\n")
'''


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """Six 2 s clips, their manifest, and the probe module."""
    root = tmp_path_factory.mktemp("resume")
    records = []
    for i in range(SAMPLES):
        write_clip(synth_clip(2.0, seed=i, tone_hz=300.0 + 110.0 * i), root / f"c{i}.mp4")
        options = ["red", "green", "blue", "yellow"]
        question = {"question": "What color?", "options": options, "answer": "ABCD"[i % 4], "category": "color"}
        records.append({"id": f"q{i}", "video": f"c{i}.mp4", **question})
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (root / "resume_probe.py").write_text(PROBE)
    return root


def _fit(root: Path, run: str, *extra: str, stall_at: int = -1) -> subprocess.Popen:
    """Start `python -m train fit` (tiny-cpu, batch 1, 2 epochs) in `root/run`, recording to `root/run.jsonl`."""
    probe = {"class_path": "resume_probe.RecordBatches", "init_args": {"path": str(root / f"{run}.jsonl"), "stall_at": stall_at}}
    args = ["fit", "--config", str(TINY), "--data.train_manifest", str(root / "train.jsonl"), "--data.batch_size", "1"]
    args += ["--data.max_frames", "4", "--trainer.max_epochs", "2", "--trainer.max_steps", "-1"]
    args += [f"--trainer.callbacks+={json.dumps(probe)}", *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(root), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("PYTHONWARNINGS", None)  # the test reads Lightning's warnings
    (root / run).mkdir(exist_ok=True)
    with open(root / f"{run}.log", "w") as log:  # the child keeps its own copy of the descriptor
        command = [sys.executable, "-m", "train", *args]
        return subprocess.Popen(command, cwd=root / run, env=env, stdout=log, stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen, root: Path, run: str) -> str:
    rc = proc.wait(timeout=TIMEOUT)
    log = (root / f"{run}.log").read_text()
    assert rc == 0, f"{run} failed ({rc}):\n{log[-6000:]}"
    return log


def _batches(root: Path, run: str) -> list[dict]:
    return [json.loads(line) for line in (root / f"{run}.jsonl").read_text().splitlines()]


def _wait_for(path: Path, proc: subprocess.Popen, root: Path, run: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"{run} ended before stalling:\n{(root / f'{run}.log').read_text()[-6000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{run} did not reach step {KILL_AFTER} in {TIMEOUT} s")
        time.sleep(0.2)


@pytest.mark.slow
def test_killed_run_resumes_with_the_batches_of_the_uninterrupted_run(workdir):
    full = _fit(workdir, "full")  # runs alongside the interrupted one (two processes, two cores)
    killed = _fit(workdir, "killed", stall_at=KILL_AFTER)
    try:
        _wait_for(workdir / "killed.stalled", killed, workdir, "killed")
        os.kill(killed.pid, signal.SIGKILL)
        assert killed.wait(timeout=60) == -signal.SIGKILL
        last = workdir / "killed" / "runs" / "tiny-cpu" / "checkpoints" / "last.ckpt"
        assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == KILL_AFTER
        resumed_log = _finish(_fit(workdir, "killed", "--ckpt_path", "last"), workdir, "killed")
        _finish(full, workdir, "full")
    finally:
        for proc in (full, killed):
            if proc.poll() is None:
                proc.kill()
    expected = _batches(workdir, "full")
    assert [b["step"] for b in expected] == list(range(2 * SAMPLES))
    assert sorted(i for b in expected[:SAMPLES] for i in b["ids"]) == [f"q{i}" for i in range(SAMPLES)]  # one epoch
    seen = _batches(workdir, "killed")
    assert seen[:KILL_AFTER] == expected[:KILL_AFTER]  # the same order before the kill
    assert seen[KILL_AFTER:] == expected[KILL_AFTER:]  # and after the restart: no replay of the epoch's start
    assert "not resumable" not in resumed_log


def _loader(dataset: list[int], *, rank: int = 0, replicas: int = 1, seed: int = 0) -> ResumableDataLoader:
    sampler = ResumableSampler(dataset, num_replicas=replicas, rank=rank, seed=seed)
    return ResumableDataLoader(dataset, batch_size=2, sampler=sampler, collate_fn=list)


def test_loader_state_resumes_mid_epoch_and_at_the_next_epoch():
    data = list(range(10))
    first = _loader(data)
    first.sampler.set_epoch(3)
    batches = iter(first)
    seen = [next(batches), next(batches)]
    state = first.state_dict()
    assert state == {"seed": 0, "epoch": 3, "batches": 2, "num_replicas": 1}
    rest = list(batches)

    again = _loader(data, seed=123)  # the saved seed wins
    again.load_state_dict(state)
    again.sampler.set_epoch(3)
    assert list(again) == rest
    assert sorted(i for b in seen + rest for i in b) == data
    again.sampler.set_epoch(4)
    assert sorted(i for b in again for i in b) == data  # the next epoch starts at its beginning

    done = _loader(data)  # a checkpoint at the end of an epoch resumes at the start of the next
    done.load_state_dict({"seed": 0, "epoch": 3, "batches": 5, "num_replicas": 1})
    done.sampler.set_epoch(4)
    assert len(list(done)) == 5


def test_ranks_get_disjoint_shards_like_torch_distributed_sampler():
    data = list(range(9))
    shards = [[i for b in _loader(data, rank=r, replicas=2) for i in b] for r in (0, 1)]
    reference = [list(torch.utils.data.DistributedSampler(data, num_replicas=2, rank=r, seed=0)) for r in (0, 1)]
    assert shards == reference
    assert set(shards[0]) | set(shards[1]) == set(data)


def _items(n: int) -> list[dict]:
    """Minimal items that `collate` batches (only their ids matter here)."""
    item = {"use_audio_in_video": False, "answer": "A", "category": "c", "num_options": 4}
    return [dict(item, input_ids=torch.tensor([i]), attention_mask=torch.tensor([1]), id=f"q{i}") for i in range(n)]


def _datamodule(rank: int, replicas: int) -> AVQADataModule:
    dm = AVQADataModule(processor="tiny", batch_size=2)
    dm.train_dataset = _items(9)
    dm.trainer = SimpleNamespace(distributed_sampler_kwargs={"num_replicas": replicas, "rank": rank})
    return dm


def _ids(batches) -> list[str]:
    return [i for b in batches for i in b["id"]]


def test_datamodule_shards_by_rank_and_restores_its_loader_before_or_after_building_it(monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")
    first = _datamodule(rank=1, replicas=2).train_dataloader()
    assert (first.sampler.rank, first.sampler.num_replicas, first.sampler.seed) == (1, 2, 7)
    reference = torch.utils.data.DistributedSampler(list(range(9)), num_replicas=2, rank=1, seed=7)
    reference.set_epoch(2)
    first.sampler.set_epoch(2)
    batches = iter(first)
    head = [next(batches)]
    assert _ids(head + list(batches)) == [f"q{i}" for i in reference]  # what Lightning injected for DDP before
    state = {"train_loader": {"seed": 7, "epoch": 2, "batches": 1, "num_replicas": 2}}

    before = _datamodule(rank=1, replicas=2)  # restored before the loader exists (DDP, one device)
    before.load_state_dict(state)
    loader = before.train_dataloader()
    loader.sampler.set_epoch(2)
    assert _ids(loader) == [f"q{i}" for i in list(reference)[2:]]

    after = _datamodule(rank=1, replicas=2)  # restored after Lightning built the loader and called iter() (DeepSpeed)
    loader = after.train_dataloader()
    batches = iter(loader)
    after.load_state_dict(state)
    loader.sampler.set_epoch(2)
    assert _ids(batches) == [f"q{i}" for i in list(reference)[2:]]
    assert after.state_dict() == {"train_loader": dict(state["train_loader"], batches=3)}  # counts the skipped batch
