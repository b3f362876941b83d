"""The training application (`train/`): configs, the Lightning module, the CLI, export, DDP, resume.

Everything runs on CPU with the tiny offline thinker and synthesized clips; the CLI runs are subprocesses
(`python -m train ...`) exactly as a user would run them.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sift import hf_internals as hf

pytest.importorskip("lightning")
pytest.importorskip("peft")
pytest.importorskip("torchmetrics")
pytest.importorskip("jsonargparse")
pytest.importorskip("datasets")

import lightning as L  # noqa: E402

import sift  # noqa: E402
from sift.testbed.media import load_clip, synth_clip, write_clip  # noqa: E402
from sift.selector import OmniSIFTSelector  # noqa: E402
from sift.testbed.tiny import omni_inputs, tiny_processor, tiny_thinker  # noqa: E402
from train.data import AVQADataModule, collate  # noqa: E402
from train.module import SelectorModule, category_id, extract_letter  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
# every LightningCLI config (configs/tiny-omni*.yaml are read by train.tiny_omni, tested in test_tiny_omni.py)
CONFIGS = sorted(p for p in (REPO / "configs").glob("*.yaml") if not p.name.startswith("tiny-omni"))
TINY = REPO / "configs" / "tiny-cpu.yaml"
OPTIONS = ["red", "green", "blue", "yellow"]


# ----------------------------------------------------------------------------------------- helpers


def _write_manifest(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _record(i: int, video: str, category: str) -> dict:
    return {
        "id": f"q{i}",
        "video": video,
        "question": "What color is the moving square?",
        "options": OPTIONS,
        "answer": "ABCD"[i % 4],
        "category": category,
    }


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    """Six 4 s synthetic clips with audio and the manifests the tests use (generic schema)."""
    root = tmp_path_factory.mktemp("clips")
    for i in range(6):
        write_clip(synth_clip(4.0, seed=i, tone_hz=300.0 + 110.0 * i), root / f"c{i}.mp4")
    cats = ["color", "motion", "sound"]
    records = [_record(i, f"c{i}.mp4", cats[i % 3]) for i in range(6)]
    (root / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video" * 40)
    bad = [records[0], _record(10, "corrupt.mp4", "color"), _record(11, "missing.mp4", "motion"), records[1]]
    return {
        "root": root,
        "train": _write_manifest(root / "train.jsonl", records),
        "train4": _write_manifest(root / "train4.jsonl", records[:4]),
        "train2": _write_manifest(root / "train2.jsonl", records[:2]),
        "val": _write_manifest(root / "val.jsonl", records[:4]),
        "ddp": _write_manifest(root / "ddp.jsonl", records[:4] + [_record(12, "gone1.mp4", "x"), _record(13, "gone2.mp4", "x")]),
        "bad": _write_manifest(root / "bad.jsonl", bad),
    }


def _train(args: list[str], *, cwd: Path = REPO, timeout: float = 300, threads: int = 1) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("PYTHONWARNINGS", "ignore")
    # The tiny model gains nothing from intra-op threads, and they slow down badly on a busy 2-core machine.
    env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.run(
        [sys.executable, "-m", "train", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"python -m train {' '.join(args)} failed ({proc.returncode})\n--- stdout\n{proc.stdout[-6000:]}\n"
            f"--- stderr\n{proc.stderr[-8000:]}"
        )
    return proc


def _fit(cwd: Path, train: Path, *extra: str, val: Path | None = None, **kwargs) -> subprocess.CompletedProcess:
    """`python -m train fit --config configs/tiny-cpu.yaml ...` run in `cwd` (its outputs: cwd/runs/tiny-cpu)."""
    args = ["fit", "--config", str(TINY), "--data.train_manifest", str(train)]
    if val is not None:
        args += ["--data.val_manifest", str(val)]
    cwd.mkdir(parents=True, exist_ok=True)
    return _train(args + list(extra), cwd=cwd, **kwargs)


def _run_dir(cwd: Path) -> Path:
    return cwd / "runs" / "tiny-cpu"


def _checkpoints(cwd: Path) -> Path:
    return _run_dir(cwd) / "checkpoints"


def _summary(cwd: Path, rank: int = 0) -> dict:
    return json.loads((_run_dir(cwd) / f"metrics-rank{rank}.json").read_text())


def _metrics_rows(cwd: Path, version: int | None = None) -> list[dict]:
    rows = []
    pattern = f"logs/version_{'*' if version is None else version}/metrics.csv"
    for path in sorted(_run_dir(cwd).glob(pattern)):
        with open(path) as f:
            rows += list(csv.DictReader(f))
    return rows


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


# ----------------------------------------------------------------------------------------- configs


def _parser():
    from lightning.pytorch.cli import LightningArgumentParser

    parser = LightningArgumentParser(exit_on_error=False)
    parser.add_argument("--seed_everything", type=bool | int, default=True)
    parser.add_lightning_class_args(L.Trainer, "trainer")
    parser.add_lightning_class_args(SelectorModule, "model", subclass_mode=False)
    parser.add_lightning_class_args(AVQADataModule, "data", subclass_mode=False)
    return parser


def test_configs_exist():
    names = {p.name for p in CONFIGS}
    assert {"omnisift-7b.yaml", "omnisift-3b.yaml", "omnisift-7b-zero3.yaml", "tiny-cpu.yaml", "demo.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_config_parses_against_the_code(path):
    cfg = _parser().parse_path(str(path))  # validates every key and type; instantiates nothing
    assert cfg.model.model
    if path.stem.startswith("omnisift-"):
        strategy = cfg.trainer.strategy
        assert strategy.class_path == "lightning.pytorch.strategies.DeepSpeedStrategy"
        assert strategy.init_args.stage == (3 if "zero3" in path.stem or "qwen3" in path.stem else 2)
        assert strategy.init_args.exclude_frozen_parameters is True
        assert cfg.trainer.precision == "bf16-mixed"
        assert cfg.model.attn_implementation == "flash_attention_2" and cfg.model.dtype == "bfloat16"
        global_batch = cfg.trainer.devices * cfg.trainer.num_nodes * cfg.data.batch_size * cfg.trainer.accumulate_grad_batches
        assert global_batch == 128
        assert cfg.model.lr == 1e-5 and cfg.model.warmup_ratio == 0.05 and cfg.trainer.max_epochs == 1
        assert tuple(cfg.model.retention_range) == (0.25, 0.5)
        expected = {"omnisift-7b": "Qwen/Qwen2.5-Omni-7B", "omnisift-7b-zero3": "Qwen/Qwen2.5-Omni-7B",
                    "omnisift-3b": "Qwen/Qwen2.5-Omni-3B", "omnisift-qwen3-30b-a3b": "Qwen/Qwen3-Omni-30B-A3B-Instruct"}
        assert cfg.model.model == cfg.data.processor == expected[path.stem]


@pytest.mark.parametrize("name", ["synthav-selector.yaml", "synthav-v2-selector.yaml", "synthav-v2-selector-policy.yaml",
                                  "synthav-v2-selector-split.yaml"])
def test_selector_training_benchmark_rewrites_the_config_it_documents(name):
    """benchmarks/selector_training.sh rewrites (and reads) these lines with sed: each must exist exactly once."""
    text = (REPO / "configs" / name).read_text()
    script = (REPO / "benchmarks" / "selector_training.sh").read_text()
    for pattern in (r"^seed_everything: ", r"^  train_mode: ", r"^  lr: ", r"^  importance_weight: ", r"^  model: ", r"^    init: omnizip"):
        assert len(re.findall(pattern, text, flags=re.M)) == 1, pattern
        assert pattern in script
    assert "runs/selector/run" in text and "runs/selector/synthav" in text


def test_a_wrong_key_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY.read_text().replace("val_retention:", "val_retension:"))
    with pytest.raises(Exception, match="val_retension"):
        _parser().parse_path(str(bad))


# ----------------------------------------------------------------------------------------- unit level


def test_letter_extraction_and_category_ids():
    assert extract_letter(" b. a dog", 4) == "B"
    assert extract_letter("C", 4) == "C"
    assert extract_letter("E", 4) is None  # not an option
    assert extract_letter("The answer is A", 4) is None  # must start with the letter
    assert extract_letter("", 4) is None
    assert category_id("color") == category_id("color") != category_id("motion")
    assert category_id("color") < 2**24  # exact in float32 metric states


@pytest.fixture()
def one_thread():
    """In-process training on one intra-op thread (see `_train`)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def batch(clips):
    dm = AVQADataModule(train_manifest=str(clips["train"]), processor="tiny", frame_size=112, max_frames=8, batch_size=2)
    dm.setup("fit")
    items = [dm.train_dataset[0], dm.train_dataset[2]]
    return collate(items, pad_token_id=dm.pad_token_id)


