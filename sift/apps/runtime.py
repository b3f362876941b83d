"""Where an app runs: the device and dtype it resolves, its torch threads, the machine facts its results
record, and the peak memory of a run. `sift eval`, `sift bench` and the benchmark scripts share these, so
their result files describe the machine the same way."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import platform
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "resolve_device",
    "resolve_dtype",
    "torch_threads",
    "progress_bar",
    "equivalent_command",
    "args_or_options",
    "cpu_model",
    "loadavg",
    "machine_info",
    "PeakMemory",
]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """``"auto"``: the GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``"auto"``: bfloat16 on a GPU, float32 on the CPU (whose bfloat16 matmuls are slow)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose from auto, {', '.join(DTYPES)}")
    return DTYPES[name]


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass


def progress_bar(quiet: bool, total: int, desc: str, unit: str) -> Any:
    """A context manager: a tqdm bar on stderr, or a silent stand-in with the same methods when ``quiet``."""
    if quiet:
        return contextlib.nullcontext(_NoProgress())
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr)


def args_or_options(args: Any, options: dict[str, Any], build: Any) -> Any:
    """An app's parsed `args`, or a namespace `build(**options)` makes from keyword options; never both."""
    if args is None:
        return build(**options)
    if options:
        raise TypeError("pass either args or keyword options")
    return args


def equivalent_command(program: str, args: Any, defaults: dict[str, Any], given: Sequence[str] = ()) -> str:
    """The command line that reproduces `args` (results of a direct Python call record it, as CLI runs do).

    `given` options are always written, in order; the rest only where they differ from `defaults`.
    """
    parts = [program] + [f"--{k.replace('_', '-')} {getattr(args, k)}" for k in given]
    for key, value in vars(args).items():
        if key in defaults and key not in given and value != defaults[key] and value not in (None, False):
            flag = "--" + key.replace("_", "-")
            if value is True:
                parts.append(flag)
            elif isinstance(value, (list, tuple)):
                parts.append(flag + " " + " ".join(str(v) for v in value))
            else:
                parts.append(f"{flag} {value}")
    return " ".join(parts)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block on ``n`` torch threads (None or 0: leave them), restoring the previous count after."""
    previous = torch.get_num_threads()
    try:
        if n:
            torch.set_num_threads(int(n))
        yield
    finally:
        torch.set_num_threads(previous)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def loadavg() -> list[float] | None:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def machine_info(device: torch.device | str = "cpu") -> dict[str, Any]:
    """CPU / GPU model, usable cores, torch threads and library versions."""
    import transformers

    device = torch.device(device)
    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_start": loadavg(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
        info["cuda"] = torch.version.cuda
    return info


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _malloc_trim() -> None:
    """Give freed heap memory back to the OS (glibc), so the RSS before a run is what is really in use."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory of one run: CUDA allocator on GPU, the process's resident set on CPU.

    `start()` / `stop()`, or as a context manager (`peak_bytes`: the growth over the block). `trim=True`
    returns freed heap to the OS first, so the CPU baseline is what is really in use (benchmarks/train_step.py).
    """

    def __init__(self, device: torch.device, trim: bool = False):
        self.device = device
        self.trim = trim
        self.resettable = True
        self.peak_bytes = 0

    def start(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before = torch.cuda.memory_allocated(self.device)
            return
        if self.trim:
            _malloc_trim()
        try:  # "5" resets VmHWM to the current RSS (Linux >= 4.0)
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self.resettable = False
        self.before = (_status_kib("VmRSS") or 0) * 1024

    def stop(self) -> tuple[int, int]:
        """(peak bytes, peak - bytes in use at start)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = (_status_kib("VmHWM") or 0) * 1024
        return int(peak), int(peak - self.before)

    def __enter__(self) -> "PeakMemory":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.peak_bytes = self.stop()[1]

    @property
    def kind(self) -> str:
        if self.device.type == "cuda":
            return "torch.cuda.max_memory_allocated (reset per run)"
        if self.resettable:
            return "process peak RSS (VmHWM, reset per run via /proc/self/clear_refs)"
        return "process peak RSS (VmHWM since process start: /proc/self/clear_refs not writable)"
