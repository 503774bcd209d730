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
    steps = ["trainer.total_training_steps=3", "trainer.test_freq=3"]
    records = _sapo_train(tmp_path / "run", "actor_rollout_ref.rollout.name=vllm", *steps)
    _check_steps(records, 3)


def test_two_process_torchrun_with_the_vllm_engine(tmp_path):
    """Each rank runs its own engine (external_launcher) on its own share of the prompts."""
    records = _sapo_train(
        tmp_path / "run", "actor_rollout_ref.rollout.name=vllm", "trainer.total_training_steps=2", nproc=2
    )
    _check_steps(records, 2)


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