def test_module_freezes_the_model_and_keeps_it_in_eval_mode():
    module = SelectorModule(model="tiny", finetune="lora", lora_dropout=0.1)
    module.configure_model()
    module.train()
    assert module.selector.training
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("selector.") or ".lora_" in n for n in trainable)
    assert any(".lora_" in n for n in trainable)
    assert all(".language_model." in n for n in trainable if ".lora_" in n)  # LoRA on the language model only
    frozen_modes = {m.training for n, m in module.model.named_modules() if "lora_dropout" not in n}
    assert frozen_modes == {False}
    assert any(m.training for n, m in module.model.named_modules() if "lora_dropout" in n)
    module.eval()
    assert not module.selector.training


def test_retention_is_seeded_by_the_step():
    module = SelectorModule(model="tiny", retention_range=(0.25, 0.5))
    values = [module.sample_retention(i) for i in range(3)]
    assert all(0.25 <= v <= 0.5 for v in values)
    assert values == [SelectorModule(model="tiny").sample_retention(i) for i in range(3)]  # any rank, any run


def test_kd_is_zero_without_compression_and_trains_the_selector_with_it(batch):
    module = SelectorModule(model="tiny", kd_weight=1.0, retention_range=(1.0, 1.0))
    module.configure_model()
    module.train()
    inputs, labels = module._model_inputs(batch), batch["labels"]
    teacher = module._teacher_logits(inputs, labels)
    with sift.compress(module.model, module._compressor(1.0)) as session:
        out = module.model(**inputs, labels=labels)
    assert teacher[0].shape[0] == int((labels != -100).sum())  # the answer letter + <|im_end|> per row
    kd_full = module._kd_loss(out.logits, session.stats, teacher)
    assert kd_full.abs().item() < 1e-5  # identical sequences: the mapping kept -> original is exact

    with sift.compress(module.model, module._compressor(0.3)) as session:
        out = module.model(**inputs, labels=labels)
    kd = module._kd_loss(out.logits, session.stats, teacher)
    assert torch.isfinite(kd) and kd.item() > 0
    # The kept -> original mapping agrees with the plug-in's own label shrinking: same CE at the mapped slots.
    rows, cols = teacher[1], teacher[2]
    slots = session.stats.slots_of(rows, cols)
    assert session.stats.tokens_after[0] < session.stats.tokens_before[0]
    manual = torch.nn.functional.cross_entropy(out.logits[rows, slots].float(), labels[rows, cols + 1])
    assert manual.item() == pytest.approx(out.loss.item(), rel=1e-5)
    (out.loss + kd).backward()
    assert module.selector.vgas.score_head[2].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in module.model.parameters())


