"""`python -m train export <checkpoint> <out_dir>`: a trained selector (and LoRA adapter) out of a checkpoint.

`checkpoint` is a Lightning `.ckpt` file or a DeepSpeed ZeRO checkpoint directory (what Lightning's
`DeepSpeedStrategy` saves: `<name>.ckpt/latest` + `<name>.ckpt/checkpoint/*_model_states.pt`, optimizer
shards beside them). Written:

- `out_dir/config.json` + `out_dir/model.safetensors`: the selector, `OmniSIFTSelector.from_pretrained(out_dir)`
  or `sift.compress(model, "omnisift", selector=out_dir, retention=...)`;
- `out_dir/lora/` when LoRA was trained: `adapter_config.json` + `adapter_model.safetensors` in peft's format,
  `peft.PeftModel.from_pretrained(thinker.model.language_model, out_dir / "lora")`.

A checkpoint is data, so every file is unpickled with `torch.load(weights_only=True)`: tensors and plain
containers only, plus the few record types DeepSpeed pickles into its ZeRO shards (`DEEPSPEED_SAFE_GLOBALS`).
A pickle that would call anything else (a hostile checkpoint running code on load) is refused with
`UnsafeCheckpointError` before it runs; DeepSpeed's own loader (which passes `weights_only=False`) is run
under torch's `TORCH_FORCE_WEIGHTS_ONLY_LOAD` for the same guarantee.
"""

from __future__ import annotations

import contextlib
import glob
import importlib
import os
import pickle
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "export",
    "load_checkpoint",
    "load_trainable_state",
    "safe_load",
    "UnsafeCheckpointError",
    "DEEPSPEED_SAFE_GLOBALS",
]

#: Non-tensor types in DeepSpeed's ZeRO optimizer shards (loss scaler, stage enum, fragment record): plain
#: records whose construction runs no user code, so `weights_only` may rebuild them.
DEEPSPEED_SAFE_GLOBALS: tuple[str, ...] = (
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
)

_FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
_FORCE_NO_WEIGHTS_ONLY = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


class UnsafeCheckpointError(ValueError):
    """A checkpoint whose pickle would call code that is not on the allowlist (refused, nothing was run)."""


def _is_refusal(error: Exception) -> bool:
    """torch's safe unpickler said no (as opposed to a truncated or damaged file)."""
    return isinstance(error, pickle.UnpicklingError) and "WeightsUnpickler error" in str(error)


def _refusal(path: Any, error: Exception) -> UnsafeCheckpointError:
    """One line naming what the pickle wanted to call (torch's own message spans a page)."""
    text = str(error)
    called = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    reason = re.search(r"WeightsUnpickler error: ([^\n]*)", text)
    if called:
        what = f"would call {called.group(1)}, which is not tensor or plain data"
    else:
        what = f"is not tensor or plain data ({(reason.group(1) if reason else text.strip().splitlines()[-1])[:200]})"
    return UnsafeCheckpointError(
        f"refusing to load {path}: its pickle {what}; a checkpoint that runs code on load is not trusted, nothing was run"
    )


def _deepspeed_globals() -> list[Any]:
    """The classes named in DEEPSPEED_SAFE_GLOBALS that this DeepSpeed version has."""
    found = []
    for name in DEEPSPEED_SAFE_GLOBALS:
        module, _, attr = name.rpartition(".")
        try:
            found.append(getattr(importlib.import_module(module), attr))
        except (ImportError, AttributeError):
            continue
    return found


def safe_load(path: str | os.PathLike, *, allow: list[Any] | None = None, mmap: bool = False) -> Any:
    """`torch.load(path, weights_only=True)` on CPU; `allow`: extra classes to rebuild (see DEEPSPEED_SAFE_GLOBALS).

    Raises UnsafeCheckpointError (a ValueError) for a pickle that would call anything else.
    """
    try:
        with torch.serialization.safe_globals(list(allow or [])):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        if not _is_refusal(e):
            raise
        raise _refusal(path, e) from e


@contextlib.contextmanager
def _weights_only_everywhere(allow: list[Any]) -> Iterator[None]:
    """Make every `torch.load` in this block safe, also those in third-party code passing `weights_only=False`.

    torch reads TORCH_FORCE_WEIGHTS_ONLY_LOAD at each call, and it overrides an explicit `weights_only=False`.
    """
    saved = {k: os.environ.pop(k, None) for k in (_FORCE_WEIGHTS_ONLY, _FORCE_NO_WEIGHTS_ONLY)}
    os.environ[_FORCE_WEIGHTS_ONLY] = "1"
    try:
        with torch.serialization.safe_globals(allow):
            yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

_LIGHTNING_WRAPPER_PREFIX = "_forward_module."


def _is_deepspeed_dir(path: Path) -> bool:
    if (path / "latest").is_file():
        return True
    return bool(glob.glob(str(path / "*" / "*model_states.pt")))


def _deepspeed_tag(path: Path) -> str:
    latest = path / "latest"
    if latest.is_file():
        return latest.read_text().strip()
    tags = sorted({Path(p).parent.name for p in glob.glob(str(path / "*" / "*model_states.pt"))})
    if len(tags) != 1:
        raise ValueError(f"{path}: DeepSpeed checkpoint without a 'latest' file and with tags {tags}; cannot choose")
    return tags[0]


