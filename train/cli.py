"""`python -m train fit --config configs/<name>.yaml`: LightningCLI over `SelectorModule` + `AVQADataModule`.

Every LightningCLI subcommand works (`fit`, `validate`, ...); `--print_config` shows the full config.
Module options are under `model.*`, data options under `data.*`, Trainer options under `trainer.*`;
`--ckpt_path last` (or a checkpoint path) resumes. Run through `python -m train`, expected errors (a missing
manifest, a bad record) print one line; `SIFT_DEBUG=1` shows the traceback.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.cli import LightningCLI

from train.data import AVQADataModule
from train.module import SelectorModule

__all__ = ["cli_main"]


def cli_main(args: list[str] | None = None, **kwargs: Any) -> LightningCLI:
    """Run the CLI (`args=None`: from `sys.argv`, which DDP re-launches rely on)."""
    options: dict[str, Any] = {"save_config_kwargs": {"overwrite": True}}
    options.update(kwargs)
    return LightningCLI(SelectorModule, AVQADataModule, args=args, **options)