def test_mask_mode_gives_the_shrunk_losses_and_a_gradient(batch):
    """train_mode="mask": same CE and KD values as the shrunk sequence, and the selector gets a gradient."""
    module = SelectorModule(model="tiny", kd_weight=1.0, train_mode="mask")
    module.configure_model()
    module.train()
    inputs, labels = module._model_inputs(batch), batch["labels"]
    teacher = module._teacher_logits(inputs, labels)
    losses = {}
    for mode in sift.MODES:
        with sift.compress(module.model, module._compressor(0.3), mode=mode) as session:
            out = module.model(**inputs, labels=labels)
        stats = session.stats if mode == "shrink" else None
        losses[mode] = (out.loss, module._kd_loss(out.logits, stats, teacher))
    for shrunk, masked in zip(losses["shrink"], losses["mask"]):
        assert masked.item() == pytest.approx(shrunk.item(), rel=1e-4, abs=1e-6)
    sum(losses["mask"]).backward()
    assert module.selector.vgas.score_head[2].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in module.model.parameters())
    with pytest.raises(ValueError, match="train_mode"):
        SelectorModule(model="tiny", train_mode="drop")


@pytest.mark.slow
def test_overfitting_one_batch_lowers_the_loss(clips, one_thread):
    # Selector and LoRA together: which tokens a random tiny model keeps barely moves its loss (the
    # selector-only loss decrease is checked in test_omnisift), LoRA makes the overfit clear.
    torch.manual_seed(0)
    losses: list[float] = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    module = SelectorModule(model="tiny", finetune="lora", lr=1e-2, warmup_ratio=0.0, retention_range=(0.3, 0.3))
    dm = AVQADataModule(train_manifest=str(clips["train2"]), processor="tiny", frame_size=112, max_frames=8, batch_size=2)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=30,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Record()],
    )
    before = {k: v.clone() for k, v in module.selector.state_dict().items()}
    trainer.fit(module, dm)
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < losses[0] - 0.5, losses  # about 5.9 -> 4.9 for the tiny model
    after = module.selector.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the selector trained alongside


