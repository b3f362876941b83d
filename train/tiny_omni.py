"""Train tiny-omni: a small Qwen2.5-Omni thinker trained from scratch on SynthAV (``python -m train tiny-omni``).

Why: no real Qwen2.5-Omni weights can be downloaded here, and a randomly initialised tiny model gives a
token selector nothing to preserve. tiny-omni is the real ``Qwen2_5OmniThinkerForConditionalGeneration``
class at a few million parameters, with a BPE tokenizer trained offline on SynthAV's vocabulary (Qwen's
special tokens and chat template), trained on SynthAV (:mod:`sift.testbed.synthav`) until it answers the
benchmark's questions from the audio and the video. The result is a ``save_pretrained`` folder (model,
tokenizer, processor, model card) that ``from_pretrained``, ``sift eval --model`` and the selector training
(``python -m train fit``) load like a real checkpoint.

Speed on CPU comes from two choices, neither of which changes what the model sees:

- each clip is decoded and its media tokens laid out by the real processor *once* (cached in memory),
  and every step only renders the text turns and patchifies the cached frames;
- each training sequence asks all of the clip's questions as consecutive chat turns (in a random order,
  loss on every answer), so one pass over the media teaches three answers. The first turn is exactly the
  single-question prompt ``sift eval`` uses;
- most sequences also ask for the clip's caption (SynthAV's ``caption`` field: every shape, color and sound
  in order, each sound paired with its shape). The questions alone give one letter of supervision each,
  which a from-scratch model takes a long time to connect to its encoders; the caption teaches recognition,
  order and audio-video pairing densely.

Config: ``configs/tiny-omni.yaml`` (every key is a field of :class:`TinyOmniConfig`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sift import hf_internals as hf
from sift.models import adapter_for

logger = logging.getLogger(__name__)

__all__ = ["TinyOmniConfig", "load_config", "build_model", "ClipCache", "train", "main"]


@dataclass
class TinyOmniConfig:
    """Everything ``python -m train tiny-omni`` reads from its YAML file."""

    # data: a SynthAV folder (generated there if its manifests are missing)
    data_dir: str = "runs/synthav"
    train_clips: int = 1500
    validation_clips: int = 60
    test_clips: int = 200
    data_seed: int = 0
    min_seconds: int = 6
    max_seconds: int = 20
    #: SynthAV version of the generated data (:mod:`sift.testbed.synthav`); 2 raises the processor's pixel budget
    #: to the folder's ``video_max_pixels`` and adds version 2's questions to the tokenizer's corpus
    synthav_version: int = 1
    # model
    hidden_size: int = 128
    num_layers: int = 4
    intermediate_size: int = 384
    audio: dict[str, Any] = field(
        default_factory=lambda: {"d_model": 64, "encoder_ffn_dim": 128, "encoder_attention_heads": 4, "encoder_layers": 2}
    )
    vision: dict[str, Any] = field(
        default_factory=lambda: {"hidden_size": 64, "intermediate_size": 128, "num_heads": 4, "depth": 2}
    )
    # training
    seed: int = 0
    epochs: int = 6
    batch_size: int = 8
    lr: float = 1.0e-3
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.01
    warmup_steps: int = 100
    grad_clip: float = 1.0
    single_question_prob: float = 0.25
    caption_prob: float = 0.75
    aux_weight: float = 1.0
    eval_every: int = 200
    threads: int = 0
    # continue from a saved tiny-omni folder (same dimensions) with a fresh schedule; None: from scratch
    init_from: str | None = None
    # output
    out_dir: str = "checkpoints/tiny-omni"


def load_config(path: str | None, overrides: dict[str, Any] | None = None) -> TinyOmniConfig:
    """Read a YAML config; unknown keys are an error (a misspelled key never silently does nothing)."""
    data: dict[str, Any] = {}
    if path:
        import yaml

        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of TinyOmniConfig fields, got {type(data).__name__}")
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    known = {f.name for f in fields(TinyOmniConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path or 'overrides'}: unknown tiny-omni config keys {unknown}; known: {sorted(known)}")
    return TinyOmniConfig(**data)


# ------------------------------------------------------------------------------------------------ model


def build_tokenizer_and_processor(version: int = 1) -> tuple[Any, Any]:
    """A tokenizer trained on SynthAV ``version``'s vocabulary and the tiny processor around it."""
    from sift.testbed.synthav import vocabulary_texts
    from sift.testbed.tiny import tiny_processor, tiny_tokenizer

    tok = tiny_tokenizer(vocabulary_texts(version))
    return tok, tiny_processor(tok)


