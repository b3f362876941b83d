"""`SelectorModule`: train an OmniSIFT selector (optionally with LoRA) in front of a frozen Qwen2.5-Omni thinker.

- The thinker is built in `configure_model()` (so DeepSpeed ZeRO-3 / FSDP can shard it while it is built),
  frozen, and kept in eval mode whatever Lightning does (`train()` is overridden): only the selector and,
  with `finetune="lora"`, LoRA adapters on the language model's attention projections are trained.
- A training step draws a retention from `retention_range` (the same value on every rank: the generator
  is seeded with the global step and the micro-batch index), runs the thinker inside `sift.compress` with
  the selector in training mode (straight-through top-k) and takes the answer-token cross-entropy over the
  kept sequence. `train_mode="shrink"` drops the tokens (the published method: only kept tokens get a
  gradient); `train_mode="mask"` runs the full sequence with dropped tokens masked out of attention
  (`sift.masked_attention`: the same forward values, and a gradient for every media token). With `kd_weight > 0` it adds a KL self-distillation term: the same frozen model (LoRA
  adapters off) run on the FULL token set is the teacher, compared at the supervised positions (teacher
  logits at the original positions, student logits at the kept positions via `kept_positions`). With
  `importance_weight > 0` it adds importance distillation (`train.importance`): the frozen full-token
  model's first-order effect of dropping each media token on the answer, as a ranking target for the
  selector's scores, for every media token whatever the mode. With `policy_weight > 0` it adds a
  set-level policy gradient (`train.policy`): a few keep sets sampled from the selector's scores, each
  run through the frozen model, rewarded by the answer's log-likelihood against the step's own selection.
- Validation: greedy `generate` inside `sift.compress` at `val_retention` (selector in eval mode), the
  reply's option letter extracted as in the reference evaluations, accuracy overall (`val/acc`) and per
  category (`val/acc/<category>`), all synchronised across ranks by torchmetrics.
- Samples the data module skipped (missing/corrupt/silent videos) are summed across ranks at epoch end
  and logged as `train/skipped` / `val/skipped`.
- Checkpoints hold the trainable weights (selector, LoRA) and the optimizer state, never the frozen model;
  `checkpoint["sift"]` carries what `python -m train export` needs (selector config, LoRA config).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import warnings
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torchmetrics.aggregation import CatMetric, MeanMetric, SumMetric

import sift
from sift.compressors.omnisift import OmniSIFT
from sift.manifest import extract_letter
from sift.models import adapter_for, load_thinker, thinker_config_of
from sift.testbed.catalog import TINY_MODELS, tiny_config_named, tiny_model_named
from sift.selector import OmniSIFTSelector
from train.importance import gate_importance, ranking_loss, selection_groups
from train.policy import POLICY_TEMPERATURE, step_policy_loss

__all__ = [
    "SelectorModule",
    "MetricsJSON",
    "extract_letter",
    "category_id",
    "DTYPES",
]


# The frozen thinker stays in eval mode on purpose (see `SelectorModule.train`); Lightning would say so on
# every run. Also: a data module without a validation manifest returns no validation loader, on purpose.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
warnings.filterwarnings("ignore", message=r"Total length of `list` across ranks is zero")
# lightning 2.6's CombinedLoader builds torch's deprecated LeafSpec on every fit; nothing a user can act on.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


# The frozen thinker is in eval mode on purpose (see SelectorModule.train).
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")

#: Selector options that change behaviour, not shapes: they may override a `selector_checkpoint`'s config.
_BEHAVIOUR_KEYS = ("ste_temperature", "gumbel", "audio_advantage")



def category_id(category: str | None) -> int:
    """A stable integer for a category name (the same on every rank and every run)."""
    return zlib.crc32(str(category).encode("utf-8")) & 0xFFFFFF  # 24 bits: exact in float32 too


def is_lora_key(key: str) -> bool:
    return ".lora_" in key


class SelectorModule(L.LightningModule):
    """Train an OmniSIFT selector (and optionally LoRA) in front of a frozen Qwen2.5-Omni thinker.

    Args:
        model: "tiny" / "tiny-qwen3" for an offline tiny thinker (`sift.testbed.catalog`), else a checkpoint
            folder or hub id of any supported family (`Qwen/Qwen2.5-Omni-7B`, `Qwen/Qwen3-Omni-30B-A3B-Instruct`;
            full checkpoints load their thinker, `sift.models.load_thinker`).
        model_seed: seed of the tiny thinker's random weights.
        attn_implementation: "sdpa", "flash_attention_2" or "eager".
        dtype: the frozen model's dtype, "float32" or "bfloat16" (or "float16").
        selector: `OmniSIFTConfig` options (e.g. {"init": "omnizip"}); the hidden size comes from the model.
        selector_checkpoint: a `save_pretrained` folder of a selector to start from.
        finetune: "none" (selector only) or "lora" (plus LoRA on the language model).
        lora_r / lora_alpha / lora_dropout / lora_targets: the LoRA adapters (language model only).
        retention_range: (low, high) of the retention drawn uniformly for each training step.
        val_retention: retention used for validation.
        kd_weight / kd_temperature: weight and temperature of the self-distillation KL term (0: off).
        importance_weight / importance_temperature: weight and target temperature of the importance
            distillation term (`train.importance`: the full-token frozen model's d log p(answer) / d gate of
            every media token, as a listwise ranking target for the selector's scores; 0: off).
        policy_weight / policy_samples / policy_temperature: the set-level policy-gradient term
            (`train.policy`): `policy_samples` selections drawn from Plackett-Luce(scores / temperature),
            rewarded by the frozen model's answer log-likelihood on each, against the greedy selection's
            (self-critical REINFORCE; 0: off). `policy_temperature` 0 draws no keep sets (the greedy top-k).
        policy_split_noise: with a learned budget split (`selector: {budget_split: learned}`), the standard
            deviation of each window's drawn audio-share offset in the policy rollouts: the one signal that
            trains the split (0: the split is not drawn, and stays as initialised).
        policy_reward_cap: the policy's reward is the answer log-likelihood with each label's probability
            capped at this (1: uncapped): confidence beyond it earns nothing (`train.policy.answer_log_likelihood`).
        train_mode: "shrink" (dropped tokens leave the sequence) or "mask" (masked attention, every media
            token gets gradient); see `sift.compress(mode=...)`.
        lr / weight_decay / warmup_ratio: AdamW and a cosine schedule with linear warmup.
        max_new_tokens: greedy decoding length for validation.
    """

    def __init__(
        self,
        model: str = "tiny",
        model_seed: int = 0,
        attn_implementation: str = "sdpa",
        dtype: str = "float32",
        selector: dict[str, Any] | None = None,
        selector_checkpoint: str | None = None,
        finetune: str = "none",
        lora_r: int = 8,
        lora_alpha: int = 16,
        lora_dropout: float = 0.0,
        lora_targets: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj"],  # noqa: B006 (LightningCLI default)
        retention_range: tuple[float, float] = (0.25, 0.5),
        val_retention: float = 0.35,
        kd_weight: float = 0.0,
        kd_temperature: float = 1.0,
        importance_weight: float = 0.0,
        importance_temperature: float = 1.0,
        policy_weight: float = 0.0,
        policy_samples: int = 2,
        policy_temperature: float = POLICY_TEMPERATURE,
        policy_split_noise: float = 0.0,
        policy_reward_cap: float = 1.0,
        train_mode: str = "shrink",
        lr: float = 1e-5,
        weight_decay: float = 0.0,
        warmup_ratio: float = 0.05,
        max_new_tokens: int = 4,
    ):
        super().__init__()
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        if train_mode not in sift.MODES:
            raise ValueError(f"train_mode must be one of {sift.MODES}, got {train_mode!r}")
        if finetune not in ("none", "lora"):
            raise ValueError(f"finetune must be 'none' or 'lora', got {finetune!r}")
        lo, hi = (float(x) for x in retention_range)
        if not (0.0 < lo <= hi <= 1.0):
            raise ValueError(f"retention_range must satisfy 0 < low <= high <= 1, got {tuple(retention_range)}")
        if not (0.0 < float(val_retention) <= 1.0):
            raise ValueError(f"val_retention must be in (0, 1], got {val_retention}")
        if kd_weight < 0 or kd_temperature <= 0:
            raise ValueError(f"need kd_weight >= 0 and kd_temperature > 0, got {kd_weight}, {kd_temperature}")
        if importance_weight < 0 or importance_temperature <= 0:
            raise ValueError(
                f"need importance_weight >= 0 and importance_temperature > 0, got {importance_weight}, {importance_temperature}"
            )
        if policy_weight < 0 or policy_samples < 1 or policy_temperature < 0 or policy_split_noise < 0:
            raise ValueError(
                f"need policy_weight >= 0, policy_samples >= 1, policy_temperature >= 0 and policy_split_noise >= 0, "
                f"got {policy_weight}, {policy_samples}, {policy_temperature}, {policy_split_noise}"
            )
        if not 0.0 < policy_reward_cap <= 1.0:
            raise ValueError(f"policy_reward_cap must be in (0, 1], got {policy_reward_cap}")
        if policy_weight > 0 and policy_temperature == 0 and policy_split_noise == 0:
            raise ValueError("policy_weight > 0 samples nothing with policy_temperature 0 and policy_split_noise 0")
        if not (0.0 <= warmup_ratio < 1.0):
            raise ValueError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}")
        if finetune == "lora" and not lora_targets:
            raise ValueError("finetune='lora' needs at least one lora_targets module name")
        self.save_hyperparameters()
        self.strict_loading = False  # checkpoints hold only the trainable weights
        self.retention_range = (lo, hi)
        self.model: torch.nn.Module | None = None  # the frozen thinker, built in configure_model()
        self.selector = self._build_selector()
        if policy_split_noise > 0 and self.selector.split is None:
            raise ValueError("policy_split_noise > 0 needs a selector with a learned budget split (selector: {budget_split: learned})")
        if self.selector.split is not None and not (policy_weight > 0 and policy_split_noise > 0):
            raise ValueError("a learned budget split trains only through its policy draws: set policy_weight > 0 and policy_split_noise > 0")

        self.train_skipped = SumMetric()
        self.val_skipped = SumMetric()
        self.val_acc = MeanMetric()
        self.val_cat_ids = CatMetric()
        self.val_cat_correct = CatMetric()
        self.val_cat_ids.set_dtype(torch.float64)  # crc32 ids need more than float32's 24 bits
        self.val_cat_correct.set_dtype(torch.float64)
        self._category_names: dict[int, str] = {}
        # the last real batch of each stage, replayed (with zero weight) when this rank's batch is empty
        self._lockstep_train: dict[str, Any] | None = None
        self._lockstep_val: dict[str, Any] | None = None
        self._tokenizer: Any = None
        #: the last epoch-level metrics (identical on every rank); written by `MetricsJSON`
        self.epoch_metrics: dict[str, float] = {}

    # ------------------------------------------------------------------ building
    def _thinker_config(self) -> Any:
        if self.hparams.model in TINY_MODELS:
            return tiny_config_named(self.hparams.model, attn=self.hparams.attn_implementation)
        from transformers import AutoConfig

        return thinker_config_of(AutoConfig.from_pretrained(self.hparams.model))

    def _build_selector(self) -> OmniSIFTSelector:
        options = dict(self.hparams.selector or {})
        thinker_config = self._thinker_config()
        hidden = thinker_config.get_text_config().hidden_size
        if self.hparams.selector_checkpoint:
            structural = sorted(k for k in options if k not in _BEHAVIOUR_KEYS)
            if structural:
                raise ValueError(
                    f"selector options {structural} change the architecture and cannot override "
                    f"selector_checkpoint={self.hparams.selector_checkpoint!r}; only {list(_BEHAVIOUR_KEYS)} may"
                )
            selector = OmniSIFTSelector.from_pretrained(self.hparams.selector_checkpoint).float()
            for key, value in options.items():
                setattr(selector.config, key, value)
            selector.check_model(thinker_config)
            return selector
        if "hidden_size" in options and options["hidden_size"] != hidden:
            raise ValueError(f"selector.hidden_size={options['hidden_size']} but the model's hidden size is {hidden}")
        return OmniSIFTSelector.from_config(thinker_config, **{k: v for k, v in options.items() if k != "hidden_size"})

    def configure_model(self) -> None:
        if self.model is not None:
            return
        dtype = DTYPES[self.hparams.dtype]
        if self.hparams.model in TINY_MODELS:
            model = tiny_model_named(self.hparams.model, self._thinker_config(), seed=self.hparams.model_seed,
                                     attn=self.hparams.attn_implementation, dtype=dtype)
        else:
            with self._hf_zero3_context():
                model = load_thinker(self.hparams.model, dtype=dtype, attn_implementation=self.hparams.attn_implementation)
        model.requires_grad_(False)
        model.eval()
        if self.hparams.finetune == "lora":
            from peft import inject_adapter_in_model

            inject_adapter_in_model(self.lora_config(), adapter_for(model).language_model(model))
            for name, param in model.named_parameters():
                param.requires_grad_(is_lora_key(name))
        self.model = model
        self.train(self.training)  # re-apply the mode rules to the new submodule

    @contextlib.contextmanager
    def _hf_zero3_context(self) -> Iterator[None]:
        """Under DeepSpeed ZeRO-3, let transformers know (it then loads weights into partitioned parameters)."""
        strategy = self._trainer.strategy if self._trainer is not None else None
        config = getattr(strategy, "config", None)
        stage = (config or {}).get("zero_optimization", {}).get("stage") if isinstance(config, dict) else None
        if stage != 3:
            yield
            return
        try:
            from transformers.integrations import HfDeepSpeedConfig

            keep = HfDeepSpeedConfig(config)  # noqa: F841 -- transformers holds a weak reference while this lives
        except Exception as e:  # accelerate missing, or a config it cannot read
            raise RuntimeError(
                f"ZeRO-3 loading of {self.hparams.model!r} needs transformers' DeepSpeed integration "
                f"(pip install accelerate): {e}"
            ) from e
        yield

    def lora_config(self) -> Any:
        from peft import LoraConfig

        return LoraConfig(
            r=self.hparams.lora_r,
            lora_alpha=self.hparams.lora_alpha,
            lora_dropout=self.hparams.lora_dropout,
            target_modules=list(self.hparams.lora_targets),
            base_model_name_or_path=None if self.hparams.model in TINY_MODELS else self.hparams.model,
        )

    def train(self, mode: bool = True) -> "SelectorModule":
        """Selector (and LoRA dropout) follow `mode`; the frozen thinker always stays in eval mode."""
        super().train(mode)
        if self.model is not None:
            self.model.eval()
            if mode and self.hparams.finetune == "lora" and self.hparams.lora_dropout > 0:
                for name, module in self.model.named_modules():
                    if name.endswith("lora_dropout") or ".lora_dropout." in name:
                        module.train(True)
        return self

    # ------------------------------------------------------------------ helpers
    def _world_size(self) -> int:
        return self.trainer.world_size if self._trainer is not None else 1

    def _zero3(self) -> bool:
        strategy = self._trainer.strategy if self._trainer is not None else None
        if strategy is None:
            return False
        if getattr(strategy, "zero_stage_3", False):
            return True
        return type(strategy).__name__.startswith("FSDP")

    def _model_inputs(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        return {k: batch[k] for k in adapter_for(self.model).input_keys if batch.get(k) is not None}

    def sample_retention(self, batch_idx: int = 0) -> float:
        """A retention drawn from `retention_range`, identical on every rank (seeded by the step)."""
        lo, hi = self.retention_range
        if hi == lo:
            return lo
        accumulate = max(1, int(getattr(self._trainer, "accumulate_grad_batches", 1) or 1)) if self._trainer else 1
        seed = int(self.global_step) * accumulate + int(batch_idx) % accumulate
        g = torch.Generator().manual_seed(seed)
        return lo + (hi - lo) * float(torch.rand((), generator=g))

    def _compressor(self, retention: float) -> OmniSIFT:
        return OmniSIFT(retention=retention, selector=self.selector)

    @contextlib.contextmanager
    def _adapters_disabled(self) -> Iterator[None]:
        """The base model without LoRA (the KD teacher)."""
        if self.hparams.finetune != "lora":
            yield
            return
        from peft.tuners.tuners_utils import BaseTunerLayer

        layers = [m for m in self.model.modules() if isinstance(m, BaseTunerLayer)]
        before = [m._disable_adapters for m in layers]
        for m in layers:
            m._disable_adapters = True
        try:
            yield
        finally:
            for m, b in zip(layers, before):
                m._disable_adapters = b

    def _zero_loss(self) -> torch.Tensor:
        """A zero loss connected to every trainable parameter (keeps DDP/DeepSpeed collectives in step)."""
        params = [p for p in self.parameters() if p.requires_grad]
        return sum((p.sum() * 0.0 for p in params), torch.zeros((), device=self.device))

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        self.train_skipped.update(float(batch.get("skipped", 0)))
        scale = 1.0
        if batch.get("empty"):
            if self._world_size() == 1:
                return None
            # Other ranks run a step: run one too (on the last real batch, loss scaled to 0) so that the
            # gradient reduction (and ZeRO-3's parameter gathers) stay in step.
            if self._lockstep_train is None:
                return self._zero_loss()
            batch, scale = self._lockstep_train, 0.0
        elif self._world_size() > 1:
            self._lockstep_train = batch
        inputs = self._model_inputs(batch)
        labels = batch["labels"]
        n = int(inputs["input_ids"].shape[0])
        retention = self.sample_retention(batch_idx)

        teacher = None
        if self.hparams.kd_weight > 0:
            teacher = self._teacher_logits(inputs, labels)
        importance = None
        if self.hparams.importance_weight > 0:
            with self._adapters_disabled():
                importance = gate_importance(self.model, inputs, labels)
        compressor = self._compressor(retention)
        with sift.compress(self.model, compressor, mode=self.hparams.train_mode) as session:
            out = self.model(**inputs, labels=labels)
        ce = out.loss
        loss = ce
        kd = rank = None
        if teacher is not None:
            stats = session.stats if self.hparams.train_mode == "shrink" else None  # mask: logits cover the input
            kd = self._kd_loss(out.logits, stats, teacher)
            loss = loss + self.hparams.kd_weight * kd
        if importance is not None and session.selection is not None:
            groups = selection_groups(session.layout, compressor.audio_rule)
            rank = ranking_loss(session.selection.scores, importance, groups, self.hparams.importance_temperature)
            loss = loss + self.hparams.importance_weight * rank
        policy = None
        if self.hparams.policy_weight > 0 and session.selection is not None:
            hp = self.hparams
            policy = step_policy_loss(self.model, compressor, session, out.logits, inputs, labels, hp.policy_samples,
                                      hp.policy_temperature or None, shrink=hp.train_mode == "shrink",
                                      split_noise=hp.policy_split_noise or None, reward_cap=hp.policy_reward_cap)
            loss = loss + self.hparams.policy_weight * policy
        if not loss.requires_grad or self.selector.split is not None:
            # nothing was dropped (no gradient path through the gates), or a step whose windows could not move
            # their split: every trainable parameter stays in the graph (DDP / DeepSpeed reductions in step)
            loss = loss + self._zero_loss()
        if scale != 1.0:
            return loss * scale
        self.log("train/loss", loss.detach(), on_step=True, prog_bar=True, batch_size=n)
        self.log("train/ce", ce.detach(), on_step=True, batch_size=n)
        if kd is not None:
            self.log("train/kd", kd.detach(), on_step=True, batch_size=n)
        if rank is not None:
            self.log("train/rank", rank.detach(), on_step=True, batch_size=n)
        if policy is not None:
            self.log("train/policy", policy.detach(), on_step=True, batch_size=n)
        self.log("train/retention", retention, on_step=True, batch_size=n)
        kept = session.stats.retention if session.stats is not None else 1.0
        self.log("train/kept", float(kept), on_step=True, batch_size=n)
        return loss

    @staticmethod
    def _supervised(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, positions) whose logits predict a supervised label (the position before each label)."""
        rows, cols = torch.nonzero(labels[:, 1:] != -100, as_tuple=True)
        return rows, cols  # cols index position p-1 for the label at p

    @torch.no_grad()
    def _teacher_logits(self, inputs: dict[str, Any], labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The uncompressed frozen model's logits at the supervised positions: (N, V), with their (rows, cols)."""
        rows, cols = self._supervised(labels)
        head = self.model.get_output_embeddings()

        def only_supervised(module: torch.nn.Module, args: tuple) -> tuple:
            hidden = args[0]
            return (hidden[rows.to(hidden.device), cols.to(hidden.device)][None],)

        handle = head.register_forward_pre_hook(only_supervised)
        try:
            with self._adapters_disabled():
                logits = self.model(**inputs).logits[0]
        finally:
            handle.remove()
        return logits, rows, cols

    def _kd_loss(
        self,
        student_logits: torch.Tensor,
        stats: sift.CompressionStats | None,
        teacher: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        t_logits, rows, cols = teacher
        if rows.numel() == 0:
            return student_logits.sum() * 0.0
        slots = cols if stats is None else stats.slots_of(rows, cols)  # None: nothing compressed, logits cover the input
        s_logits = student_logits[rows.to(student_logits.device), slots.to(student_logits.device)]
        T = float(self.hparams.kd_temperature)
        log_p_student = F.log_softmax(s_logits.float() / T, dim=-1)
        log_p_teacher = F.log_softmax(t_logits.float().to(log_p_student.device) / T, dim=-1)
        return F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean") * (T * T)

    def on_train_epoch_end(self) -> None:
        total = int(round(float(self.train_skipped.compute())))  # summed over ranks
        self.train_skipped.reset()
        self.log("train/skipped", float(total), sync_dist=False, rank_zero_only=False)
        self.epoch_metrics["train/skipped"] = float(total)
        self.print(f"train/skipped: {total} sample(s) skipped this epoch (all ranks)")

    # ------------------------------------------------------------------ validation
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
            processor = getattr(datamodule, "processor", None) if datamodule is not None else None
            if processor is not None:
                self._tokenizer = getattr(processor, "tokenizer", processor)
            elif self.hparams.model in TINY_MODELS:
                from sift.testbed.tiny import tiny_tokenizer

                self._tokenizer = tiny_tokenizer()  # both tiny models share its ids
            else:
                from transformers import AutoTokenizer

                self._tokenizer = AutoTokenizer.from_pretrained(self.hparams.model)
        return self._tokenizer

    def predict_letters(self, batch: Mapping[str, Any], retention: float | None = None) -> list[str | None]:
        """Greedy answers of the compressed model for a validation batch, as option letters (or None)."""
        inputs = self._model_inputs(batch)
        retention = self.hparams.val_retention if retention is None else retention
        was_training = self.selector.training
        self.selector.eval()
        try:
            with torch.no_grad(), sift.compress(self.model, self._compressor(retention)):
                out = self.model.generate(
                    **inputs,
                    max_new_tokens=self.hparams.max_new_tokens,
                    do_sample=False,
                    synced_gpus=self._zero3() and self._world_size() > 1,
                )
        finally:
            self.selector.train(was_training)
        replies = self.tokenizer().batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        return [extract_letter(r, n) for r, n in zip(replies, batch["num_options"])]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if not self.trainer.sanity_checking:
            self.val_skipped.update(float(batch.get("skipped", 0)))
        if batch.get("empty"):
            if self._zero3() and self._world_size() > 1 and self._lockstep_val is not None:
                self.predict_letters(self._lockstep_val)  # keep ZeRO-3 gathers in step; not counted
            return
        if self._zero3() and self._world_size() > 1:
            self._lockstep_val = batch
        preds = self.predict_letters(batch)
        correct = torch.tensor(
            [float(p is not None and p == a) for p, a in zip(preds, batch["answer"])], dtype=torch.float64, device=self.device
        )
        ids = []
        for category in batch["category"]:
            cid = category_id(category)
            self._category_names[cid] = str(category)
            ids.append(float(cid))
        self.val_acc.update(correct)
        self.val_cat_ids.update(torch.tensor(ids, dtype=torch.float64, device=self.device))
        self.val_cat_correct.update(correct)

    def _all_category_names(self) -> dict[int, str]:
        names = dict(self._category_names)
        if torch.distributed.is_available() and torch.distributed.is_initialized() and self._world_size() > 1:
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, names)
            for part in gathered:
                names.update(part or {})
        return names

    def on_validation_epoch_end(self) -> None:
        skipped = int(round(float(self.val_skipped.compute())))
        with warnings.catch_warnings():  # an epoch without samples: nan accuracy, no warning spam
            warnings.simplefilter("ignore")
            acc = self.val_acc.compute()  # every rank calls compute: it is a collective
            ids = self.val_cat_ids.compute()
            correct = self.val_cat_correct.compute()
        names = self._all_category_names()
        for metric in (self.val_skipped, self.val_acc, self.val_cat_ids, self.val_cat_correct):
            metric.reset()
        self._category_names = {}
        if self.trainer.sanity_checking:
            return
        metrics: dict[str, float] = {"val/acc": float(acc), "val/skipped": float(skipped)}
        if isinstance(ids, torch.Tensor) and ids.numel():
            ids, correct = ids.reshape(-1).cpu(), correct.reshape(-1).cpu()
            for cid in sorted(set(int(i) for i in ids.tolist())):
                name = names.get(cid, f"category-{cid}")
                metrics[f"val/acc/{name}"] = float(correct[ids == cid].mean())
        for key, value in metrics.items():
            # values are already global (synchronised by torchmetrics): no further reduction
            self.log(key, value, sync_dist=False, rank_zero_only=False, prog_bar=key == "val/acc")
        self.epoch_metrics.update(metrics)
        self.print(f"val/acc: {metrics['val/acc']:.4f}; val/skipped: {skipped} sample(s) skipped (all ranks)")

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        from transformers import get_cosine_schedule_with_warmup

        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise RuntimeError("no trainable parameters")
        optimizer = torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ValueError("set trainer.max_steps or trainer.max_epochs: the cosine schedule needs a length")
        total = max(1, int(total))
        warmup = int(round(self.hparams.warmup_ratio * total))
        scheduler = get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=warmup, num_training_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    # ------------------------------------------------------------------ checkpoints
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if k.startswith("selector.") or is_lora_key(k)}

    def export_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "selector_config": self.selector.config.to_dict(),
            "model": self.hparams.model,
            "finetune": self.hparams.finetune,
            "lora_prefix": f"model.{adapter_for(self.model).language_model_path}.",
        }
        if self.hparams.finetune == "lora":
            info["lora_config"] = self.lora_config().to_dict()
        return info

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict")
        if state is not None:
            for key in [k for k in state if k.startswith("model.") and not is_lora_key(k)]:
                del state[key]
        checkpoint["sift"] = _jsonable(self.export_info())

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict")
        if state is None:  # DeepSpeed restores the weights itself
            return
        missing = [k for k in self.selector.state_dict() if f"selector.{k}" not in state]
        if missing:
            raise KeyError(f"the checkpoint has no selector weights (missing e.g. selector.{missing[0]}); is it a SelectorModule checkpoint?")
        if self.hparams.finetune == "lora" and not any(is_lora_key(k) for k in state):
            raise KeyError("finetune='lora' but the checkpoint holds no LoRA weights")


def _jsonable(obj: Any) -> Any:
    """A copy made of plain JSON types (torch.load(weights_only=True)-safe, readable without this code)."""
    return json.loads(json.dumps(obj, default=lambda o: sorted(o) if isinstance(o, (set, frozenset)) else str(o)))


class MetricsJSON(Callback):
    """Write the module's epoch metrics to `<dirpath>/metrics-rank<R>.json` on every rank (for auditing
    that ranks agree; the values are global)."""

    def __init__(self, dirpath: str | None = None):
        self.dirpath = dirpath

    def _write(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        folder = Path(self.dirpath or trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        data = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "global_step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "metrics": dict(getattr(pl_module, "epoch_metrics", {})),
        }
        path = folder / f"metrics-rank{trainer.global_rank}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
        os.replace(tmp, path)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, pl_module)
