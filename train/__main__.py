"""`python -m train <fit|validate|...> --config configs/<name>.yaml ...` (LightningCLI) or
`python -m train export <checkpoint> <out_dir>` (selector + LoRA adapter out of a checkpoint) or
`python -m train tiny-omni --config configs/tiny-omni.yaml` (train the tiny SynthAV model from scratch).

Expected errors (a missing manifest or checkpoint, a bad manifest record, a bad value) print one
`python -m train <command>: error: ...` line and exit non-zero (2 for usage errors); set SIFT_DEBUG=1
for the full traceback.
"""

from __future__ import annotations

import argparse
import sys


def _export(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train export",
        description="Export the trained selector (save_pretrained folder) and LoRA adapter (out_dir/lora) "
        "from a Lightning .ckpt file or a DeepSpeed ZeRO checkpoint directory.",
    )
    parser.add_argument("checkpoint", help="Lightning .ckpt file or DeepSpeed checkpoint directory")
    parser.add_argument("out_dir", help="folder to write config.json + model.safetensors (+ lora/)")
    args = parser.parse_args(argv)
    from train.export import export

    try:
        out = export(args.checkpoint, args.out_dir)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"export failed: {e}", file=sys.stderr)
        return 2
    extra = " (+ lora/)" if (out / "lora").is_dir() else ""
    print(f"exported selector to {out}{extra}")
    return 0


def _dispatch(argv: list[str] | None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "export":
        return _export(args[1:])
    if args and args[0] == "tiny-omni":
        from train.tiny_omni import main as tiny_omni_main

        return tiny_omni_main(args[1:])
    from train.cli import cli_main

    cli_main(argv)  # None: LightningCLI reads sys.argv itself (and DDP re-launches work)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run a subcommand; expected errors end it with one line (``sift.apps.cli.run_command``), not a traceback."""
    from sift.apps.cli import run_command

    args = list(sys.argv[1:] if argv is None else argv)
    command = args[0] if args and not args[0].startswith("-") else ""
    return run_command(f"python -m train {command}".rstrip(), lambda: _dispatch(argv))


if __name__ == "__main__":
    sys.exit(main())
