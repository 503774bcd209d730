"""The `sapo` command.

Each sub-command lives in the package that owns it and exposes two functions:
``add_arguments(parser)`` and ``run(args) -> int``. This module only wires them together, imports each
lazily (so `sapo --help` stays fast), and turns a :class:`sapo.errors.UserError` into a one-paragraph
message and exit status 2 instead of a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from sapo import __version__
from sapo.errors import TrainingInterrupted, UserError

# name -> (module holding add_arguments/run, one-line help). Only implemented commands are listed.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": (
        "sapo.trainer.cli",
        "train a policy with RL (verl config keys; no arguments: the built-in demo)",
    ),
    "config": (
        "sapo.config.cli",
        "check a configuration (verl key names) and print it resolved, without training",
    ),
    "data": ("sapo.data.cli", "write a built-in task's train/test parquet files (arithmetic, countdown)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sapo",
        description="RL post-training of language models with SAPO (Soft Adaptive Policy Optimization).",
    )
    parser.add_argument("--version", action="version", version=f"sapo-rl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        module = importlib.import_module(module_name)
        module.add_arguments(sub_parser)
        sub_parser.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args._module.run(args) or 0)
    except UserError as err:
        print(f"sapo {args.command}: error: {err}", file=sys.stderr)
        return 2
    except TrainingInterrupted as stop:  # a checkpoint was saved, and the loop said where
        return stop.exit_code
    except KeyboardInterrupt:
        print(f"sapo {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
