"""Per-sample cost of the reward managers: in-process calls vs worker processes (needed for timeouts).

PYTHONPATH=src python3 benchmarks/reward_managers.py --samples 512
"""

from __future__ import annotations

import argparse
import time

from sapo.data.tasks import generate_splits, get_task
from sapo.rewards import RewardSample, build_reward_manager


def batch_for(task_name: str, n: int) -> list[RewardSample]:
    task = get_task(task_name)
    rows, _ = generate_splits(task, train_size=n, test_size=0, seed=0)
    return [
        RewardSample(r["data_source"], task.solution(r), r["reward_model"]["ground_truth"], uid=i)
        for i, r in enumerate(rows)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=512)
    args = parser.parse_args()
    gsm8k = [RewardSample("openai/gsm8k", "so #### 72", "72") for _ in range(args.samples)]
    math = [RewardSample("lighteval/MATH", "\\boxed{\\frac{1}{2}}", "0.5") for _ in range(args.samples)]
    batches = {"sapo/arithmetic": batch_for("arithmetic", args.samples), "openai/gsm8k": gsm8k, "MATH": math}
    print("| data_source | mode | first batch ms/sample | next batch ms/sample |")
    print("|---|---|---|---|")
    for name, samples in batches.items():
        for mode, kwargs in [
            ("in-process", {}),
            ("2 workers, timeout 10 s", {"timeout_s": 10.0, "num_workers": 2}),
        ]:
            manager = build_reward_manager("naive", **kwargs)
            timings = []
            for _ in range(2):
                start = time.perf_counter()
                result = manager(samples)
                timings.append((time.perf_counter() - start) * 1000 / len(samples))
                assert all(score == 1.0 for score in result.scores)
            manager.close()
            print(f"| {name} | {mode} | {timings[0]:.3f} | {timings[1]:.3f} |", flush=True)


if __name__ == "__main__":
    main()
