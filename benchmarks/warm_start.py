"""Warm-start cost and outcome per seed: steps and seconds to the dev-accuracy target.

    PYTHONPATH=src python3 benchmarks/warm_start.py --task arithmetic --seeds 0 1 2 3 4

Each seed trains from scratch in a fresh temporary cache directory and prints one table row.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from sapo.demo.warm_start import warm_start, warm_start_info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="arithmetic")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-seconds", type=float, default=300.0)
    parser.add_argument("--num-threads", type=int, default=1)
    args = parser.parse_args()
    print("| task | seed | dev accuracy | reached 0.2 | steps | train s | call s | cached call s |")
    print("|---|---|---|---|---|---|---|---|")
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as cache_dir:
            kwargs = dict(cache_dir=cache_dir, seed=seed, max_seconds=args.max_seconds)
            start = time.monotonic()
            model_dir = warm_start(args.task, num_threads=args.num_threads, **kwargs)
            call_s = time.monotonic() - start
            start = time.monotonic()
            warm_start(args.task, **kwargs)
            cached_s = time.monotonic() - start
            info = warm_start_info(model_dir)
        print(
            f"| {args.task} | {seed} | {info['dev_accuracy']:.3f} | {info['reached_target']} | "
            f"{info['steps']} | {info['seconds']:.1f} | {call_s:.1f} | {cached_s:.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
