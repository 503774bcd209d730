"""``sapo config``: load, validate and print a configuration without training.

    sapo config [--config FILE.yaml] [--world-size N] [--dump OUT.yaml] key=value ...

Prints the start-up report (resolved config, derived quantities, ignored verl keys, defaults that differ
from verl's) so a verl command line can be checked before any compute. Register it in
``sapo.cli.COMMANDS`` as ``"config": ("sapo.config.cli", HELP)``.
"""

from __future__ import annotations

import argparse

from sapo.config.loader import load_config
from sapo.config.preflight import preflight
from sapo.config.render import dump_config, format_startup_report
from sapo.config.validate import derived_quantities, validate
from sapo.config.world_checks import check_world_size, configured_world_size

HELP = "check a configuration (verl key names) and print it resolved, without training"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file of overrides, applied before the key=value ones")
    parser.add_argument(
        "--world-size",
        type=int,
        default=None,
        help="processes the run will use (default: trainer.nnodes x trainer.n_gpus_per_node)",
    )
    parser.add_argument("--dump", help="also write the resolved config to this YAML file")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="overrides, e.g. data.train_batch_size=64"
    )


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    world_size = configured_world_size(config) if args.world_size is None else args.world_size
    check_world_size(config, world_size)
    validate(config, world_size=world_size)
    preflight(config)  # what sapo train would refuse on this machine, before any compute
    print(format_startup_report(config, derived_quantities(config, world_size=world_size)), end="")
    if args.dump:
        print(f"resolved config written to {dump_config(config, args.dump)}")
    return 0
