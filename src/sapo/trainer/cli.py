"""``sapo train [--config FILE.yaml] key=value ...``: train with verl's config keys.

With no arguments it runs the embedded default: the built-in tiny model, warm-started on the built-in
arithmetic task, trained with SAPO on a CPU in a few minutes.

Several processes: under ``torchrun`` every process runs this command. Without torchrun,
``trainer.n_gpus_per_node=N`` (with ``trainer.nnodes=1``) starts the ``N`` processes here
(`sapo.distributed.launch`); ``trainer.nnodes > 1`` needs torchrun on every node, and the error says how.
"""

from __future__ import annotations

import argparse
import os

from sapo.config import load_config
from sapo.config.world_checks import configured_world_size
from sapo.distributed.env import launched_world_size
from sapo.distributed.launch import launch_local, torchrun_command
from sapo.errors import ConfigError, TrainingInterrupted, UserError
from sapo.run_dir import METRICS_FILE, TENSORBOARD_DIR


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file of overrides (verl's key names)")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted overrides, e.g. actor_rollout_ref.actor.policy_loss.loss_mode=sapo",
    )


def _quiet_library_progress_bars() -> None:
    """transformers draws a bar for every model load and save; the run's own bar is the one to read."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    processes = configured_world_size(config)
    if launched_world_size() == 1 and processes > 1:
        return _launch(args, config)
    return _train(config)


def _launch(args: argparse.Namespace, config) -> int:
    trainer = config.trainer
    if trainer.nnodes > 1:
        arguments = (["--config", args.config] if args.config else []) + list(args.overrides)
        raise ConfigError(
            f"trainer.nnodes={trainer.nnodes}: a multi-node run is started by torchrun on every node; run "
            f"`{torchrun_command(trainer.nnodes, trainer.n_gpus_per_node, arguments)}`"
        )
    launch_local(trainer.n_gpus_per_node, _worker, args.config, list(args.overrides))
    return 0


def _worker(config_file: str | None, overrides: list[str]) -> None:
    """One launched process: the same command, its errors printed as the CLI prints them."""
    import sys

    try:
        _train(load_config(config_file, overrides))
    except UserError as err:
        rank = os.environ.get("RANK", "?")
        print(f"sapo train (rank {rank}): error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    except TrainingInterrupted as stop:  # a checkpoint was saved, and the loop said where
        sys.exit(stop.exit_code)


def _train(config) -> int:
    from sapo.trainer.loop import train

    _quiet_library_progress_bars()
    summary = train(config)
    if os.environ.get("RANK", "0") != "0":
        return 0
    print(f"\nrun directory: {summary.run_dir}")
    print(f"  metrics:     {summary.run_dir / METRICS_FILE}")
    if "tensorboard" in config.trainer.logger:
        print(f"  tensorboard: tensorboard --logdir {summary.run_dir / TENSORBOARD_DIR}")
    if summary.export_dir is not None:
        print(f"  final model: {summary.export_dir} (AutoModelForCausalLM.from_pretrained loads it)")
    before = summary.first_validation or {}
    after = summary.final_metrics
    key = "val-core/acc/mean"
    if key in before and key in after:
        steps = summary.steps
        print(f"validation accuracy: {before[key]:.3f} before RL -> {after[key]:.3f} after {steps} steps")
    return 0
