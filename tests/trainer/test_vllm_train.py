"""`sapo train actor_rollout_ref.rollout.name=vllm` for real on CPU (marked vllm; skipped without vLLM).

Each run is a subprocess (vLLM keeps process-wide state: its process groups, a frozen GC), on the built-in
default task and its warm-started tiny model (cached under ~/.cache/sapo-rl after the first run).
"""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm


def _sapo_train(run_dir, *overrides, nproc=1, timeout=600):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    launcher = [sys.executable, "-m", "sapo"]
    if nproc > 1:
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        launcher = [*torchrun, f"--nproc_per_node={nproc}", "-m", "sapo"]
    command = launcher + ["train", f"trainer.default_local_dir={run_dir}", "trainer.device=cpu", *overrides]
    if nproc > 1:
        command.append(f"trainer.n_gpus_per_node={nproc}")
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _check_steps(records, steps):
    assert [r["step"] for r in records] == list(range(steps + 1))  # validation at 0, then each step
    for record in records[1:]:
        assert record["timing_s/weight_sync"] > 0
        # rollout (vLLM) and trainer log-probs of the sampled tokens, on synced weights
        assert record["rollout_corr/max_abs_diff"] < 1e-3, record["rollout_corr/max_abs_diff"]
    assert "val-core/acc/mean" in records[-1]


def test_sapo_train_with_the_vllm_engine(tmp_path):
    """With rollout correction and the gap guard on (docs/rollout_correction.md): on synced float32 weights
    vLLM's log-probs are the trainer's to ~1e-5, so the guard passes, the IS weights are ~1 and nothing is
    rejected."""
    steps = ["trainer.total_training_steps=3", "trainer.test_freq=3"]
    correction = [
        "algorithm.rollout_correction.rollout_is=token",
        "algorithm.rollout_correction.rollout_rs=token_k1",
        "algorithm.rollout_correction.rollout_rs_threshold=0.5_2.0",
        "actor_rollout_ref.rollout.max_logprob_gap=0.01",
    ]
    records = _sapo_train(tmp_path / "run", "actor_rollout_ref.rollout.name=vllm", *steps, *correction)
    _check_steps(records, 3)
    for record in records[1:]:
        assert record["rollout_corr/mean_abs_diff"] < 0.01
        assert abs(record["rollout_corr/rollout_is_mean"] - 1.0) < 1e-3
        assert record["rollout_corr/rollout_rs_masked_fraction"] == 0.0
        assert "actor/sapo/gate_weight_mean" in record


def test_two_process_torchrun_with_the_vllm_engine(tmp_path):
    """Each rank runs its own engine (external_launcher) on its own share of the prompts."""
    records = _sapo_train(
        tmp_path / "run", "actor_rollout_ref.rollout.name=vllm", "trainer.total_training_steps=2", nproc=2
    )
    _check_steps(records, 2)


def test_two_processes_share_one_tensor_parallel_vllm_engine(tmp_path):
    """tensor_model_parallel_size=2 over 2 processes: one engine, each rank generating its own prompts.
    A rank given another rank's responses would fail the log-prob check (the trainer scores its own
    prompts); greedy validation before training is the single-process hf engine's."""
    records = _sapo_train(
        tmp_path / "tp",
        "actor_rollout_ref.rollout.name=vllm",
        "actor_rollout_ref.rollout.tensor_model_parallel_size=2",
        "trainer.total_training_steps=2",
        "trainer.test_freq=2",
        nproc=2,
    )
    _check_steps(records, 2)
    single = _sapo_train(tmp_path / "hf", "trainer.val_only=true")  # one process, the hf engine
    assert records[0]["val-core/acc/mean"] == single[0]["val-core/acc/mean"]


@pytest.mark.slow
def test_vllm_lifts_accuracy_like_the_hf_engine(tmp_path):
    """The built-in default, once per engine: both lift greedy validation accuracy (docs/vllm.md)."""
    lifts = {}
    for name in ("hf", "vllm"):
        records = _sapo_train(tmp_path / name, f"actor_rollout_ref.rollout.name={name}", timeout=1800)
        lifts[name] = (records[0]["val-core/acc/mean"], records[-1]["val-core/acc/mean"])
    print("accuracy before -> after:", lifts)
    for before, after in lifts.values():
        assert after > before + 0.1
