"""N processes train exactly like one: the acceptance test of multi-process training (docs/distributed.md).

The same config and seed run in one process (no process group at all: the reference), then under torchrun
with 2 and 4 gloo processes. Every distributed run is compared with the single-process run, never with
another distributed run: gloo reductions under FSDP have had silent errors (pytorch#162338), which only an
independent reference catches.

Each configuration: 8 prompts x 2 responses per step, 2 mini-batches of 8 sequences per step, micro-batches
of 1 sequence (smaller than every rank's share), 2 steps, so 4 optimizer steps and a second rollout from
the updated weights (which checks the weight sync into each rank's rollout copy). The reward is a custom
function of the response text, so the advantages are not all zero.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sapo.config import load_config
from sapo.trainer.loop import train

WORKER = Path(__file__).with_name("distributed_worker.py")

REWARD = """
def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    return (len(solution_str) % 3) / 2.0
"""

CASES = {
    "sapo-token-mean": ["actor_rollout_ref.actor.loss_agg_mode=token-mean"],
    "sapo-seq-mean-kl": [
        "actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-mean",
        "actor_rollout_ref.actor.use_kl_loss=true",
        "actor_rollout_ref.actor.kl_loss_coef=0.1",
    ],
    "vanilla-token-mean-kl": [
        "actor_rollout_ref.actor.policy_loss.loss_mode=vanilla",
        "actor_rollout_ref.actor.loss_agg_mode=token-mean",
        "actor_rollout_ref.actor.use_kl_loss=true",
    ],
    "vanilla-seq-mean-gae": [
        "actor_rollout_ref.actor.policy_loss.loss_mode=vanilla",
        "actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-mean",
        "algorithm.adv_estimator=gae",
        "critic.optim.lr=1e-3",
    ],
    "gspo-seq-mean": [
        "actor_rollout_ref.actor.policy_loss.loss_mode=gspo",
        "actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-mean",
    ],
    "gspo-token-mean-kl-shuffle": [
        "actor_rollout_ref.actor.policy_loss.loss_mode=gspo",
        "actor_rollout_ref.actor.loss_agg_mode=token-mean",
        "actor_rollout_ref.actor.use_kl_loss=true",
        "actor_rollout_ref.actor.shuffle=true",
    ],
}


def base_overrides(model: str, files, reward: Path, run_dir: Path) -> list[str]:
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


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_qwen3, gsm8k_files):
    """``runs[world_size][case]``: the run directory of each case in 1, 2 and 4 processes."""
    root = tmp_path_factory.mktemp("equivalence")
    reward = root / "reward.py"
    reward.write_text(REWARD)
    dirs = {w: {case: root / f"w{w}" / case for case in CASES} for w in (1, 2, 4)}
    for case, extra in CASES.items():
        train(load_config(None, base_overrides(tiny_qwen3, gsm8k_files, reward, dirs[1][case]) + extra))
    for world_size in (2, 4):
        jobs = [
            base_overrides(tiny_qwen3, gsm8k_files, reward, dirs[world_size][c]) + CASES[c] for c in CASES
        ]
        job_file = root / f"jobs{world_size}.json"
        job_file.write_text(json.dumps(jobs))
        torchrun(world_size, [str(WORKER), str(job_file)])
    return dirs


def torchrun(nproc: int, arguments: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    done = subprocess.run(command + arguments, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return done


def rollouts(run_dir: Path) -> list[dict]:
    return [json.loads(line) for f in sorted((run_dir / "rollouts").glob("*.jsonl")) for line in f.open()]


@pytest.mark.parametrize("world_size", [2, 4])
@pytest.mark.parametrize("case", list(CASES))
def test_same_responses_as_one_process(runs, case, world_size):
    one, many = rollouts(runs[1][case]), rollouts(runs[world_size][case])
    assert len(one) == 2 * 16
    assert [(r["step"], r["input"], r["output"], r["score"]) for r in many] == [
        (r["step"], r["input"], r["output"], r["score"]) for r in one
    ]
    assert [r["advantage"] for r in many] == pytest.approx([r["advantage"] for r in one], abs=1e-5)
    assert len({r["score"] for r in one}) > 1  # the rewards differ, so the updates are not trivial


@pytest.mark.parametrize("world_size", [2, 4])
@pytest.mark.parametrize("case", list(CASES))
def test_same_parameters_as_one_process(runs, case, world_size, tiny_qwen3):
    initial = load_file(Path(tiny_qwen3) / "model.safetensors")
    one = load_file(runs[1][case] / "hf_model" / "model.safetensors")
    many = load_file(runs[world_size][case] / "hf_model" / "model.safetensors")
    assert one.keys() == many.keys()
    moved = max(float((one[k].float() - initial[k].float()).abs().max()) for k in one if k in initial)
    assert moved > 1e-3  # training changed the weights
    for name in one:
        torch.testing.assert_close(many[name], one[name], atol=1e-5, rtol=0, msg=name)
