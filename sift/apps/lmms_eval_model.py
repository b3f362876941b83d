"""sift inside lmms-eval: the model ``sift_qwen2_5_omni`` (alias ``sift_qwen3_omni``), found through the
``lmms_eval.models`` entry point once sift is installed, so ``python -m lmms_eval --model sift_qwen2_5_omni`` works
with no fork and no environment variable::

    python -m lmms_eval --model sift_qwen2_5_omni \\
        --model_args pretrained=Qwen/Qwen2.5-Omni-7B,method=stvp,retention=0.35 \\
        --tasks worldsense --batch_size 1 --output_path runs/lmms

``model_args``: the stock ``qwen2_5_omni`` model's names (``pretrained``, ``device``, ``attn_implementation``,
``max_num_frames``, ``fps``, ``system_prompt``, ...) plus ``method``, ``retention``, ``selector`` (an OmniSIFT
checkpoint folder) and any option of the method (``rho_audio=0.5`` ...). ``pretrained`` may be any supported
checkpoint (Qwen2.5-Omni or Qwen3-Omni: the processor comes from it too, not a hard-coded 7B one) or
``tiny`` / ``tiny-qwen3`` offline. Attention defaults to sdpa.

Why not a subclass of the stock ``Qwen2_5_Omni``: its module imports librosa, moviepy and qwen-omni-utils, it
decodes video through torchcodec/decord (FFmpeg), loads the full model with its talker and hard-codes the 7B
processor. This model instead decodes with PyAV and builds its inputs with `sift eval`'s own functions
(`sift.apps.evaluate.prepare_prompt`, `make_compressor`, `generate_reply`), so on the same samples, method and
retention, lmms-eval's accuracy equals `sift eval`'s (tested). Each generation runs inside `sift.compress` on the
thinker; per-sample statistics (tokens before/after, achieved retention, selection ms) are logged (lmms-eval's
loguru logger, INFO), kept in ``model.sample_stats`` and, with ``stats_path=FILE``, appended to a JSONL file.
Supported: lmms-eval 0.7.x (checked on 0.7.3).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from lmms_eval.models.registry_v2 import ModelManifest
from loguru import logger  # lmms-eval's logger: its --verbosity governs these lines too

from sift.apps.evaluate import generate_reply, load_model, make_compressor, prepare_prompt
from sift.apps.runtime import resolve_device, resolve_dtype

__all__ = ["SiftOmni", "manifests", "MODEL_ID", "STOCK_ONLY_ARGS"]

#: The lmms-eval model name; ``sift_qwen3_omni`` is an alias (the family comes from ``pretrained``).
MODEL_ID = "sift_qwen2_5_omni"


#: The stock ``qwen2_5_omni`` model_args accepted and ignored: sift places the thinker on ``device`` (no
#: ``device_map``), always decodes with PyAV (no custom loader, ``frame_size`` instead of ``max_image_size``) and
#: generates with the KV cache.
STOCK_ONLY_ARGS = ("device_map", "use_cache", "use_custom_video_loader", "max_image_size")


def manifests() -> list[ModelManifest]:
    """The ``lmms_eval.models`` entry point's payload (pyproject.toml)."""
    return [ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.SiftOmni", aliases=("sift_qwen3_omni",))]


class SiftOmni(lmms):
    """A Qwen2.5-Omni or Qwen3-Omni thinker whose every ``generate`` runs inside ``sift.compress``."""

    def __init__(
        self,
        pretrained: str = "Qwen/Qwen2.5-Omni-7B",
        processor: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int | str = 1,
        attn_implementation: str = "sdpa",
        max_num_frames: int | None = None,
        fps: float = 2.0,
        frame_size: int | None = None,
        system_prompt: str | None = None,
        method: str = "none",
        retention: float | None = None,
        selector: str | None = None,
        seed: int = 0,
        stats_path: str | None = None,
        max_batch_size: int | None = None,
        **method_options: Any,
    ) -> None:
        super().__init__()
        if int(batch_size) != 1:
            raise ValueError(f"{MODEL_ID}: batch_size must be 1 (got {batch_size}); sift batches inside one clip's tokens")
        for name in STOCK_ONLY_ARGS:  # the stock model's options with no meaning here (see STOCK_ONLY_ARGS)
            if method_options.pop(name, None) is not None:
                logger.warning(f"{MODEL_ID}: model_args {name} is the stock qwen2_5_omni's and is ignored here")
        self._device = resolve_device(device)
        dtype_ = resolve_dtype(dtype, self._device)
        self.model, self.processor = load_model(pretrained, processor, self._device, dtype_, attn_implementation, seed)
        self.compressor = make_compressor(method, None if method == "none" else retention, self.model.config,
                                          selector=selector, seed=seed, **method_options)
        self.method, self.retention = method, retention
        self.fps, self.max_frames = float(fps), max_num_frames
        self.size = None if frame_size is None else (int(frame_size), int(frame_size))
        self.system_prompt = self._resolve_system_prompt(system_prompt) if system_prompt else None
        self.sample_stats: list[dict[str, Any]] = []
        self.stats_path = Path(stats_path) if stats_path else None
        logger.info(f"{MODEL_ID}: {type(self.model).__name__} from {pretrained}, {method}"
                    + (f" at retention {retention}" if retention is not None else ""))

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    @property
    def batch_size(self) -> int:
        return 1

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        raise NotImplementedError(f"{MODEL_ID} answers by generation (generate_until); loglikelihood tasks are not supported")

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError(f"{MODEL_ID}: multi-round generation is not supported")

    def generate_until(self, requests: list[Instance]) -> list[str]:
        from tqdm.auto import tqdm

        replies = []
        for request in tqdm(requests, desc=f"{MODEL_ID} {self.method}", disable=self.rank != 0):
            replies.append(self._reply(request))
        return replies

    def _record(self, record: dict[str, Any]) -> None:
        """Keep one sample's statistics (``sample_stats``), and append them to ``stats_path`` when given."""
        self.sample_stats.append(record)
        if self.stats_path is not None:
            self.stats_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.stats_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def _reply(self, request: Instance) -> str:
        """One request: ``(context, generation kwargs, doc_to_visual, doc_id, task, split)``; failures answer ''."""
        from sift.testbed.media import load_clip

        context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
        doc = self.task_dict[task][split][doc_id]
        try:
            (video,) = [v for v in doc_to_visual(doc) if isinstance(v, str)]
            clip = load_clip(video, fps=self.fps, size=self.size, max_frames=self.max_frames)
            if clip.audio is None or len(clip.audio) == 0:
                raise ValueError("the video has no audio track (sift feeds the video's audio)")
            inputs = prepare_prompt(self.processor, context, clip, self.system_prompt).to(self._device)
            max_new = int(gen_kwargs.get("max_new_tokens", 8))
            reply, stats, n_prompt = generate_reply(self.model, self.tokenizer, inputs, self.compressor, max_new)
        except Exception as e:  # one bad sample is logged, counted and answered empty, as the stock model does
            logger.warning(f"{MODEL_ID}: doc {doc_id} of {task} failed: {type(e).__name__}: {e}")
            self._record(dict(task=task, doc_id=doc_id, error=f"{type(e).__name__}: {e}"))
            return ""
        record = dict(
            task=task, doc_id=doc_id, method=self.method, retention=self.retention, input_tokens=n_prompt,
            tokens_before=stats.tokens_before[0] if stats else n_prompt, tokens_after=stats.tokens_after[0] if stats else n_prompt,
            achieved_retention=stats.retention if stats else 1.0,
            selection_ms=1e3 * stats.selection_time_s if stats else 0.0,
        )
        self._record(record)
        logger.info(f"{MODEL_ID} {task} doc {doc_id}: tokens {record['tokens_before']} -> {record['tokens_after']} "
                    f"(retention {record['achieved_retention']:.3f}), selection {record['selection_ms']:.1f} ms")
        for stop in gen_kwargs.get("until") or []:
            if isinstance(stop, str) and stop and stop in reply:
                reply = reply.split(stop)[0]
        return reply