def _load_deepspeed(path: Path) -> dict[str, Any]:
    try:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    except ImportError as e:  # pragma: no cover - deepspeed is a train extra
        raise ImportError(f"{path} is a DeepSpeed checkpoint; exporting it needs deepspeed installed") from e
    tag = _deepspeed_tag(path)
    tag_dir = path / tag
    # Client state (Lightning's hyper_parameters, our "sift" entry, loop state) sits in rank 0's model-states file.
    candidates = sorted(glob.glob(str(tag_dir / "*mp_rank_00_model_states.pt")))
    rank0 = [c for c in candidates if Path(c).name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt")]
    model_file = (rank0 or candidates or [None])[0]
    if model_file is None:
        raise FileNotFoundError(f"{tag_dir}: no *_model_states.pt file; not a complete DeepSpeed checkpoint")
    allow = _deepspeed_globals()
    client = safe_load(model_file, allow=allow, mmap=True)
    if not isinstance(client, dict):
        raise ValueError(f"{model_file} is not a DeepSpeed model-states file (not a dict)")
    try:
        with _weights_only_everywhere(allow):  # DeepSpeed reads every model-states and optimizer shard itself
            state = get_fp32_state_dict_from_zero_checkpoint(str(path), tag=tag, exclude_frozen_parameters=True)
    except pickle.UnpicklingError as e:
        if not _is_refusal(e):
            raise ValueError(f"{tag_dir}: a DeepSpeed shard cannot be read: {e}") from e
        raise _refusal(f"a shard of {tag_dir}", e) from e
    keep = {"sift", "hyper_parameters", "global_step", "epoch", "pytorch-lightning_version"}
    checkpoint = {k: v for k, v in client.items() if k in keep}
    checkpoint["state_dict"] = {_strip(k, _LIGHTNING_WRAPPER_PREFIX): v for k, v in state.items()}
    return checkpoint


def _strip(key: str, prefix: str) -> str:
    return key[len(prefix) :] if key.startswith(prefix) else key


def load_checkpoint(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """`{"state_dict", "sift", "hyper_parameters", ...}` from a Lightning file or a DeepSpeed directory."""
    path = Path(checkpoint)
    if path.is_dir():
        if not _is_deepspeed_dir(path):
            raise ValueError(
                f"{path} is a directory but not a DeepSpeed ZeRO checkpoint (no 'latest' file and no "
                "<tag>/*model_states.pt); pass a Lightning .ckpt file or the DeepSpeed checkpoint directory"
            )
        return _load_deepspeed(path)
    if not path.exists():
        raise FileNotFoundError(f"no such checkpoint: {path}")
    try:
        ckpt = safe_load(path)
    except UnsafeCheckpointError:
        raise
    except Exception as e:
        raise ValueError(f"{path} is neither a Lightning checkpoint file nor a DeepSpeed checkpoint directory: {e}") from e
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{path} is not a Lightning checkpoint (no 'state_dict' entry)")
    return ckpt


def load_trainable_state(checkpoint: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(trainable weights keyed as in `SelectorModule.state_dict()`, export info `checkpoint["sift"]`)."""
    ckpt = load_checkpoint(checkpoint)
    info = ckpt.get("sift")
    if not info:
        raise ValueError(f"{checkpoint} has no 'sift' entry: not written by train.module.SelectorModule")
    state = ckpt["state_dict"]
    trainable = {k: v for k, v in state.items() if k.startswith("selector.") or ".lora_" in k}
    return trainable, info


def export(checkpoint: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write the selector's `save_pretrained` folder (and `lora/` if LoRA was trained) to `out_dir`."""
    from sift.selector import OmniSIFTConfig, OmniSIFTSelector

    state, info = load_trainable_state(checkpoint)
    out = Path(out_dir)
    selector_state = {k[len("selector.") :]: v.float() for k, v in state.items() if k.startswith("selector.")}
    if not selector_state:
        raise ValueError(f"{checkpoint} holds no selector weights")
    config = OmniSIFTConfig.from_dict(dict(info["selector_config"]))
    selector = OmniSIFTSelector(config)
    missing, unexpected = selector.load_state_dict(selector_state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{checkpoint}: selector weights do not match its config: missing {missing}, unexpected {unexpected}")
    out.mkdir(parents=True, exist_ok=True)
    selector.save_pretrained(out)

    lora = {k: v for k, v in state.items() if ".lora_" in k}
    if lora:
        _export_lora(lora, info, out / "lora", checkpoint)
    return out


def _export_lora(lora: dict[str, torch.Tensor], info: dict[str, Any], out: Path, checkpoint: Any) -> None:
    from peft import LoraConfig
    from safetensors.torch import save_file

    prefix = info.get("lora_prefix", "model.model.language_model.")
    config_dict = dict(info.get("lora_config") or {})
    if not config_dict:
        raise ValueError(f"{checkpoint} holds LoRA weights but no LoRA config")
    adapter_name = "default"
    tensors = {}
    for key, value in lora.items():
        if not key.startswith(prefix):
            raise ValueError(f"{checkpoint}: LoRA weight {key} is outside the language model ({prefix}*)")
        # peft's saved format: the PeftModel's keys, adapter name removed.
        name = "base_model.model." + key[len(prefix) :].replace(f".{adapter_name}.", ".")
        tensors[name] = value.detach().contiguous().cpu()
    fields = {k: v for k, v in config_dict.items() if k in LoraConfig.__dataclass_fields__ and k != "peft_type"}
    config = LoraConfig(**fields)
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(out))
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
