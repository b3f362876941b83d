"""The learned OmniSIFT selector: learnable STVP + VGAS, a few million parameters in front of a frozen model.

- VGAS (vision-guided audio selector), exactly the paper's block: audio tokens are queries, the window's
  STVP-kept video tokens keys/values: v = LN(W_v video), a = LN(W_a audio) (D -> 512),
  x = LN(MHA_8(q=a, k=v, v=v) + a), logit = W_2 SiLU(W_1 x) (512 -> 256 -> 1), score = sigmoid(logit).
  4,856,321 parameters at D = 3584, 3,283,457 at D = 2048.
- Learnable STVP: the paper's STVP is parameter-free; ours adds a residual scorer on top of its saliency
  (a projection of the token plus its spatial and temporal saliency, through a small MLP whose last layer
  is zero-initialised), so at initialisation it ranks exactly like its parameter-free base: the paper's
  STVP, spatial saliency alone with `video_base="spatial"`, or both standardised and summed with "mixed".
- `init="omnizip"` adds OmniZip's audio-encoder saliency as a prior to the VGAS logit (log saliency) with
  VGAS's last layer at zero, so the untrained selector keeps what training-free selection keeps and
  training starts from that baseline; `init="random"` is the ablation (no prior, default init).

Checkpoints are a `PreTrainedModel`: `save_pretrained(dir)` writes `config.json` + `model.safetensors`
(the selector only, a few MB); `from_pretrained(dir)` reads them back.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from sift.models import thinker_config_of

__all__ = [
    "OmniSIFTConfig",
    "OmniSIFTSelector",
    "VGAS",
    "LearnableSTVP",
    "BudgetSplit",
    "PUBLISHED_PREFIX",
    "VIDEO_BASES",
    "BUDGET_SPLITS",
]

#: Where the published OmniSIFT-7B checkpoint keeps the selector's weights.
PUBLISHED_PREFIX = "thinker.compressor."

#: A Hugging Face Hub id of the form "org/name" (selectors are never legacy single-name repos).
_HUB_ID = re.compile(r"[A-Za-z0-9](?:[\w.-]*[A-Za-z0-9])?/[A-Za-z0-9](?:[\w.-]*[A-Za-z0-9])?")


#: The thinker config ``model_type`` of Qwen2.5-Omni: what every selector before `OmniSIFTConfig.base_model` read.
QWEN25_THINKER = "qwen2_5_omni_thinker"

#: The parameter-free video scores a selector's residual can sit on (`OmniSIFTConfig.video_base`).
VIDEO_BASES = ("temporal", "spatial", "mixed")

#: How a retention budget is split between a window's audio and video (`OmniSIFTConfig.budget_split`).
BUDGET_SPLITS = ("fixed", "learned")


class OmniSIFTConfig(PretrainedConfig):
    """Sizes and behaviour of an OmniSIFT selector.

    Args:
        hidden_size: the LLM hidden size D the selector reads (3584 for Qwen2.5-Omni-7B, 2048 for 3B and for
            Qwen3-Omni-30B-A3B).
        base_model: the ``model_type`` of the thinker config the selector reads ("qwen2_5_omni_thinker",
            "qwen3_omni_moe_thinker"); checkpoints written before it existed were all Qwen2.5-Omni's. Why: two
            families share hidden size 2048, and a selector trained on one's embeddings means nothing on the other's.
        vgas_dim / vgas_heads / score_dim: VGAS widths (paper: 512 / 8 / 256).
        stvp_dim: width of the learnable STVP token projection.
        init: "omnizip" (start from training-free selection) or "random".
        audio_prior: "omnizip" adds log OmniZip saliency to the VGAS logit; "none" uses VGAS alone.
        audio_advantage: audio keeps this much more of its tokens (fraction) than video, when the budget allows.
        ste_temperature: of the soft scores used by the straight-through estimator.
        gumbel: add Gumbel noise to the scores before top-k while training (exploration).
        audio_topk: "clip" (top-k over each audio clip, sift's default) or "chunk" (per 2 s window, the
            published OmniSIFT's `compression_units` rule); the compressor's `audio_topk` overrides it.
        visual_guidance: False scores audio from the audio alone (VGAS attends to no video; the paper's
            "without visual guidance" ablation).
        stvp_residual: False keeps video selection the parameter-free STVP (no learned residual; ablation).
        video_base: the parameter-free score the residual is added to. "temporal" is the paper's STVP (spatial
            saliency on a window's first frame, change from the previous frame on the others); "spatial" scores
            every frame by spatial saliency alone; "mixed" adds the two, each standardised over the frame
            (`sift.saliency.mixed_saliency`), on frames that have a previous frame (spatial on the others).
            Why: under camera motion every cell changes between frames, so the temporal rule ranks background
            over the object (SynthAV v2's panning backgrounds), while spatial saliency alone misses change that
            matters; checkpoints written before the option existed used "temporal".
        budget_split: "fixed" splits a retention budget by `audio_advantage` alone; "learned" adds a small
            head (`BudgetSplit`) that moves each 2 s window's budget between its audio and its video, from
            the window's content and its share. Zero at initialisation (the fixed split); trained by the
            training app's policy gradient (a budget is an integer count: no gradient reaches it otherwise).
            Why: the best fixed split depends on the retention and the clip (on the SynthAV v2 tuning split
            an advantage of 0.5 beats 0.3 at r = 0.15, 0.15 beats it at r = 0.25). Only with a retention:
            prune ratios fix every unit's count.
        split_dim / split_hidden: widths of that head's token projection and MLP.
        rho_audio / rho_video: the selector's own operating point as prune ratios (fraction dropped per
            window / per frame), used when the compressor gets no retention; `from_published` sets the
            reference's 0.3 / 0.7. None: a retention must be given.
    """

    model_type = "omnisift_selector"

    def __init__(
        self,
        hidden_size: int = 3584,
        vgas_dim: int = 512,
        vgas_heads: int = 8,
        score_dim: int = 256,
        stvp_dim: int = 128,
        stvp_hidden: int = 64,
        init: str = "omnizip",
        audio_prior: str | None = None,
        audio_advantage: float = 0.3,
        ste_temperature: float = 0.1,
        gumbel: bool = False,
        audio_topk: str = "clip",
        rho_audio: float | None = None,
        rho_video: float | None = None,
        visual_guidance: bool = True,
        stvp_residual: bool = True,
        base_model: str = QWEN25_THINKER,
        video_base: str = "temporal",
        budget_split: str = "fixed",
        split_dim: int = 64,
        split_hidden: int = 64,
        **kwargs: Any,
    ):
        if init not in ("omnizip", "random"):
            raise ValueError(f"init must be 'omnizip' or 'random', got {init!r}")
        audio_prior = audio_prior or ("omnizip" if init == "omnizip" else "none")
        if audio_prior not in ("omnizip", "none"):
            raise ValueError(f"audio_prior must be 'omnizip' or 'none', got {audio_prior!r}")
        if ste_temperature <= 0:
            raise ValueError(f"ste_temperature must be > 0, got {ste_temperature}")
        if audio_topk not in ("clip", "chunk"):
            raise ValueError(f"audio_topk must be 'clip' or 'chunk', got {audio_topk!r}")
        if video_base not in VIDEO_BASES:
            raise ValueError(f"video_base must be one of {', '.join(map(repr, VIDEO_BASES))}, got {video_base!r}")
        if budget_split not in BUDGET_SPLITS:
            raise ValueError(f"budget_split must be one of {', '.join(map(repr, BUDGET_SPLITS))}, got {budget_split!r}")
        if (rho_audio is None) != (rho_video is None) or any(
            r is not None and not 0.0 <= r < 1.0 for r in (rho_audio, rho_video)
        ):
            raise ValueError(f"rho_audio/rho_video: both None or both in [0, 1), got {rho_audio}, {rho_video}")
        self.hidden_size = hidden_size
        self.base_model = base_model
        self.vgas_dim = vgas_dim
        self.vgas_heads = vgas_heads
        self.score_dim = score_dim
        self.stvp_dim = stvp_dim
        self.stvp_hidden = stvp_hidden
        self.init = init
        self.audio_prior = audio_prior
        self.audio_advantage = audio_advantage
        self.ste_temperature = ste_temperature
        self.gumbel = gumbel
        self.audio_topk = audio_topk
        self.rho_audio = rho_audio
        self.rho_video = rho_video
        self.visual_guidance = bool(visual_guidance)
        self.stvp_residual = bool(stvp_residual)
        self.video_base = video_base
        self.budget_split = budget_split
        self.split_dim = split_dim
        self.split_hidden = split_hidden
        super().__init__(**kwargs)


class VGAS(nn.Module):
    """Vision-guided audio selector (the paper's block; parameter names match the published weights)."""

    def __init__(self, hidden_size: int, dim: int = 512, heads: int = 8, score_dim: int = 256):
        super().__init__()
        self.v_proj = nn.Linear(hidden_size, dim)
        self.a_proj = nn.Linear(hidden_size, dim)
        self.v_norm = nn.LayerNorm(dim)
        self.a_norm = nn.LayerNorm(dim)
        self.cross_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.post_attn_norm = nn.LayerNorm(dim)
        self.score_head = nn.Sequential(nn.Linear(dim, score_dim), nn.SiLU(), nn.Linear(score_dim, 1))

    def forward(
        self, audio: torch.Tensor, video: torch.Tensor, audio_mask: torch.Tensor, video_mask: torch.Tensor
    ) -> torch.Tensor:
        """Logits (W, A) for padded windows: audio (W, A, D), video (W, V, D), masks True at real tokens."""
        a = self.a_norm(self.a_proj(audio))
        if video.shape[1] == 0:
            attended = torch.zeros_like(a)
        else:
            v = self.v_norm(self.v_proj(video))
            no_keys = ~video_mask.any(dim=1)
            key_padding = ~video_mask
            key_padding[no_keys] = False  # a window without video attends to padding, then is zeroed below
            attended, _ = self.cross_attn(a, v, v, key_padding_mask=key_padding, need_weights=False)
            attended = attended.masked_fill(no_keys[:, None, None], 0.0)
        x = self.post_attn_norm(attended + a)
        return self.score_head(x).squeeze(-1).masked_fill(~audio_mask, float("-inf"))


class LearnableSTVP(nn.Module):
    """Residual scorer on top of STVP saliency; zero at initialisation."""

    def __init__(self, hidden_size: int, dim: int = 128, hidden: int = 64):
        super().__init__()
        self.proj = nn.Linear(hidden_size, dim)
        self.mlp = nn.Sequential(nn.Linear(dim + 2, hidden), nn.SiLU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def forward(self, tokens: torch.Tensor, spatial: torch.Tensor, temporal: torch.Tensor) -> torch.Tensor:
        """Residual (n,) for a frame's tokens (n, D) with their spatial and temporal saliency (n,)."""
        features = torch.cat([self.proj(tokens), spatial[:, None], temporal[:, None]], dim=-1)
        return self.mlp(features).squeeze(-1)


class BudgetSplit(nn.Module):
    """Per-window offset of the audio share's logit (`sift.budget.shift_split`); zero at initialisation.

    Reads the window's mean audio and mean video token (projected), the logit of the fixed split's audio
    share and the log of the window's keep fraction: what it holds and how tight the budget is.
    """

    def __init__(self, hidden_size: int, dim: int = 64, hidden: int = 64):
        super().__init__()
        self.proj = nn.Linear(hidden_size, dim)
        self.mlp = nn.Sequential(nn.Linear(2 * dim + 2, hidden), nn.SiLU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def forward(self, audio: torch.Tensor, video: torch.Tensor, budget: torch.Tensor) -> torch.Tensor:
        """Offsets (W,) for W windows: audio and video lists of (n, D) tokens, budget (W, 2) features."""
        pooled = [torch.cat([self.proj(a).mean(0), self.proj(v).mean(0)]) for a, v in zip(audio, video)]
        features = torch.cat([torch.stack(pooled), budget.to(self.proj.weight.dtype)], dim=-1)
        return self.mlp(features).squeeze(-1)


class OmniSIFTSelector(PreTrainedModel):
    """Learnable STVP + VGAS. Use through `sift.get_compressor("omnisift", selector=...)`."""

    config_class = OmniSIFTConfig
    base_model_prefix = "selector"
    main_input_name = "audio"

    def __init__(self, config: OmniSIFTConfig):
        super().__init__(config)
        self.vgas = VGAS(config.hidden_size, config.vgas_dim, config.vgas_heads, config.score_dim)
        self.stvp = LearnableSTVP(config.hidden_size, config.stvp_dim, config.stvp_hidden)
        self.split = BudgetSplit(config.hidden_size, config.split_dim, config.split_hidden) if config.budget_split == "learned" else None
        self.post_init()
        self._init_selector()

    def _init_weights(self, module: nn.Module) -> None:  # keep torch's defaults; see _init_selector
        pass

    def _init_selector(self) -> None:
        if self.config.init == "omnizip":  # VGAS contributes nothing until trained: the prior decides
            nn.init.zeros_(self.vgas.score_head[2].weight)
            nn.init.zeros_(self.vgas.score_head[2].bias)
        nn.init.zeros_(self.stvp.mlp[2].weight)
        nn.init.zeros_(self.stvp.mlp[2].bias)
        if self.split is not None:
            nn.init.zeros_(self.split.mlp[2].weight)
            nn.init.zeros_(self.split.mlp[2].bias)

    @classmethod
    def from_config(cls, config: Any, **kwargs: Any) -> "OmniSIFTSelector":
        """A fresh selector for a model config: a thinker config or a full omni config, of any supported family."""
        if isinstance(config, OmniSIFTConfig):
            return cls(config)
        thinker = thinker_config_of(config)
        hidden = thinker.get_text_config().hidden_size
        return cls(OmniSIFTConfig(hidden_size=hidden, base_model=thinker.model_type, **kwargs))

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    def check_model(self, config: Any) -> None:
        """Refuse a model this selector was not trained for: another family, or another hidden size."""
        thinker = thinker_config_of(config)
        if thinker.model_type != self.config.base_model:
            raise ValueError(
                f"this OmniSIFT selector was trained on {self.config.base_model} embeddings, but the model is "
                f"{thinker.model_type}; use a selector trained for this model (OmniSIFTSelector.from_config for a fresh one)"
            )
        self.check_hidden_size(thinker.get_text_config().hidden_size)

    def check_hidden_size(self, hidden_size: int) -> None:
        if hidden_size != self.config.hidden_size:
            raise ValueError(
                f"this OmniSIFT selector was built for hidden size {self.config.hidden_size}, but the model's "
                f"hidden size is {hidden_size}; use a selector trained for this model"
            )

    def audio_logits(
        self,
        audio: torch.Tensor,
        video: torch.Tensor,
        audio_mask: torch.Tensor,
        video_mask: torch.Tensor,
        prior: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """VGAS logits for padded windows, plus log OmniZip saliency when the prior is on."""
        dtype = self.vgas.a_proj.weight.dtype
        if not self.config.visual_guidance:
            video, video_mask = video[:, :0], video_mask[:, :0]
        logits = self.vgas(audio.to(dtype), video.to(dtype), audio_mask, video_mask).float()
        if self.config.audio_prior == "omnizip":
            if prior is None:
                raise RuntimeError("this selector uses the OmniZip audio prior but no audio saliency was gathered")
            logits = logits + torch.log(prior.float().clamp_min(1e-12))
        return logits

    def video_scores(self, tokens: torch.Tensor, spatial: torch.Tensor, temporal: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        """STVP saliency `base` plus the learned residual, for one frame."""
        if not self.config.stvp_residual:
            return base.float()
        dtype = self.stvp.proj.weight.dtype
        residual = self.stvp(tokens.to(dtype), spatial.to(dtype), temporal.to(dtype)).float()
        return base.float() + residual

    def split_offsets(self, audio: list[torch.Tensor], video: list[torch.Tensor], shares: list[float], keep_fractions: list[float]) -> torch.Tensor:
        """The learned audio-share offsets (W,) of W windows (their audio and video tokens, the fixed split's
        audio share of each window's budget and the fraction of the window's tokens that budget keeps)."""
        if self.split is None:
            raise RuntimeError("this selector has no learned budget split (budget_split='fixed')")
        eps = 1e-3
        share = torch.tensor(shares, dtype=torch.float32).clamp(eps, 1 - eps)
        kept = torch.tensor(keep_fractions, dtype=torch.float32).clamp_min(eps)
        budget = torch.stack([torch.log(share / (1 - share)), torch.log(kept)], dim=-1).to(audio[0].device)
        dtype = self.split.proj.weight.dtype
        return self.split([a.to(dtype) for a in audio], [v.to(dtype) for v in video], budget).float()

    # ------------------------------------------------------------------ checkpoints
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
        """Load a selector folder (or an "org/name" Hub repo) written by `save_pretrained`, strictly.

        Why strict: transformers' loader treats any folder as a starting point, so a model folder or a
        selector config beside unrelated weights would load with random weights and only a log report.
        Here a missing path raises FileNotFoundError naming it (no Hub round trip for local-looking paths),
        a config.json of another model type and any missing or unexpected weight raise ValueError.
        """
        path = os.path.expanduser(os.fspath(pretrained_model_name_or_path))
        want_info = kwargs.pop("output_loading_info", False)
        if os.path.exists(path):
            _check_selector_folder(path)
        elif _looks_local(path):
            raise FileNotFoundError(f"no OmniSIFT selector folder at {path!r}: no such directory")
        try:
            model, info = super().from_pretrained(path, *args, output_loading_info=True, **kwargs)
        except OSError as e:
            if os.path.exists(path):
                raise
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise FileNotFoundError(
                f"no OmniSIFT selector at {path!r}: not a local folder, "
                f"and the Hugging Face Hub did not provide it ({reason})"
            ) from e
        _check_loading_info(path, info)
        return (model, info) if want_info else model

    # ------------------------------------------------------------------ published weights
    @classmethod
    def from_published(
        cls, source: str | os.PathLike | Mapping[str, torch.Tensor], hidden_size: int | None = None, **config_kwargs: Any
    ) -> "OmniSIFTSelector":
        """Convert the published OmniSIFT-7B selector weights (keys under `thinker.compressor.`).

        `source` is a state dict, a `.safetensors` shard, or a folder of shards. The learned STVP residual
        starts at zero (the published model's STVP is parameter-free) and no OmniZip prior is used. The
        selection follows the reference: audio top-k per 2 s chunk, and, when the compressor is given no
        retention, its default prune ratios rho_audio 0.3 / rho_video 0.7 (any of these can be overridden
        through `config_kwargs`).
        """
        tensors = _published_tensors(source)
        if not tensors:
            raise ValueError(f"no tensors under {PUBLISHED_PREFIX!r} found in {_describe(source)}")
        inferred = tensors["v_proj.weight"].shape[1] if "v_proj.weight" in tensors else None
        if inferred is None:
            raise ValueError(f"{_describe(source)} has no {PUBLISHED_PREFIX}v_proj.weight")
        if hidden_size is not None and hidden_size != inferred:
            raise ValueError(f"the published selector has hidden size {inferred}, not {hidden_size}")
        reference = dict(init="random", audio_prior="none", audio_topk="chunk", rho_audio=0.3, rho_video=0.7)
        config = OmniSIFTConfig(hidden_size=inferred, **{**reference, **config_kwargs})
        model = cls(config)
        missing, unexpected = model.vgas.load_state_dict(tensors, strict=False)
        if missing or unexpected:
            raise ValueError(f"published selector does not match VGAS: missing {missing}, unexpected {unexpected}")
        return model


def _looks_local(path: str) -> bool:
    """Whether a path that does not exist was meant as a local folder rather than an "org/name" Hub id.

    Local: absolute, starting with ".", not of the form "org/name" (a bare name, deeper paths,
    backslashes), or "org/name" whose "org" is an existing local folder (e.g. "checkpoints/my-selector").
    """
    if os.path.isabs(path) or path.startswith(".") or not _HUB_ID.fullmatch(path):
        return True
    return os.path.isdir(path.split("/", 1)[0])


def _check_selector_folder(path: str) -> None:
    """Refuse, before loading, an existing path that cannot be a selector checkpoint, with the reason."""
    if not os.path.isdir(path):
        raise ValueError(f"{path!r} is a file, not an OmniSIFT selector folder (config.json + weights)")
    config_file = os.path.join(path, "config.json")
    if not os.path.isfile(config_file):
        raise ValueError(
            f"{path!r} is not an OmniSIFT selector folder: it has no config.json "
            "(published OmniSIFT-7B shards load with OmniSIFTSelector.from_published)"
        )
    try:
        with open(config_file, encoding="utf-8") as f:
            model_type = json.load(f).get("model_type")
    except (OSError, ValueError, AttributeError) as e:
        raise ValueError(f"{config_file!r} is not a readable JSON config: {e}") from None
    if model_type != OmniSIFTConfig.model_type:
        raise ValueError(
            f"{path!r} is not an OmniSIFT selector folder: its config.json has model_type {model_type!r}, "
            f"not {OmniSIFTConfig.model_type!r} (is it a model folder?)"
        )


def _check_loading_info(path: str, info: Mapping[str, Any], shown: int = 4) -> None:
    """Raise ValueError when the loaded weights do not cover the selector exactly (no random leftovers)."""
    problems = []
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        keys = sorted(str(k) for k in info.get(kind) or ())
        if keys:
            more = f", ... ({len(keys)} in all)" if len(keys) > shown else ""
            problems.append(f"{kind.split('_')[0]} {', '.join(keys[:shown])}{more}")
    if problems:
        raise ValueError(f"{path!r} does not hold OmniSIFT selector weights: {'; '.join(problems)}")


def _published_tensors(source: str | os.PathLike | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if isinstance(source, Mapping):
        items = source.items()
    else:
        from safetensors import safe_open

        path = os.fspath(source)
        files = (
            sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".safetensors"))
            if os.path.isdir(path)
            else [path]
        )
        if not files:
            raise FileNotFoundError(f"no .safetensors files in {path}")
        items = []
        for file in files:
            with safe_open(file, framework="pt") as f:
                items += [(k, f.get_tensor(k)) for k in f.keys() if k.startswith(PUBLISHED_PREFIX)]
    return {k[len(PUBLISHED_PREFIX) :]: v for k, v in items if k.startswith(PUBLISHED_PREFIX)}


def _describe(source: Any) -> str:
    return "the given state dict" if isinstance(source, Mapping) else str(source)


def gumbel_noise(like: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel noise shaped like `like`: the top-k of scores + T * noise is a Plackett-Luce draw
    of k items with logits scores / T (Gumbel-top-k)."""
    u = torch.rand_like(like, dtype=torch.float32).clamp_(1e-6, 1 - 1e-6)
    return -torch.log(-torch.log(u)).to(like.dtype)


def soft_topk_gate(scores: torch.Tensor, k: int, temperature: float, gumbel: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard top-k mask and a straight-through gate whose value is the mask and whose gradient flows
    through sigmoid((score - threshold) / temperature), threshold halfway between the k-th and (k+1)-th score.
    """
    n = scores.shape[0]
    noisy = scores + gumbel_noise(scores) * temperature if gumbel else scores
    hard = torch.zeros(n, dtype=torch.bool, device=scores.device)
    if k >= n:
        hard[:] = True
        threshold = noisy.detach().min() - 1.0
    elif k <= 0:
        threshold = noisy.detach().max() + 1.0
    else:
        order = torch.sort(noisy.detach(), descending=True, stable=True)
        hard[order.indices[:k]] = True
        threshold = (order.values[k - 1] + order.values[k]) / 2
    soft = torch.sigmoid((noisy - threshold) / temperature)
    gate = hard.to(scores.dtype) + (soft - soft.detach())
    return hard, gate
