"""sapo-rl vs TRL's GRPOTrainer(loss_type="sapo") on the same tiny model, task, data and settings.

Setup (issue 5): tiny Qwen3 (hidden 256, intermediate 768, 4 layers, 4 heads, head_dim 64, the 104-token
character vocabulary of ``sapo.models.tiny``), "a+b=" prompts of the built-in arithmetic task scored by the
same function on both sides, 8 prompts x 8 samples per rollout, temperature 1, fp32, lr 1e-5 constant,
no KL, SAPO loss, 20 rollouts, the first excluded from the timing. sapo accumulates each mini-batch over
micro-batches of 8 sequences (the same gradient as one pass, tested in tests/trainer/test_actor.py);
``--micro-batch`` changes that.

Each run is its own process (so peak RSS is that run's own), and the two frameworks alternate. A "step"
is one rollout: generate 64 responses, score, update. In the off-policy variant each rollout is split into
4 mini-batches (TRL: ``steps_per_generation=4`` with 16 sequences per optimizer step; sapo:
``ppo_mini_batch_size=2`` prompts), and TRL's 4 optimizer steps of one generation count as one step.

    python benchmarks/vs_trl.py                 # all three variants, 2 repeats each
    python benchmarks/vs_trl.py --variants on-policy --repeats 3
    python benchmarks/vs_trl.py --variants on-policy --profile   # cProfile of sapo's run, no TRL
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = {  # name -> (mini-batches per rollout, new tokens)
    "on-policy": (1, 32),
    "4-mini-batches": (4, 32),
    "128-tokens": (1, 128),
}
PROMPTS, SAMPLES, ROLLOUTS = 8, 8, 20


def prepare(workdir: Path) -> dict:
    """The tiny model and the prompts, written once and shared by every run."""
    from sapo.data.tasks import generate_splits, get_task
    from sapo.data.writer import write_rows
    from sapo.models.tiny import TinyModelSpec, build_tiny_model

    model_dir = build_tiny_model(workdir / "model", TinyModelSpec(arch="qwen3"), seed=0)
    train, _ = generate_splits(get_task("arithmetic"), train_size=PROMPTS * ROLLOUTS * 2, test_size=0, seed=0)
    parquet = write_rows(train, workdir / "train.parquet")
    return {"model": str(model_dir), "parquet": str(parquet)}


# ------------------------------------------------------------------------------------------------ sapo
def run_sapo(paths: dict, mini_batches: int, new_tokens: int, workdir: Path, micro_batch: int = 8) -> dict:
    from sapo.config import load_config
    from sapo.run_dir import read_metrics
    from sapo.trainer.loop import train

    overrides = [
        f"actor_rollout_ref.model.path={paths['model']}",
        f"data.train_files={paths['parquet']}",
        f"data.train_batch_size={PROMPTS}",
        f"data.max_response_length={new_tokens}",
        f"actor_rollout_ref.rollout.n={SAMPLES}",
        "actor_rollout_ref.rollout.temperature=1.0",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={PROMPTS // mini_batches}",
        # Gradient accumulation over micro-batches: the same gradient (tested), less memory.
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={micro_batch}",
        "actor_rollout_ref.actor.optim.lr=1e-5",
        "actor_rollout_ref.actor.optim.weight_decay=0.0",
        "actor_rollout_ref.actor.optim.lr_scheduler_type=constant",
        "actor_rollout_ref.actor.policy_loss.loss_mode=sapo",
        f"trainer.total_training_steps={ROLLOUTS}",
        "trainer.val_before_train=false",
        "trainer.export_hf=false",
        "trainer.logger=[]",
        f"trainer.default_local_dir={workdir / 'sapo_run'}",
    ]
    start = time.perf_counter()
    train(load_config(None, overrides))
    wall = time.perf_counter() - start
    rows = read_metrics(workdir / "sapo_run" / "metrics.jsonl")
    steps = [r["timing_s/step"] for r in rows][1:]
    tokens = [r["response_length/mean"] * PROMPTS * SAMPLES for r in rows][1:]
    return {"step_s": steps, "tokens": tokens, "wall_s": wall}


# ------------------------------------------------------------------------------------------------- TRL
def run_trl(paths: dict, mini_batches: int, new_tokens: int, workdir: Path) -> dict:
    import pyarrow.parquet as pq
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from sapo.data.tasks import get_task

    task = get_task("arithmetic")
    rows = pq.read_table(paths["parquet"]).to_pylist()
    dataset = Dataset.from_list(
        [{"prompt": r["prompt"][0]["content"], "answer": r["reward_model"]["ground_truth"]} for r in rows]
    )

    def reward(completions, answer, **_):
        return [task.score(c, a) for c, a in zip(completions, answer)]

    class StepClock(TrainerCallback):
        def __init__(self):
            self.times, self.lengths, self.start = [], [], None

        def on_step_begin(self, args, state, control, **_):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **_):
            self.times.append(time.perf_counter() - self.start)

        def on_log(self, args, state, control, logs=None, **_):
            if logs and "completions/mean_length" in logs:
                self.lengths.append(float(logs["completions/mean_length"]))

    per_step = PROMPTS * SAMPLES // mini_batches
    args = GRPOConfig(
        output_dir=str(workdir / "trl_run"),
        loss_type="sapo",
        num_generations=SAMPLES,
        per_device_train_batch_size=per_step,
        steps_per_generation=mini_batches,
        max_completion_length=new_tokens,
        temperature=1.0,
        learning_rate=1e-5,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        beta=0.0,
        max_steps=ROLLOUTS * mini_batches,
        use_cpu=True,
        bf16=False,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        seed=0,
    )
    clock = StepClock()
    trainer = GRPOTrainer(
        model=paths["model"], reward_funcs=reward, args=args, train_dataset=dataset, callbacks=[clock]
    )
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    # One rollout = mini_batches optimizer steps (the first of them generates).
    rollouts = [sum(clock.times[i : i + mini_batches]) for i in range(0, len(clock.times), mini_batches)]
    lengths = clock.lengths[::mini_batches][: len(rollouts)]
    tokens = [length * PROMPTS * SAMPLES for length in lengths]
    return {"step_s": rollouts[1:], "tokens": tokens[1:], "wall_s": wall}


# --------------------------------------------------------------------------------------------- driver
def child(framework: str, variant: str, paths: dict, micro_batch: int) -> None:
    mini_batches, new_tokens = VARIANTS[variant]
    with tempfile.TemporaryDirectory() as tmp:
        if framework == "sapo":
            result = run_sapo(paths, mini_batches, new_tokens, Path(tmp), micro_batch)
        else:
            result = run_trl(paths, mini_batches, new_tokens, Path(tmp))
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result), flush=True)


def run_child(framework: str, variant: str, paths: dict, micro_batch: int) -> dict:
    cmd = [sys.executable, __file__, "--child", framework, "--variant", variant, "--paths", json.dumps(paths)]
    cmd += ["--micro-batch", str(micro_batch)]
    env = {**os.environ, "TQDM_DISABLE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{framework} {variant} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def summarise(results: list[dict]) -> dict:
    steps = [s for r in results for s in r["step_s"]]
    tokens = sum(t for r in results for t in r["tokens"])
    return {
        "median_step_s": statistics.median(steps),
        "gen_tokens_per_s": tokens / sum(steps),
        "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in results),
    }


def profile_sapo(variants: list[str], micro_batch: int) -> None:
    """Where sapo's time goes: cProfile of one run per variant, in this process, top 30 by cumulative time."""
    import cProfile
    import pstats

    with tempfile.TemporaryDirectory() as tmp:
        paths = prepare(Path(tmp))
        for variant in variants:
            mini_batches, new_tokens = VARIANTS[variant]
            profiler = cProfile.Profile()
            profiler.enable()
            result = run_sapo(paths, mini_batches, new_tokens, Path(tmp) / variant, micro_batch)
            profiler.disable()
            print(f"\n== {variant}: median {statistics.median(result['step_s']):.3f} s/step")
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--micro-batch", type=int, default=8, help="sapo's ppo_micro_batch_size_per_gpu")
    parser.add_argument("--profile", action="store_true", help="cProfile sapo's run of each variant instead")
    parser.add_argument("--child", choices=["sapo", "trl"])
    parser.add_argument("--variant", choices=list(VARIANTS))
    parser.add_argument("--paths")
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.variant, json.loads(args.paths), args.micro_batch)
    if args.profile:
        return profile_sapo(args.variants, args.micro_batch)
    with tempfile.TemporaryDirectory() as tmp:
        paths = prepare(Path(tmp))
        rows = []
        for variant in args.variants:
            results = {"trl": [], "sapo": []}
            for _ in range(args.repeats):
                for framework in ("trl", "sapo"):  # alternate, so drift in machine load hits both
                    results[framework].append(run_child(framework, variant, paths, args.micro_batch))
            trl, sapo = summarise(results["trl"]), summarise(results["sapo"])
            rows.append((variant, trl, sapo))
    print(f"\n{'variant':<16}{'framework':<10}{'s/step (median)':>17}{'gen tok/s':>11}{'peak RSS MiB':>14}")
    for variant, trl, sapo in rows:
        for name, r in (("trl", trl), ("sapo", sapo)):
            print(
                f"{variant:<16}{name:<10}{r['median_step_s']:>17.3f}{r['gen_tokens_per_s']:>11.0f}"
                f"{r['peak_rss_mib']:>14.0f}"
            )
        speed = trl["median_step_s"] / sapo["median_step_s"]
        memory = sapo["peak_rss_mib"] / trl["peak_rss_mib"]
        print(
            f"{variant:<16}{'ratio':<10}{'steps/s x' + format(speed, '.2f'):>17}{'':>11}"
            f"{'RSS x' + format(memory, '.2f'):>14}"
        )


if __name__ == "__main__":
    main()
