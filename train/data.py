"""Audio-visual multiple-choice QA data for training and evaluating on Qwen2.5-Omni.

Pieces, from files to batches:

- :func:`read_manifest` reads a JSON (a list of records) or JSONL manifest into :class:`AVQASample` s
  (generic, Daily-Omni and WorldSense schemas), and :func:`build_prompt` renders the question and lettered
  options in the reference evaluation style. Both live in :mod:`sift.manifest` (the library does not
  import this training application) and are re-exported here; see that module for the record schemas.
- :class:`AVQADataset` decodes a clip with :func:`sift.testbed.media.load_clip` and runs the real
  ``Qwen2_5OmniProcessor`` on frames + waveform. ``train=True`` appends ``"<letter><|im_end|>"`` as the
  assistant turn and sets ``labels`` on exactly those tokens; ``train=False`` ends with the generation
  prompt. Unreadable items (missing/corrupt file, no audio when audio is required) become ``None`` with a
  rate-limited warning.
- :func:`collate` left-pads a list of items into a batch (dropping and counting ``None`` items).
- :class:`ResumableSampler` / :class:`ResumableDataLoader`: the training order (a seeded permutation per
  epoch, each rank its shard) and the position in it, saved in checkpoints, so that a run resumed
  mid-epoch continues with exactly the batches the uninterrupted run would have seen.
- :class:`AVQADataModule` ties it together for Lightning (and ``LightningCLI`` YAML configs).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict
from functools import partial
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

import lightning as L

from sift.manifest import ANSWER_INSTRUCTION, SCHEMAS, AVQASample, build_prompt, read_manifest
from sift.testbed.catalog import TINY_MODELS, tiny_processor_named

__all__ = [
    "SCHEMAS",
    "IGNORE_INDEX",
    "ANSWER_INSTRUCTION",
    "AVQASample",
    "read_manifest",
    "build_prompt",
    "AVQADataset",
    "collate",
    "ResumableSampler",
    "ResumableDataLoader",
    "AVQADataModule",
]

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100

#: Qwen's end-of-turn token, the last supervised token of a training target.
END_OF_TURN = "<|im_end|>"


# --------------------------------------------------------------------------------------------- dataset


class _RateLimitedWarner:
    """Log the first ``first`` messages, then one in every ``every`` (with the running count)."""

    def __init__(self, first: int = 10, every: int = 100):
        self.first, self.every, self.count = first, every, 0

    def __call__(self, msg: str) -> None:
        self.count += 1
        if self.count <= self.first:
            suffix = " (further skip warnings are rate-limited)" if self.count == self.first else ""
            logger.warning("%s%s", msg, suffix)
        elif self.count % self.every == 0:
            logger.warning("%s [%d items skipped so far in this process]", msg, self.count)


class AVQADataset(torch.utils.data.Dataset):
    """Decoded and processed audio-visual MCQ items for a Qwen2.5-Omni thinker.

    The sample metadata is kept in a Hugging Face ``datasets.Dataset`` (:attr:`data`). ``__getitem__``
    decodes the video with :func:`sift.testbed.media.load_clip` (``fps``, square ``frame_size`` resize,
    ``max_frames``) and runs ``processor`` (a real ``Qwen2_5OmniProcessor``) on the frames and, with
    ``use_audio_in_video``, the 16 kHz waveform as the video's own audio track.

    Each item is a dict of unbatched tensors: ``input_ids`` / ``attention_mask`` (L,), ``labels`` (L,;
    train only: ``-100`` except the answer letter and ``<|im_end|>``), ``pixel_values_videos``
    (patches, dim), ``video_grid_thw`` (1, 3), ``video_second_per_grid`` (1,), and with audio
    ``input_features`` (mel, frames) / ``feature_attention_mask`` (frames,) trimmed to the clip's own
    audio length; plus ``use_audio_in_video`` and the metadata ``id``, ``answer``, ``category``,
    ``num_options``. An item that cannot be used (missing or corrupt file, no audio track while
    ``use_audio_in_video``, a processing failure) is ``None``; a warning with the id and the reason is
    logged (rate-limited) and the reason is kept in :attr:`skip_reasons` (per process).
    """

    def __init__(
        self,
        samples: Sequence[AVQASample],
        processor: Any,
        *,
        train: bool = True,
        fps: float = 2.0,
        frame_size: int | None = None,
        max_pixels: int | None = None,
        max_frames: int | None = None,
        use_audio_in_video: bool = True,
        system_prompt: str | None = None,
    ):
        import datasets

        self.data = datasets.Dataset.from_list([asdict(s) for s in samples])
        self.processor = processor
        self.train = bool(train)
        self.fps = float(fps)
        self.frame_size = frame_size
        self.max_pixels = max_pixels
        self.max_frames = max_frames
        self.use_audio_in_video = bool(use_audio_in_video)
        self.system_prompt = system_prompt
        self.skip_reasons: dict[str, str] = {}
        self._warn = _RateLimitedWarner()
        tok = processor.tokenizer
        self._end_id = tok.convert_tokens_to_ids(END_OF_TURN)
        if self._end_id is None or self._end_id == tok.unk_token_id:
            raise ValueError(f"the processor's tokenizer has no {END_OF_TURN} token")

    def __len__(self) -> int:
        return len(self.data)

    def sample(self, idx: int) -> AVQASample:
        return AVQASample(**self.data[int(idx)])

    # -- pieces

    def _video_size(self) -> dict[str, int] | None:
        from sift.testbed.processing import video_size

        return video_size(self.processor, self.max_pixels)

    def chat_text(self, sample: AVQASample) -> str:
        """The rendered chat: user turn ``<video><prompt>``, generation prompt, and (train) the answer."""
        messages: list[dict] = []
        if self.system_prompt is not None:
            messages.append({"role": "system", "content": [{"type": "text", "text": self.system_prompt}]})
        messages.append({"role": "user", "content": [{"type": "video"}, {"type": "text", "text": build_prompt(sample)}]})
        renderer = self.processor if getattr(self.processor, "chat_template", None) else self.processor.tokenizer
        text = renderer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if self.train:
            text += sample.answer + END_OF_TURN
        return text

    def _skip(self, sample_id: str, reason: str) -> None:
        self.skip_reasons[sample_id] = reason
        self._warn(f"skipping sample {sample_id!r}: {reason}")

    def __getitem__(self, idx: int) -> dict[str, Any] | None:
        from sift.testbed.media import load_clip

        sample = self.sample(idx)
        size = None if self.frame_size is None else (int(self.frame_size), int(self.frame_size))
        try:
            clip = load_clip(sample.video, fps=self.fps, size=size, max_frames=self.max_frames)
        except FileNotFoundError:
            self._skip(sample.id, f"video file not found: {sample.video}")
            return None
        except Exception as e:  # corrupt / undecodable / no video stream
            self._skip(sample.id, f"cannot decode video {sample.video}: {e}")
            return None
        if self.use_audio_in_video and (clip.audio is None or len(clip.audio) == 0):
            self._skip(sample.id, f"video has no audio track but use_audio_in_video=True: {sample.video}")
            return None
        try:
            item = self._process(sample, clip)
        except Exception as e:
            self._skip(sample.id, f"processing failed: {type(e).__name__}: {e}")
            return None
        return item

    def _process(self, sample: AVQASample, clip: Any) -> dict[str, Any]:
        kwargs: dict[str, Any] = dict(
            text=[self.chat_text(sample)],
            videos=[np.ascontiguousarray(clip.frames, dtype=np.uint8)],
            return_tensors="pt",
            padding=False,
            videos_kwargs=dict(fps=clip.fps, do_sample_frames=False, size=self._video_size()),
        )
        if self.use_audio_in_video:
            from sift.testbed.processing import audio_kwargs

            audio = [np.asarray(clip.audio, dtype=np.float32)]
            kwargs.update(
                audio=audio,
                load_audio_from_video=True,
                audio_from_video_indices=[0],
                audio_kwargs=audio_kwargs(self.processor, audio),
            )
        out = self.processor(**kwargs)
        input_ids = out["input_ids"][0]
        item: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": out["attention_mask"][0],
            "pixel_values_videos": out["pixel_values_videos"],
            "video_grid_thw": out["video_grid_thw"],
            "video_second_per_grid": torch.as_tensor(out["video_second_per_grid"], dtype=torch.float32).reshape(-1),
        }
        if self.use_audio_in_video:
            mask = out["feature_attention_mask"][0]
            valid = int(mask.sum())  # the processor pads to its max length; keep the clip's own frames
            item["input_features"] = out["input_features"][0, :, :valid]
            item["feature_attention_mask"] = mask[:valid]
        if self.train:
            target = self.processor.tokenizer(sample.answer + END_OF_TURN, add_special_tokens=False)["input_ids"]
            n = len(target)
            if input_ids[-n:].tolist() != list(target) or target[-1] != self._end_id:
                raise RuntimeError(
                    f"answer tokens {target} are not the end of the processed sequence "
                    f"{input_ids[-n:].tolist()} (tokenizer merges across the assistant prompt?)"
                )
            labels = torch.full_like(input_ids, IGNORE_INDEX)
            labels[-n:] = input_ids[-n:]
            item["labels"] = labels
        item["use_audio_in_video"] = self.use_audio_in_video
        item["id"] = sample.id
        item["answer"] = sample.answer
        item["category"] = sample.category
        item["num_options"] = sample.num_options
        return item


# --------------------------------------------------------------------------------------------- collate


def _left_pad(seqs: list[torch.Tensor], value: int) -> torch.Tensor:
    length = max(int(s.shape[0]) for s in seqs)
    out = seqs[0].new_full((len(seqs), length), value)
    for i, s in enumerate(seqs):
        if s.shape[0]:
            out[i, length - s.shape[0] :] = s
    return out


def _right_pad_time(tensors: list[torch.Tensor], value: float = 0) -> torch.Tensor:
    """Stack (..., T_i) tensors into (B, ..., max T), padding at the end of the last dim."""
    length = max(int(t.shape[-1]) for t in tensors)
    out = tensors[0].new_full((len(tensors), *tensors[0].shape[:-1], length), value)
    for i, t in enumerate(tensors):
        out[i, ..., : t.shape[-1]] = t
    return out


def collate(items: Sequence[dict[str, Any] | None], pad_token_id: int) -> dict[str, Any]:
    """Batch :class:`AVQADataset` items; ``None`` items are dropped and counted in ``"skipped"``.

    ``input_ids`` / ``attention_mask`` / ``labels`` are left-padded (``pad_token_id`` / 0 / -100);
    ``pixel_values_videos``, ``video_grid_thw`` and ``video_second_per_grid`` are concatenated along dim
    0; ``input_features`` (B, mel, T) and ``feature_attention_mask`` (B, T) are stacked, zero-padded at
    the end to the longest audio. Also ``use_audio_in_video`` (bool) and the lists ``answer``,
    ``category``, ``num_options`` and ``id``. If every item was skipped, returns
    ``{"skipped": n, "empty": True}``.
    """
    kept = [it for it in items if it is not None]
    skipped = len(items) - len(kept)
    if not kept:
        return {"skipped": skipped, "empty": True}
    flags = {bool(it.get("use_audio_in_video", False)) for it in kept}
    if len(flags) > 1:
        raise ValueError("cannot batch items with different use_audio_in_video")
    batch: dict[str, Any] = {
        "input_ids": _left_pad([it["input_ids"] for it in kept], int(pad_token_id)),
        "attention_mask": _left_pad([it["attention_mask"] for it in kept], 0),
    }
    if all("labels" in it for it in kept):
        batch["labels"] = _left_pad([it["labels"] for it in kept], IGNORE_INDEX)
    elif any("labels" in it for it in kept):
        raise ValueError("cannot batch training items (with labels) with evaluation items")
    for key in ("pixel_values_videos", "video_grid_thw", "video_second_per_grid"):
        if any(key in it for it in kept):
            batch[key] = torch.cat([it[key] for it in kept], dim=0)
    has_audio = ["input_features" in it for it in kept]
    if any(has_audio):
        if not all(has_audio):
            raise ValueError("cannot batch items with and without audio features")
        batch["input_features"] = _right_pad_time([it["input_features"] for it in kept], 0.0)
        batch["feature_attention_mask"] = _right_pad_time([it["feature_attention_mask"] for it in kept], 0)
    batch["use_audio_in_video"] = flags.pop()
    batch["answer"] = [it["answer"] for it in kept]
    batch["category"] = [it["category"] for it in kept]
    batch["num_options"] = [int(it["num_options"]) for it in kept]
    batch["id"] = [it["id"] for it in kept]
    batch["skipped"] = skipped
    return batch


# --------------------------------------------------------------------------------------------- resumable order


class ResumableSampler(DistributedSampler):
    """This rank's shard of a permutation seeded by (``seed``, epoch), able to begin part-way into an epoch.

    The order is torch's :class:`~torch.utils.data.DistributedSampler` (the sampler Lightning injected for
    DDP before), also with one process, so it depends only on the seed and the epoch, never on the global
    RNG: a restarted process can rebuild it. :attr:`start` (set by :class:`ResumableDataLoader` when it
    resumes) leaves out that many samples of the next iteration only.
    """

    def __init__(self, dataset: Any, *, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.start = 0

    def __iter__(self) -> Iterator[int]:
        start, self.start = self.start, 0
        indices = list(super().__iter__())  # reads self.epoch now, i.e. after Lightning's set_epoch
        return iter(indices[start:])


class ResumableDataLoader(DataLoader):
    """A :class:`DataLoader` over a :class:`ResumableSampler` that knows where it is in the epoch.

    Lightning saves ``state_dict()`` of a training loader that has one in the checkpoint (and then no
    longer warns that the loader is not resumable); ``load_state_dict()`` makes the next iteration of the
    saved epoch skip the batches already trained on (indices only: skipped items are not decoded). The
    position counts batches handed to the training loop, not the ones workers prefetched. The iterator
    starts lazily, at the first batch, so that the resume and Lightning's ``set_epoch`` (called after
    ``iter()``) are both applied before any index is drawn.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._epoch = int(getattr(self.sampler, "epoch", 0))
        self._batches = 0
        self._resume: tuple[int, int] | None = None

    def state_dict(self) -> dict[str, int]:
        """Plain ints (checkpoints load with ``weights_only=True``): the order's seed and the position in it."""
        sampler = self.sampler
        if not isinstance(sampler, ResumableSampler):
            return {}
        return {"seed": int(sampler.seed), "epoch": self._epoch, "batches": self._batches, "num_replicas": sampler.num_replicas}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Continue the saved epoch after its saved batches (the saved seed wins: same order as before)."""
        sampler = self.sampler
        if not state_dict:
            return
        if not isinstance(sampler, ResumableSampler):
            logger.warning("cannot resume mid-epoch with sampler %s: the epoch starts over", type(sampler).__name__)
            return
        saved_replicas = int(state_dict.get("num_replicas", sampler.num_replicas))
        if saved_replicas != sampler.num_replicas:
            logger.warning(
                "resuming on %d ranks a run saved on %d: the rest of this epoch is split differently",
                sampler.num_replicas,
                saved_replicas,
            )
        sampler.seed = int(state_dict["seed"])
        sampler.set_epoch(int(state_dict["epoch"]))  # for eager iterators; Lightning sets the epoch again
        self._resume = (int(state_dict["epoch"]), int(state_dict["batches"]))

    def __iter__(self) -> Iterator[Any]:
        return self._counted()

    def _counted(self) -> Iterator[Any]:
        self._begin()
        for batch in super().__iter__():
            self._batches += 1
            yield batch

    def _begin(self) -> None:
        """Start this iteration after the saved batches if it is the saved, unfinished epoch; else at 0."""
        sampler = self.sampler
        epoch = int(getattr(sampler, "epoch", 0))
        skip = 0
        if self._resume is not None:
            saved_epoch, saved_batches = self._resume
            self._resume = None
            if saved_epoch == epoch and saved_batches < len(self):  # a finished epoch resumes at the next one
                skip = saved_batches
        if skip and isinstance(sampler, ResumableSampler):
            sampler.start = skip * int(self.batch_size or 1)
        self._epoch, self._batches = epoch, skip


# --------------------------------------------------------------------------------------------- datamodule


class AVQADataModule(L.LightningDataModule):
    """Lightning data module for audio-visual MCQ manifests (see :func:`read_manifest`).

    Args:
        train_manifest: JSON/JSONL manifest for training (``None``: no training data).
        val_manifest: manifest for validation (``None``: no validation).
        schema: ``"auto"``, ``"generic"``, ``"dailyomni"`` or ``"worldsense"``.
        video_root: folder that relative video paths / video ids resolve against (default: each
            manifest's folder).
        processor: ``"tiny"`` / ``"tiny-qwen3"`` for a tiny model's processor (`sift.testbed.catalog`, offline
            tests), else a path or hub name for ``AutoProcessor.from_pretrained`` (Qwen2.5-Omni or Qwen3-Omni).
        fps: frame sampling rate.
        frame_size: square resize of decoded frames (e.g. 112 for the tiny processor); ``None`` keeps
            the decoded size and lets the processor apply its own pixel budget.
        max_pixels: per-frame pixel budget override for the video processor.
        max_frames: cap on decoded frames (the audio is cut to the same span).
        use_audio_in_video: feed the video's audio track (videos without audio are then skipped).
        batch_size: items per batch.
        num_workers: data loader workers.
        val_limit: keep only the first ``val_limit`` validation samples.
        system_prompt: optional system turn (``None``: the chat template's default).

    The training order is a :class:`ResumableSampler` (seed: ``seed_everything``'s, each rank its shard)
    and its position is saved in every checkpoint, so ``--ckpt_path last`` continues mid-epoch with the
    batches the uninterrupted run would have seen.
    """

    def __init__(
        self,
        train_manifest: str | None = None,
        val_manifest: str | None = None,
        schema: str = "auto",
        video_root: str | None = None,
        processor: str = "tiny",
        fps: float = 2.0,
        frame_size: int | None = None,
        max_pixels: int | None = None,
        max_frames: int | None = None,
        use_audio_in_video: bool = True,
        batch_size: int = 1,
        num_workers: int = 0,
        val_limit: int | None = None,
        system_prompt: str | None = None,
    ):
        super().__init__()
        if schema != "auto" and schema not in SCHEMAS:
            raise ValueError(f"unknown schema {schema!r}; expected 'auto' or one of {SCHEMAS}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.save_hyperparameters()
        self.train_manifest = train_manifest
        self.val_manifest = val_manifest
        self.schema = schema
        self.video_root = video_root
        self.processor_name = processor
        self.fps = fps
        self.frame_size = frame_size
        self.max_pixels = max_pixels
        self.max_frames = max_frames
        self.use_audio_in_video = use_audio_in_video
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_limit = val_limit
        self.system_prompt = system_prompt
        self._processor: Any = None
        self.train_dataset: AVQADataset | None = None
        self.val_dataset: AVQADataset | None = None
        self._train_loader: ResumableDataLoader | None = None
        self._train_loader_state: dict[str, Any] = {}  # restored from a checkpoint, for the next train loader

    @property
    def processor(self) -> Any:
        """The ``Qwen2_5OmniProcessor`` (built on first use)."""
        if self._processor is None:
            if self.processor_name in TINY_MODELS:
                self._processor = tiny_processor_named(self.processor_name)
            else:
                from transformers import AutoProcessor

                self._processor = AutoProcessor.from_pretrained(self.processor_name)
        return self._processor

    @property
    def pad_token_id(self) -> int:
        tok = self.processor.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        if pad is None:
            raise ValueError("the tokenizer has neither a pad nor an eos token")
        return int(pad)

    def _dataset(self, manifest: str, *, train: bool, limit: int | None = None) -> AVQADataset:
        samples = read_manifest(manifest, schema=self.schema, video_root=self.video_root)
        if limit is not None:
            samples = samples[: max(0, int(limit))]
        return AVQADataset(
            samples,
            self.processor,
            train=train,
            fps=self.fps,
            frame_size=self.frame_size,
            max_pixels=self.max_pixels,
            max_frames=self.max_frames,
            use_audio_in_video=self.use_audio_in_video,
            system_prompt=self.system_prompt,
        )

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_manifest and self.train_dataset is None:
            self.train_dataset = self._dataset(self.train_manifest, train=True)
        if stage in (None, "fit", "validate") and self.val_manifest and self.val_dataset is None:
            self.val_dataset = self._dataset(self.val_manifest, train=False, limit=self.val_limit)

    def _loader(self, dataset: AVQADataset, *, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=partial(collate, pad_token_id=self.pad_token_id),
            persistent_workers=self.num_workers > 0,
        )

    def _train_sampler(self, dataset: AVQADataset) -> ResumableSampler:
        """Each rank its shard, seeded as Lightning seeds the DistributedSampler it injects (PL_GLOBAL_SEED)."""
        shard = {"num_replicas": 1, "rank": 0}
        trainer = self.trainer
        kwargs = trainer.distributed_sampler_kwargs if trainer is not None else None
        if kwargs:
            shard = {k: int(kwargs[k]) for k in shard if k in kwargs} or shard
        return ResumableSampler(dataset, shuffle=True, seed=int(os.getenv("PL_GLOBAL_SEED", 0)), **shard)

    def train_dataloader(self) -> ResumableDataLoader:
        if self.train_dataset is None:
            self.setup("fit")
        if self.train_dataset is None:
            raise ValueError("AVQADataModule: no train_manifest given")
        loader = ResumableDataLoader(
            self.train_dataset,
            batch_size=self.batch_size,
            sampler=self._train_sampler(self.train_dataset),
            num_workers=self.num_workers,
            collate_fn=partial(collate, pad_token_id=self.pad_token_id),
            persistent_workers=self.num_workers > 0,
        )
        if self._train_loader_state:
            loader.load_state_dict(self._train_loader_state)
            self._train_loader_state = {}
        self._train_loader = loader
        return loader

    def state_dict(self) -> dict[str, Any]:
        """The train loader's position, also kept here because Lightning 2.6 drops the copy it saves itself
        when ``configure_optimizers`` reads ``trainer.estimated_stepping_batches`` (Lightning issue #20550)."""
        return {"train_loader": self._train_loader.state_dict()} if self._train_loader is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Apply the saved position to the train loader (now if it exists, as under DeepSpeed, else when built)."""
        state = dict(state_dict.get("train_loader") or {})
        if self._train_loader is not None:
            self._train_loader.load_state_dict(state)
        else:
            self._train_loader_state = state

    def val_dataloader(self) -> DataLoader | list:
        if self.val_dataset is None:
            self.setup("validate")
        if self.val_dataset is None:
            return []
        return self._loader(self.val_dataset, shuffle=False)
