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
from pathlib import Path

import pytest
import torch
from distributed_worker import REWARD, base_overrides, run_jobs
from safetensors.torch import load_file

from sapo.config import load_config
from sapo.trainer.loop import train

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
    "vanilla-seq-mean-gae-checkpointing": [
        "actor_rollout_ref.actor.policy_loss.loss_mode=vanilla",
        "actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-mean",
        "algorithm.adv_estimator=gae",
        "critic.optim.lr=1e-3",
        "actor_rollout_ref.model.enable_gradient_checkpointing=true",
        "critic.model.enable_gradient_checkpointing=true",
    ],
    "moe-hf-dynamic-batch": [
        "actor_rollout_ref.model.path={moe}",
        "actor_rollout_ref.model.impl=hf",
        "actor_rollout_ref.actor.use_dynamic_bsz=true",
        "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=90",
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


# Sharding choices that must not change the result either, on the distributed runs only: fsdp_size=2 is
# plain FSDP on 2 processes and HSDP (2 replicas of 2 shards) on 4; the gathered weights kept for backward.
DISTRIBUTED_ONLY = {
    "sapo-token-mean": [
        "actor_rollout_ref.actor.fsdp_config.fsdp_size=2",
        "actor_rollout_ref.actor.fsdp_config.reshard_after_forward=false",
    ],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_qwen3, tiny_qwen3_moe, gsm8k_files):
    """``runs[world_size][case]``: the run directory of each case in 1, 2 and 4 processes."""
    root = tmp_path_factory.mktemp("equivalence")
    reward = root / "reward.py"
    reward.write_text(REWARD)
    dirs = {w: {case: root / f"w{w}" / case for case in CASES} for w in (1, 2, 4)}
    cases = {case: [o.format(moe=tiny_qwen3_moe) for o in extra] for case, extra in CASES.items()}
    for case, extra in cases.items():
        train(load_config(None, base_overrides(tiny_qwen3, gsm8k_files, reward, dirs[1][case]) + extra))
    for world_size in (2, 4):
        jobs = [
            base_overrides(tiny_qwen3, gsm8k_files, reward, dirs[world_size][case])
            + extra
            + DISTRIBUTED_ONLY.get(case, [])
            for case, extra in cases.items()
        ]
        run_jobs(world_size, jobs, root / f"jobs{world_size}.json")
    return dirs


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
def test_same_parameters_as_one_process(runs, case, world_size, tiny_qwen3, tiny_qwen3_moe):
    model = tiny_qwen3_moe if case.startswith("moe") else tiny_qwen3
    initial = load_file(Path(model) / "model.safetensors")
    one = load_file(runs[1][case] / "hf_model" / "model.safetensors")
    many = load_file(runs[world_size][case] / "hf_model" / "model.safetensors")
    assert one.keys() == many.keys()
    moved = max(float((one[k].float() - initial[k].float()).abs().max()) for k in one if k in initial)
    assert moved > 1e-3  # training changed the weights
    for name in one:
        torch.testing.assert_close(many[name], one[name], atol=1e-5, rtol=0, msg=name)