# ----------------------------------------------------------------------------------------- CLI end to end


@pytest.fixture(scope="module")
def first_run(clips, tmp_path_factory) -> Path:
    """4 steps of tiny-cpu (6 samples, batch 1: stopped mid-epoch) with a checkpoint after every step."""
    root = tmp_path_factory.mktemp("run")
    _fit(root, clips["train"], "--trainer.max_steps", "4", "--data.batch_size", "1")
    return root


@pytest.mark.slow
def test_checkpoints_hold_only_trainable_weights(first_run):
    folder = _checkpoints(first_run)
    names = sorted(p.name for p in folder.glob("*.ckpt"))
    assert names == ["last.ckpt", "step=1.ckpt", "step=2.ckpt", "step=3.ckpt", "step=4.ckpt"]
    ckpt = _load(folder / "last.ckpt")
    assert ckpt["global_step"] == 4
    keys = list(ckpt["state_dict"])
    assert keys and all(k.startswith("selector.") for k in keys)
    assert ckpt["optimizer_states"] and ckpt["lr_schedulers"]
    assert ckpt["sift"]["selector_config"]["hidden_size"] == 64
    n_selector = sum(v.numel() for v in ckpt["state_dict"].values())
    assert (folder / "last.ckpt").stat().st_size < 16 * n_selector + 1_000_000  # no frozen model in there


@pytest.mark.slow
def test_export_then_compress_with_the_exported_selector(first_run, clips, tmp_path):
    ckpt = _checkpoints(first_run) / "last.ckpt"
    out = tmp_path / "selector"
    proc = _train(["export", str(ckpt), str(out)])
    assert "exported selector" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    selector = OmniSIFTSelector.from_pretrained(out)
    state = _load(ckpt)["state_dict"]
    for name, value in selector.state_dict().items():
        assert torch.equal(value, state[f"selector.{name}"].float()), name
    assert selector.vgas.score_head[2].weight.abs().sum() > 0  # zero at init: it was trained

    processor = tiny_processor()
    model = tiny_thinker(seed=0)
    clip = load_clip(clips["root"] / "c3.mp4", size=(112, 112))
    inputs = omni_inputs(processor, [clip], ["What color is the moving square?"])
    with torch.no_grad(), sift.compress(model, "omnisift", selector=str(out), retention=0.35) as session:
        generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 3
    assert session.stats.retention == pytest.approx(0.35, abs=0.02)


@pytest.mark.slow
def test_export_refuses_what_is_not_a_checkpoint(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "train", "export", str(tmp_path), str(tmp_path / "out")],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "not a DeepSpeed ZeRO checkpoint" in proc.stderr
    from train.export import export

    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        export(tmp_path / "nope.ckpt", tmp_path / "out")
    (tmp_path / "junk.ckpt").write_text("junk")
    with pytest.raises(ValueError, match="neither a Lightning checkpoint"):
        export(tmp_path / "junk.ckpt", tmp_path / "out")


