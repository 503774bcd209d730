"""``sapo train [--config FILE.yaml] key=value ...``: train with verl's config keys.

With no arguments it runs the embedded default: the built-in tiny model, warm-started on the built-in
arithmetic task, trained with SAPO on a CPU in a few minutes.
"""

from __future__ import annotations

import argparse

from sapo.config import load_config
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
    from sapo.trainer.loop import train

    config = load_config(args.config, args.overrides)
    _quiet_library_progress_bars()
    summary = train(config)
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
