"""Shared by the multi-process tests: the overrides of a small run, torchrun as a subprocess, and, run
under torchrun with a JSON file of override lists, a worker that joins one gloo process group and runs
``sapo train`` for each list (the trainer then uses the existing group, as any script that calls
``init_process_group`` itself)."""

import json
import os
import subprocess
import sys
from pathlib import Path

# A reward that is a function of the response text, so the advantages are not all zero.
REWARD = """
def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    return (len(solution_str) % 3) / 2.0
"""


def base_overrides(model: str, files, reward: Path, run_dir: Path) -> list[str]:
    """8 prompts x 2 responses per step, 2 mini-batches, micro-batches of 1, 2 steps, CPU, 1 thread."""
    train_file, test_file = files
    return [
        f"actor_rollout_ref.model.path={model}",
        f"data.train_files={train_file}",
        f"data.val_files={test_file}",
        f"custom_reward_function.path={reward}",
        "data.train_batch_size=8",
        "data.max_prompt_length=64",
        "data.max_response_length=6",
        "actor_rollout_ref.rollout.n=2",
        "actor_rollout_ref.actor.ppo_mini_batch_size=4",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=1",
        "actor_rollout_ref.actor.optim.lr=1e-3",
        "actor_rollout_ref.actor.optim.lr_scheduler_type=constant",
        "trainer.total_training_steps=2",
        "trainer.save_freq=0",
        "trainer.test_freq=0",
        "trainer.val_before_train=false",
        "trainer.logger=[]",
        "trainer.device=cpu",
        "trainer.cpu_threads=1",
        f"trainer.default_local_dir={run_dir}",
        f"trainer.rollout_data_dir={run_dir / 'rollouts'}",
    ]


def torchrun(nproc: int, arguments: list[str], *, extra=(), timeout: float = 600, check: bool = True):
    """``python -m torch.distributed.run --standalone --nproc_per_node nproc ...`` (1 thread each)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    done = subprocess.run(
        command + list(extra) + arguments, env=env, capture_output=True, text=True, timeout=timeout
    )
    if os.environ.get("SAPO_TEST_LOG"):
        Path(os.environ["SAPO_TEST_LOG"]).write_text(done.stdout + "\n=====\n" + done.stderr)
    if check:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return done


def run_jobs(nproc: int, jobs: list[list[str]], job_file: Path, **kwargs):
    job_file.write_text(json.dumps(jobs))
    return torchrun(nproc, [str(Path(__file__)), str(job_file)], **kwargs)


if __name__ == "__main__":
    import torch.distributed as dist

    from sapo.cli import main

    dist.init_process_group("gloo")
    status = 0
    for overrides in json.loads(Path(sys.argv[1]).read_text()):
        status = main(["train", *overrides]) or status
    dist.destroy_process_group()
    sys.exit(status)