@pytest.mark.slow
def test_interrupt_and_resume_continues_at_the_saved_step(first_run, clips, tmp_path):
    shutil.copytree(first_run / "runs", tmp_path / "runs")  # the interrupted run, as it was left
    before = _load(_checkpoints(tmp_path) / "last.ckpt")
    assert before["global_step"] == 4
    _fit(tmp_path, clips["train"], "--trainer.max_steps", "6", "--data.batch_size", "1", "--ckpt_path", "last")
    steps = sorted({int(r["step"]) for r in _metrics_rows(tmp_path, version=1) if r.get("train/loss")})
    assert steps == [4, 5]  # started from global step 4, not from 0
    folder = _checkpoints(tmp_path)
    assert {"step=5.ckpt", "step=6.ckpt"} <= {p.name for p in folder.glob("step=*.ckpt")}
    last = _load(folder / "last.ckpt")
    assert last["global_step"] == 6
    resumed, saved = last["state_dict"], before["state_dict"]
    assert any(not torch.equal(resumed[k], saved[k]) for k in saved)  # it kept training
    assert _summary(tmp_path)["global_step"] == 6


@pytest.mark.slow
def test_skipped_videos_are_counted(clips, tmp_path):
    proc = _fit(tmp_path, clips["bad"], "--data.batch_size", "1", "--trainer.max_steps", "-1", val=clips["bad"])
    assert "train/skipped: 2 " in proc.stdout
    metrics = _summary(tmp_path)["metrics"]
    assert metrics["train/skipped"] == 2 and metrics["val/skipped"] == 2
    assert any(r.get("train/loss") for r in _metrics_rows(tmp_path))  # the two readable videos trained