def build_model(cfg: TinyOmniConfig, tokenizer: Any) -> torch.nn.Module:
    """A freshly initialised tiny-omni thinker (real transformers classes, seeded)."""
    from sift.testbed.tiny import tiny_thinker, tiny_thinker_config

    config = tiny_thinker_config(
        tokenizer,
        hidden_size=cfg.hidden_size,
        num_layers=cfg.num_layers,
        intermediate_size=cfg.intermediate_size,
        audio_overrides=cfg.audio,
        vision_overrides=cfg.vision,
        attn_implementation="sdpa",
    )
    return tiny_thinker(config, seed=cfg.seed, attn_implementation="sdpa")


# ------------------------------------------------------------------------------------------------ data

_END = "<|im_end|>"
#: Per-token training labels: cell color, cell shape, sound, first-event flag, on-screen color (audio tokens).
AUX_TASKS = 5
#: Which of them are perception (probed on the encoders' output too) rather than reasoning (LLM states only).
_PERCEPTION = (0, 1, 2)
#: A turn of :meth:`ClipCache.item` that asks for the clip's caption instead of a question.
CAPTION_TURN = object()


class ClipCache:
    """Decoded SynthAV clips with their media token prefix, computed once.

    Per clip: ``prefix`` (the chat up to and including the video: system turn, ``<|im_start|>user\\n`` and
    the processor's interleaved video/audio tokens), the 2 fps frames (uint8), the log-mel features of
    its own length and the questions. :meth:`item` renders one training or evaluation sequence.

    With the thinker ``config``, SynthAV clips also get per-token ground truth over the prefix (``aux``:
    (:data:`AUX_TASKS`, prefix length), -100 where a task does not apply), placed with the token layout
    (:func:`sift.build_layout`) and the clip's spec: color and shape of each video token's cell, sound of
    each audio token, whether the token belongs to the clip's first event, and for audio tokens the color
    of the shape on screen at that moment.
    """

    def __init__(
        self,
        manifest: str | Path,
        processor: Any,
        *,
        config: Any = None,
        limit: int | None = None,
        progress: bool = True,
    ):
        from tqdm import tqdm

        from sift.manifest import read_manifest

        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.config = config
        by_video: dict[str, list] = defaultdict(list)
        for s in read_manifest(manifest, schema="generic"):
            by_video[s.video].append(s)
        # SynthAV records also carry the clip's `caption` (ignored by the generic reader): keep it by id
        self.captions: dict[str, str] = {}
        with open(manifest, encoding="utf-8") as f:
            for line in f:
                rec = json.loads(line) if line.strip() else {}
                if rec.get("caption"):
                    self.captions[str(rec.get("id"))] = str(rec["caption"])
        videos = sorted(by_video)[: limit if limit is not None else None]
        self.clips: list[dict[str, Any]] = []
        self.skipped: dict[str, str] = {}
        for video in tqdm(videos, desc=f"caching {Path(manifest).name}", unit="clip", disable=not progress):
            try:
                self.clips.append(self._load(video, by_video[video]))
            except Exception as e:  # a bad file is skipped, counted and logged, never fatal
                self.skipped[video] = f"{type(e).__name__}: {e}"
                logger.warning("skipping %s: %s", video, e)
        if not self.clips:
            raise ValueError(f"{manifest}: no usable clips ({len(self.skipped)} skipped)")

    def _prefix_text(self) -> str:
        tok = self.tokenizer
        text = tok.apply_chat_template(
            [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": ""}]}],
            tokenize=False,
            add_generation_prompt=False,
        )
        return text[: text.rindex(_END)]

    def _load(self, video: str, samples: list) -> dict[str, Any]:
        from sift.testbed.media import load_clip
        from sift.testbed.processing import audio_kwargs, video_size

        clip = load_clip(video, fps=2.0)
        if clip.audio is None or not len(clip.audio):
            raise ValueError("no audio track")
        out = self.processor(
            text=[self._prefix_text()],
            videos=[clip.frames],
            audio=[clip.audio],
            load_audio_from_video=True,
            audio_from_video_indices=[0],
            return_tensors="pt",
            videos_kwargs=dict(fps=clip.fps, do_sample_frames=False, size=video_size(self.processor)),
            audio_kwargs=audio_kwargs(self.processor, [clip.audio]),
        )
        n = int(out["feature_attention_mask"][0].sum())
        aux = self._aux_labels(video, out) if self.config is not None else None
        return {
            "aux": aux,
            "video": video,
            "prefix": out["input_ids"][0],
            "frames": clip.frames,
            "features": out["input_features"][0, :, :n].clone(),
            "grid": out["video_grid_thw"],
            "spg": torch.as_tensor(out["video_second_per_grid"], dtype=torch.float32).reshape(-1),
            "samples": samples,
        }

    def _aux_labels(self, video: str, out: Any) -> torch.Tensor | None:
        from sift.layout import build_layout
        from sift.testbed.synthav import COLORS, FPS, SOUNDS, cell_labels, sound_label, spec_for_video

        spec = spec_for_video(video)
        if spec is None:
            return None
        layout = build_layout(
            out["input_ids"],
            self.config,
            video_grid_thw=out["video_grid_thw"],
            video_second_per_grid=out["video_second_per_grid"],
            feature_attention_mask=out["feature_attention_mask"],
            use_audio_in_video=True,
        )
        aux = torch.full((AUX_TASKS, out["input_ids"].shape[1]), -100, dtype=torch.long)
        first = spec.events[0]
        per_token_s = 1.0 / 25  # Qwen2.5-Omni: 25 audio tokens per second
        grids: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for window in layout.rows[0].windows:
            for frame in window.frames:
                rows, cols = frame.grid
                if frame.t not in grids:
                    # a token covers frames 2t and 2t+1 (temporal patch 2): label a cell if either shows a shape
                    a = cell_labels(spec, 2 * frame.t / FPS, rows, cols)
                    b = cell_labels(spec, (2 * frame.t + 1) / FPS, rows, cols)
                    grids[frame.t] = (np.maximum(a[0], b[0]), np.maximum(a[1], b[1]))
                color, shape = grids[frame.t]
                h, w = frame.hw[:, 0].numpy(), frame.hw[:, 1].numpy()
                aux[0, frame.positions] = torch.from_numpy(color[h, w])
                aux[1, frame.positions] = torch.from_numpy(shape[h, w])
                first_color = list(COLORS).index(first.color) + 1
                aux[3, frame.positions] = torch.from_numpy((color[h, w] == first_color).astype(np.int64))
            for k, pos in enumerate(window.audio.tolist()):
                t0 = (window.audio_offset + k) * per_token_s
                sound = sound_label(spec, t0, t0 + per_token_s)
                aux[2, pos] = sound
                aux[3, pos] = int(sound == SOUNDS.index(first.sound) + 1)
                on_screen = [e for e in spec.events if e.start <= t0 < e.end]
                aux[4, pos] = list(COLORS).index(on_screen[0].color) + 1 if on_screen else 0
        return aux

    def __len__(self) -> int:
        return len(self.clips)

    def _turn(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def caption(self, index: int) -> str | None:
        """The clip's SynthAV caption, if its manifest records carry one."""
        return next((self.captions[s.id] for s in self.clips[index]["samples"] if s.id in self.captions), None)

    def item(self, index: int, turns: list | None = None, *, train: bool = True) -> dict[str, Any]:
        """Clip ``index`` followed by chat ``turns``: its samples (questions) and/or :data:`CAPTION_TURN`.

        Default turns: all of the clip's questions. ``train``: every turn is followed by its answer (the
        option letter, or the caption) and ``labels`` mark each answer and its ``<|im_end|>``. Otherwise
        the sequence ends with the generation prompt after the first turn (what ``sift eval`` feeds).
        """
        from sift.manifest import build_prompt
        from sift.testbed.processing import video_size
        from sift.testbed.synthav import CAPTION_PROMPT

        c = self.clips[index]
        turns = list(c["samples"] if turns is None else turns)
        first = next((t for t in turns if t is not CAPTION_TURN), c["samples"][0])
        ids = c["prefix"].tolist()
        labels = [-100] * len(ids)
        for k, turn in enumerate(turns):
            if turn is CAPTION_TURN:
                prompt, answer = CAPTION_PROMPT, self.caption(index)
                if answer is None:
                    raise ValueError(f"{c['video']}: no caption in the manifest")
            else:
                prompt, answer = build_prompt(turn), turn.answer
            head = ("" if k == 0 else "<|im_start|>user\n") + prompt + f"{_END}\n<|im_start|>assistant\n"
            t = self._turn(head)
            ids += t
            labels += [-100] * len(t)
            if not train:
                break
            a = self._turn(answer + _END)
            ids += a
            labels += a
            nl = self._turn("\n")
            ids += nl
            labels += [-100] * len(nl)
        pix = self.processor.video_processor(
            videos=[c["frames"]], return_tensors="pt", do_sample_frames=False, size=video_size(self.processor)
        )["pixel_values_videos"]
        item: dict[str, Any] = {
            "input_ids": torch.tensor(ids),
            "attention_mask": torch.ones(len(ids), dtype=torch.long),
            "pixel_values_videos": pix,
            "video_grid_thw": c["grid"],
            "video_second_per_grid": c["spg"],
            "input_features": c["features"],
            "feature_attention_mask": torch.ones(c["features"].shape[-1], dtype=torch.long),
            "use_audio_in_video": True,
            "answer": first.answer,
            "category": first.category,
            "num_options": first.num_options,
            "id": first.id,
        }
        if train:
            item["labels"] = torch.tensor(labels)
            if c["aux"] is not None:
                aux = torch.full((AUX_TASKS, len(ids)), -100, dtype=torch.long)
                aux[:, : c["aux"].shape[1]] = c["aux"]
                item["aux"] = aux
        return item


# ------------------------------------------------------------------------------------------------ loop


@torch.no_grad()
def evaluate(model: torch.nn.Module, cache: ClipCache, *, batch_size: int = 8, progress: bool = False) -> dict[str, Any]:
    """Single-question accuracy (greedy first token, as ``generate`` would pick it), overall and per category."""
    from tqdm import tqdm

    from sift.manifest import extract_letter
    from train.data import collate

    tok = cache.tokenizer
    model.eval()
    jobs = [(i, s) for i in range(len(cache)) for s in cache.clips[i]["samples"]]
    correct: dict[str, list[int]] = defaultdict(list)
    for start in tqdm(range(0, len(jobs), batch_size), desc="evaluating", disable=not progress):
        chunk = jobs[start : start + batch_size]
        batch = collate([cache.item(i, [s], train=False) for i, s in chunk], tok.pad_token_id)
        logits = model(**{k: batch[k] for k in hf.THINKER_INPUT_KEYS}).logits[:, -1]
        for (_, s), tid in zip(chunk, logits.argmax(-1).tolist()):
            ok = extract_letter(tok.decode([tid]), s.num_options) == s.answer
            correct[s.category or "all"].append(int(ok))
    every = [x for v in correct.values() for x in v]
    return {
        "accuracy": float(np.mean(every)),
        "n": len(every),
        "per_category": {k: float(np.mean(v)) for k, v in sorted(correct.items())},
    }


class AuxHeads(torch.nn.Module):
    """Training-only linear probes on media tokens (not saved with the model).

    A model trained from scratch otherwise learns perception and the benchmark's temporal reasoning only
    through one answer letter per question, spread by attention over ~800 media tokens, which takes far
    longer than a CPU budget allows. These per-token labels come from the generator (as real omni-models
    start from pretrained encoders and dense pretraining): perception (cell color / shape, sound) from the
    encoders' output and from the LLM's middle and last hidden states; reasoning (is this token part of
    the first event; for audio tokens, the color on screen now) from the LLM's middle and last states,
    which it can compute causally (an audio token sees its window's video). The answer then only has
    to read flagged tokens.
    """

    def __init__(self, hidden: int):
        super().__init__()
        self.inputs = torch.nn.ModuleList(torch.nn.Linear(hidden, 5) for _ in _PERCEPTION)
        self.middle = torch.nn.ModuleList(torch.nn.Linear(hidden, 5) for _ in range(AUX_TASKS))
        self.outputs = torch.nn.ModuleList(torch.nn.Linear(hidden, 5) for _ in range(AUX_TASKS))

    def loss(self, embeds: torch.Tensor, middle: torch.Tensor, last: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``labels``: (B, AUX_TASKS, L) with -100 where a token has no label of that kind."""
        total = embeds.new_zeros(())
        for k in range(AUX_TASKS):
            target = labels[:, k]
            if not (target != -100).any():
                continue
            probes = [(self.middle[k], middle), (self.outputs[k], last)]
            if k in _PERCEPTION:
                probes.append((self.inputs[k], embeds))
            for head, h in probes:
                total = total + torch.nn.functional.cross_entropy(
                    head(h).flatten(0, 1), target.flatten(), ignore_index=-100
                )
        return total


def _lr_lambda(cfg: TinyOmniConfig, total: int):
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


def ensure_data(cfg: TinyOmniConfig) -> dict[str, Path]:
    """The SynthAV manifests under ``cfg.data_dir``, generated (resumably) when missing."""
    from sift.testbed.synthav import generate

    from sift.testbed.synthav import read_settings

    root = Path(cfg.data_dir)
    settings = read_settings(root)
    if settings is not None and settings["version"] != cfg.synthav_version:
        raise ValueError(
            f"{root} holds SynthAV version {settings['version']} clips but synthav_version={cfg.synthav_version}"
        )
    wanted = {"train": cfg.train_clips, "validation": cfg.validation_clips, "test": cfg.test_clips}
    paths = {k: root / f"{k}.jsonl" for k in wanted}
    missing = {k: n for k, n in wanted.items() if n > 0 and not paths[k].is_file()}
    if missing:
        generate(
            root,
            missing,
            seed=cfg.data_seed,
            min_seconds=cfg.min_seconds,
            max_seconds=cfg.max_seconds,
            version=cfg.synthav_version,
        )
    return {k: p for k, p in paths.items() if p.is_file()}


def train(cfg: TinyOmniConfig, *, max_steps: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Generate/cache data, train, evaluate on test and save the checkpoint folder; returns the metrics."""
    from tqdm import tqdm

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    manifests = ensure_data(cfg)
    model, processor = _model_and_processor(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"tiny-omni: {n_params / 1e6:.2f}M parameters", flush=True)
    train_cache = ClipCache(
        manifests["train"], processor, config=model.config if cfg.aux_weight > 0 else None, progress=progress
    )
    val_cache = ClipCache(manifests["validation"], processor, progress=progress) if "validation" in manifests else None
    steps_per_epoch = math.ceil(len(train_cache) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs if max_steps is None else int(max_steps)
    aux_heads = AuxHeads(model.config.get_text_config().hidden_size)
    captured: dict[str, torch.Tensor] = {}

    def capture_inputs(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        captured["embeds"] = kwargs["inputs_embeds"]

    hook = adapter_for(model).language_model(model).register_forward_pre_hook(capture_inputs, with_kwargs=True)
    opt, sched = _optimizer(cfg, model, aux_heads, total)
    rng = random.Random(cfg.seed)
    history: list[dict[str, Any]] = []
    step, start = 0, time.time()
    bar = tqdm(total=total, desc="training tiny-omni", unit="step", disable=not progress)
    while step < total:
        order = list(range(len(train_cache)))
        rng.shuffle(order)
        for b in range(0, len(order), cfg.batch_size):
            if step >= total:
                break
            items = _batch_items(train_cache, order[b : b + cfg.batch_size], cfg, rng)
            record = _train_step(cfg, model, aux_heads, items, processor.tokenizer.pad_token_id, captured, opt, sched)
            step += 1
            record = {"step": step, **record}
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in record.items() if k.endswith("loss")})
            if val_cache is not None and (step % cfg.eval_every == 0 or step == total):
                metrics = evaluate(model, val_cache, batch_size=cfg.batch_size)
                record["val"] = metrics
                bar.write(f"step {step}: val accuracy {metrics['accuracy']:.3f} {metrics['per_category']}")
            history.append(record)
    bar.close()
    hook.remove()
    minutes = (time.time() - start) / 60
    test = None
    if "test" in manifests:
        test_cache = ClipCache(manifests["test"], processor, progress=progress)
        test = evaluate(model, test_cache, batch_size=cfg.batch_size, progress=progress)
        print(f"test accuracy {test['accuracy']:.3f} on {test['n']} questions: {test['per_category']}", flush=True)
    result = {
        "parameters": n_params,
        "steps": step,
        "epochs": step / steps_per_epoch,
        "train_clips": len(train_cache),
        "train_minutes": minutes,
        "test": test,
        "config": asdict(cfg),
    }
    save(model, processor, cfg, result, history)
    return result


def _model_and_processor(cfg: TinyOmniConfig) -> tuple[torch.nn.Module, Any]:
    """A fresh model with a tokenizer trained on SynthAV's words, or `init_from`'s model and processor."""
    from sift.testbed.synthav import configure_processor, read_settings

    if cfg.init_from:  # keep the saved tokenizer: token ids must match the saved embeddings
        from transformers import Qwen2_5OmniProcessor

        processor = Qwen2_5OmniProcessor.from_pretrained(cfg.init_from)
        tok = processor.tokenizer
    else:
        tok, processor = build_tokenizer_and_processor(cfg.synthav_version)
    # version 2 frames need a larger per-frame pixel budget; save_pretrained records it with the processor
    configure_processor(processor, read_settings(cfg.data_dir))
    model = build_model(cfg, tok)
    if cfg.init_from:
        from transformers import Qwen2_5OmniThinkerForConditionalGeneration

        saved = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(cfg.init_from, attn_implementation="sdpa")
        if saved.state_dict().keys() != model.state_dict().keys() or any(
            saved.state_dict()[k].shape != v.shape for k, v in model.state_dict().items()
        ):
            raise ValueError(f"init_from={cfg.init_from}: its dimensions do not match this config")
        model = saved
        print(f"tiny-omni: continuing from {cfg.init_from}", flush=True)
    return model, processor


def _optimizer(cfg: TinyOmniConfig, model: torch.nn.Module, aux_heads: torch.nn.Module, total: int) -> tuple[Any, Any]:
    """AdamW without weight decay on norms and biases, and the warmup + cosine schedule over `total` steps."""
    decay, no_decay = [], []
    for name, p in list(model.named_parameters()) + list(aux_heads.named_parameters(prefix="aux")):
        (no_decay if p.ndim < 2 or "norm" in name else decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr
    )
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg, total))


def _batch_items(cache: ClipCache, clips: list[int], cfg: TinyOmniConfig, rng: random.Random) -> list[dict[str, Any]]:
    """One training item per clip: its questions shuffled, sometimes one only, sometimes with the caption turn."""
    items = []
    for i in clips:
        turns: list = list(cache.clips[i]["samples"])
        rng.shuffle(turns)
        if rng.random() < cfg.single_question_prob:
            turns = turns[:1]
        elif cache.caption(i) is not None and rng.random() < cfg.caption_prob:
            turns.insert(rng.randrange(len(turns) + 1), CAPTION_TURN)
        items.append(cache.item(i, turns, train=True))
    return items


def _train_step(cfg, model, aux_heads, items, pad_id: int, captured: dict, opt, sched) -> dict[str, Any]:
    """Forward (with the auxiliary per-token heads when every item has their labels), backward, step."""
    from train.data import collate

    batch = collate(items, pad_id)
    model.train()
    use_aux = cfg.aux_weight > 0 and all("aux" in it for it in items)
    out = model(**{k: batch[k] for k in hf.THINKER_INPUT_KEYS}, labels=batch["labels"], output_hidden_states=use_aux)
    loss = out.loss
    aux_loss = None
    if use_aux:
        length = batch["input_ids"].shape[1]
        aux = torch.full((len(items), AUX_TASKS, length), -100, dtype=torch.long)
        for r, it in enumerate(items):  # left padding, as collate pads input_ids
            aux[r, :, length - it["aux"].shape[1] :] = it["aux"]
        hs = out.hidden_states
        aux_loss = aux_heads.loss(captured.pop("embeds"), hs[len(hs) // 2], hs[-1], aux)
        loss = loss + cfg.aux_weight * aux_loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(list(model.parameters()) + list(aux_heads.parameters()), cfg.grad_clip)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    record: dict[str, Any] = {"loss": float(out.loss.item()), "lr": sched.get_last_lr()[0]}
    if aux_loss is not None:
        record["aux_loss"] = float(aux_loss.item())
    return record


def save(model: torch.nn.Module, processor: Any, cfg: TinyOmniConfig, result: dict[str, Any], history: list) -> Path:
    """``save_pretrained`` model + processor (tokenizer included), metrics and a model card."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "training.json").write_text(json.dumps({**result, "history": history}, indent=1) + "\n")
    (out / "README.md").write_text(model_card(result))
    return out


def model_card(result: dict[str, Any]) -> str:
    from sift.testbed.synthav import DEFAULT_SIZE

    cfg = result["config"]
    test = result.get("test") or {}
    rows = "\n".join(f"| {k} | {v * 100:.1f} |" for k, v in (test.get("per_category") or {}).items())
    version = int(cfg.get("synthav_version", 1))
    side = DEFAULT_SIZE[version]
    how = f"continued from `{cfg['init_from']}` (see its training.json)" if cfg.get("init_from") else "from scratch"
    return f"""# tiny-omni{'' if version == 1 else f' (SynthAV v{version})'}

A {result['parameters'] / 1e6:.2f}M-parameter `Qwen2_5OmniThinkerForConditionalGeneration` (the real transformers
class) trained on SynthAV version {version} (`sift.testbed.synthav`) by `python -m train tiny-omni`, {how}.
It exists so that sift's demo, tests and selector training have a model that actually uses its audio and video
tokens, on a machine that cannot download Qwen2.5-Omni. It knows nothing but SynthAV.

- Text model: hidden {cfg['hidden_size']}, {cfg['num_layers']} layers, MLP {cfg['intermediate_size']}; audio encoder
  {cfg['audio']}; vision encoder {cfg['vision']}. Tokenizer: byte-level BPE trained offline on SynthAV's
  vocabulary with Qwen2.5-Omni's special tokens and chat template. Processor: the real `Qwen2_5OmniProcessor`
  ({side}x{side} frames at 2 fps: {(side // 28) ** 2} video tokens per second; 25 audio tokens per second).
- Data: SynthAV seed {cfg['data_seed']}, {result['train_clips']} training clips of {cfg['min_seconds']}-{cfg['max_seconds']} s
  (3 questions each, asked as consecutive chat turns).
- Training: {result['steps']} steps ({result['epochs']:.1f} epochs) of {cfg['batch_size']} clips, AdamW lr {cfg['lr']}
  cosine, {result['train_minutes']:.1f} min on CPU. Loss: cross-entropy on every answer and caption
  token, plus {cfg['aux_weight']} x per-token probes (training only, see `train/tiny_omni.py::AuxHeads`).

## Accuracy on SynthAV test (all tokens, greedy)

{test.get('n', 0)} questions, overall **{test.get('accuracy', float('nan')) * 100:.1f}%** (chance 25%).

| category | accuracy (%) |
| --- | --- |
{rows}

Load it like any checkpoint:

```python
from transformers import Qwen2_5OmniProcessor, Qwen2_5OmniThinkerForConditionalGeneration
model = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained("{cfg['out_dir']}")
processor = Qwen2_5OmniProcessor.from_pretrained("{cfg['out_dir']}")
```
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train tiny-omni", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/tiny-omni.yaml", help="YAML file of TinyOmniConfig fields")
    parser.add_argument("--data-dir", help="SynthAV folder (overrides the config)")
    parser.add_argument("--out-dir", help="checkpoint folder to write (overrides the config)")
    parser.add_argument("--epochs", type=int, help="overrides the config")
    parser.add_argument("--train-clips", type=int, help="overrides the config")
    parser.add_argument("--max-steps", type=int, help="stop after this many steps (smoke runs)")
    parser.add_argument("--init-from", help="continue from a saved tiny-omni folder (overrides the config)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_config(
        args.config,
        {"data_dir": args.data_dir, "out_dir": args.out_dir, "epochs": args.epochs, "train_clips": args.train_clips,
         "init_from": args.init_from},
    )
    result = train(cfg, max_steps=args.max_steps)
    print(f"saved tiny-omni to {cfg.out_dir} ({result['steps']} steps, {result['train_minutes']:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
