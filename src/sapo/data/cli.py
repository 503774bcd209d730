"""``sapo data TASK --out DIR``: write a built-in task's train.parquet and test.parquet (verl's layout).

Each task's difficulty knobs become options (``sapo data arithmetic --max-value 99 --ops +-``); the files
are the same for the same seed and options.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sapo.data.tasks import TASKS, generate_splits
from sapo.data.writer import write_rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    tasks = parser.add_subparsers(dest="task", metavar="TASK", required=True)
    for task in TASKS.values():
        sub = tasks.add_parser(task.name, help=f"{task.data_source} problems", description=task.description)
        sub.add_argument(
            "--out", required=True, type=Path, help="directory for train.parquet and test.parquet"
        )
        # 9600 + 200: the demo's sizes, within arithmetic's 10,000 distinct problems at its default knobs.
        sub.add_argument("--train-size", type=int, default=9600, help="train rows (default 9600)")
        sub.add_argument("--test-size", type=int, default=200, help="test rows (default 200)")
        sub.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
        for knob in task.knobs:
            sub.add_argument(
                "--" + knob.name.replace("_", "-"),
                dest=knob.name,
                type=knob.type,
                default=None,
                help=f"{knob.help} (default {knob.default})",
            )


def run(args: argparse.Namespace) -> int:
    task = TASKS[args.task]
    knobs = {knob.name: getattr(args, knob.name) for knob in task.knobs}
    train, test = generate_splits(
        task, train_size=args.train_size, test_size=args.test_size, seed=args.seed, knobs=knobs
    )
    train_path = write_rows(train, args.out / "train.parquet")
    test_path = write_rows(test, args.out / "test.parquet")
    print(f"wrote {len(train)} rows to {train_path} and {len(test)} rows to {test_path}")
    print(f"example: {train[0]['prompt'][0]['content']!r} -> {task.solution(train[0])!r}")
    return 0