@pytest.mark.slow
def test_ddp_two_cpu_processes_agree_on_validation(clips, tmp_path):
    # 6 samples (2 missing videos) over 2 ranks, batch 1: a rank may meet an empty batch while the other
    # trains; it must still take part in the gradient all-reduce (no hang), and skips are summed over ranks.
    _fit(
        tmp_path,
        clips["ddp"],
        "--trainer.devices", "2",
        "--trainer.strategy", "ddp",
        "--trainer.max_steps", "-1",
        "--data.batch_size", "1",
        val=clips["val"],
    )  # fmt: skip
    ranks = [_summary(tmp_path, rank) for rank in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and {r["world_size"] for r in ranks} == {2}
    assert ranks[0]["global_step"] == ranks[1]["global_step"] == 3  # 6 samples over 2 ranks, batch 1
    m0, m1 = ranks[0]["metrics"], ranks[1]["metrics"]
    assert "val/acc" in m0 and m0 == m1
    assert m0["train/skipped"] == 2 and m0["val/skipped"] == 0
    assert {k for k in m0 if k.startswith("val/acc/")} == {"val/acc/color", "val/acc/motion", "val/acc/sound"}


@pytest.mark.slow
def test_lora_with_distillation_trains_and_exports_a_peft_adapter(clips, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file

    _fit(
        tmp_path / "run",
        clips["train2"],
        "--model.finetune", "lora",
        "--model.kd_weight", "0.5",
        "--model.lr", "1e-2",
        "--trainer.max_steps", "2",
        "--data.batch_size", "1",
    )  # fmt: skip
    ckpt_path = _checkpoints(tmp_path / "run") / "last.ckpt"
    state = _load(ckpt_path)["state_dict"]
    lora_keys = [k for k in state if ".lora_" in k]
    assert lora_keys and all(k.startswith("selector.") or ".lora_" in k for k in state)
    kd_logged = [r for r in _metrics_rows(tmp_path / "run") if r.get("train/kd")]
    assert kd_logged and all(float(r["train/kd"]) >= 0 for r in kd_logged)

    out = tmp_path / "export"
    _train(["export", str(ckpt_path), str(out)])
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in (out / "lora").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    saved = load_file(out / "lora" / "adapter_model.safetensors")
    assert all(k.startswith("base_model.model.layers.") and ".default." not in k for k in saved)

    base = tiny_thinker(seed=0)
    language_model = hf.language_model(base)
    ids = torch.arange(10)[None]
    before = language_model(input_ids=ids).last_hidden_state
    peft_model = PeftModel.from_pretrained(language_model, out / "lora")
    loaded = {n: p for n, p in peft_model.named_parameters() if ".lora_" in n}
    assert len(loaded) == len(lora_keys)
    for key in lora_keys:
        name = "base_model.model." + key[len(f"model.{hf.LANGUAGE_MODEL_PATH}.") :]
        assert torch.equal(loaded[name].float(), state[key].float()), key
    after = peft_model(input_ids=ids).last_hidden_state
    assert not torch.allclose(before, after)  # the trained adapter changes the language model


# ----------------------------------------------------------------------------------------- DeepSpeed export


@pytest.mark.slow
def test_export_reads_a_deepspeed_zero_checkpoint(tmp_path, monkeypatch):
    """A ZeRO-2 checkpoint laid out as Lightning's DeepSpeedStrategy writes it (CPU, gloo, one process)."""
    deepspeed = pytest.importorskip("deepspeed")
    import deepspeed.comm.torch  # noqa: F401

    ds_torch_comm = sys.modules["deepspeed.comm.torch"]  # (the attribute deepspeed.comm.torch is torch itself)
    from peft import PeftModel

    from train.export import export

    # DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce op on first use (a minute); not needed here.
    monkeypatch.setattr(ds_torch_comm, "build_shm_op", lambda: None)
    with socket.socket() as sock:  # a free local port for the one-process gloo group
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    torch.manual_seed(0)
    module = SelectorModule(model="tiny", finetune="lora")
    module.configure_model()
    with torch.no_grad():  # make every trainable weight distinctive (LoRA B and the selector's last layers start at 0)
        for p in module.parameters():
            if p.requires_grad:
                p.copy_(torch.randn_like(p))
    config = {
        "train_micro_batch_size_per_gpu": 1,
        "zero_optimization": {"stage": 2},
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}},
        "zero_allow_untested_optimizer": True,
    }
    deepspeed.init_distributed(dist_backend="gloo")
    try:
        trainable = [p for p in module.parameters() if p.requires_grad]
        engine, *_ = deepspeed.initialize(model=module, model_parameters=trainable, config=config)
        checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams), "global_step": 3}
        module.on_save_checkpoint(checkpoint)
        client_state = {k: v for k, v in checkpoint.items() if k not in ("state_dict", "optimizer_states")}
        ckpt_dir = tmp_path / "step=3.ckpt"
        engine.save_checkpoint(str(ckpt_dir), client_state=client_state, tag="checkpoint", exclude_frozen_parameters=True)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    model_states = torch.load(ckpt_dir / "checkpoint" / "mp_rank_00_model_states.pt", weights_only=False)
    assert not any(k.startswith("model.") and ".lora_" not in k for k in model_states["module"])  # frozen excluded

    out = export(ckpt_dir, tmp_path / "export")
    selector = OmniSIFTSelector.from_pretrained(out)
    for name, value in module.selector.state_dict().items():
        assert torch.equal(selector.state_dict()[name], value.float()), name
    peft_model = PeftModel.from_pretrained(hf.language_model(tiny_thinker(seed=0)), out / "lora")
    loaded = {n: p for n, p in peft_model.named_parameters() if ".lora_" in n}
    for name, p in hf.language_model(module.model).named_parameters():
        if ".lora_" in name:
            assert torch.equal(loaded["base_model.model." + name], p.float()), name


@pytest.mark.parametrize("train_mode", ["shrink", "mask"])
@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")  # a step outside a Trainer
def test_a_qwen3_omni_training_step_reaches_the_selector_and_never_the_frozen_model(clips, train_mode):
    """Issue 14: the data module with the real Qwen3-Omni processor, SelectorModule on the tiny Qwen3 thinker: CE +
    KD + importance distillation in either mode; gradients reach the selector only."""
    dm = AVQADataModule(train_manifest=str(clips["train"]), processor="tiny-qwen3", max_frames=8, batch_size=2)
    dm.setup("fit")
    batch = collate([dm.train_dataset[0], dm.train_dataset[2]], pad_token_id=dm.pad_token_id)
    assert batch["video_second_per_grid"].tolist() == [1.0, 1.0]  # the Qwen3 processor: temporal patch 2 at 2 fps
    module = SelectorModule(model="tiny-qwen3", kd_weight=1.0, importance_weight=1.0, train_mode=train_mode,
                            retention_range=(0.3, 0.3))
    module.configure_model()
    module.train()
    assert module.selector.config.base_model == "qwen3_omni_moe_thinker" and module.selector.config.hidden_size == 64
    loss = module.training_step(batch, 0)
    assert torch.isfinite(loss) and loss.requires_grad
    loss.backward()
    assert module.selector.vgas.score_head[2].weight.grad.abs().sum() > 0
    assert module.selector.stvp.mlp[2].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in module.model.parameters())


def _dry_run(tmp_path, variants: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DRY_RUN": "1", "PY": sys.executable, "ROOT": str(tmp_path), "SEEDS": "0 1",
           "CONFIG": "configs/synthav-v2-selector.yaml", "SYNTHAV_VERSION": "2", "VARIANTS": variants,
           "OUT": str(tmp_path / "table")}
    return subprocess.run(["bash", str(REPO / "benchmarks" / "selector_training.sh")], env=env,
                          capture_output=True, text=True, timeout=300)


def test_selector_training_benchmark_writes_the_variants_it_names(tmp_path):
    """Every flag of a variant reaches its run's config (two selector flags once lost one) and untrained baselines."""
    run = "shrink-3e-3+rank0.5+policy2+mixed+clip"
    proc = _dry_run(tmp_path, f"{run} untrained+spatial+nores")
    assert proc.returncode == 0, proc.stderr
    cfg = _parser().parse_path(str(tmp_path / f"{run}-seed1.yaml"))
    assert cfg.seed_everything == 1 and cfg.model.train_mode == "shrink" and cfg.model.lr == 3e-3
    assert cfg.model.importance_weight == 0.5 and cfg.model.policy_weight == 2.0
    assert cfg.model.selector == {"init": "omnizip", "video_base": "mixed", "audio_topk": "clip"}
    assert cfg.trainer.default_root_dir == f"{tmp_path}/{run}-seed1"
    log = (tmp_path / f"{run}-seed0.log").read_text()  # training's output goes there
    assert f"-m train fit --config {tmp_path}/{run}-seed0.yaml" in log
    untrained = OmniSIFTSelector.from_pretrained(tmp_path / "selectors" / "untrained+spatial+nores").config
    assert untrained.video_base == "spatial" and not untrained.stvp_residual and untrained.audio_topk == "clip"
    assert "--methods omnisift --selector " + f"{tmp_path}/selectors/untrained+spatial+nores" in proc.stdout


def test_selector_training_benchmark_refuses_an_unknown_flag(tmp_path):
    proc = _dry_run(tmp_path, "shrink-3e-3+spacial")
    assert proc.returncode == 2
    assert "unknown variant flag 'spacial' in shrink-3e-3+spacial" in proc.stderr


def test_selector_training_benchmark_writes_a_learned_split_run(tmp_path):
    """+splitS turns the learned budget split on and draws it at S; +ptemp0 leaves the keep sets undrawn; +capP
    caps the reward."""
    run = "shrink-3e-3+rank1+policy1+ptemp0+cap0.9+split0.5"
    proc = _dry_run(tmp_path, run)
    assert proc.returncode == 0, proc.stderr
    cfg = _parser().parse_path(str(tmp_path / f"{run}-seed0.yaml"))
    assert (cfg.model.policy_weight, cfg.model.policy_temperature, cfg.model.policy_split_noise) == (1.0, 0.0, 0.5)
    assert cfg.model.policy_reward_cap == 0.9
    assert cfg.model.selector["budget_split"] == "learned" and cfg.model.importance_weight == 1.0
