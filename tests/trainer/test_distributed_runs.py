"""Multi-process runs as a user meets them: sharded checkpoints that resume at another world size, the
self-launch of ``sapo train trainer.n_gpus_per_node=N``, and failures (a rank that raises, a rank killed
with SIGKILL) that stop the job instead of hanging it, and that torchrun's restarts recover from."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from distributed_worker import REWARD, base_overrides, run_jobs, torchrun
from safetensors.torch import load_file

from sapo.cli import main
from sapo.config import load_config
from sapo.run_dir import META_FILE, SHARDS_DIR, TRACKER_FILE, latest_checkpoint
from sapo.trainer.loop import train

# Four steps of 2 optimizer steps each, a checkpoint after every step.
FOUR_STEPS = ["trainer.total_training_steps=4", "trainer.save_freq=1", "data.train_batch_size=4"]


@pytest.fixture
def setup(tmp_path, tiny_qwen3, gsm8k_files):
    reward = tmp_path / "reward.py"
    reward.write_text(REWARD)
    return lambda run_dir, reward_file=reward: base_overrides(tiny_qwen3, gsm8k_files, reward_file, run_dir)


def weights(run_dir: Path) -> dict:
    return load_file(run_dir / "hf_model" / "model.safetensors")


def assert_same(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=0, msg=name)


def cut_back_to(run_dir: Path, step: int) -> None:
    """The run directory as a crash right after saving ``step`` leaves it."""
    for path in run_dir.glob("global_step_*"):
        if int(path.name.rsplit("_", 1)[1]) > step:
            shutil.rmtree(path)
    (run_dir / TRACKER_FILE).write_text(str(step))
    shutil.rmtree(run_dir / "hf_model", ignore_errors=True)


def test_a_two_process_checkpoint_resumes_at_one_and_at_four_processes(tmp_path, setup):
    full = tmp_path / "two"
    run_jobs(2, [setup(full) + FOUR_STEPS], tmp_path / "jobs.json")
    saved = full / "global_step_2"
    meta = json.loads((saved / META_FILE).read_text())
    assert (meta["format"], meta["world_size"]) == (2, 2) and (saved / SHARDS_DIR / ".metadata").is_file()
    assert {p.name for p in saved.glob("rng_state_rank*.pt")} == {"rng_state_rank0.pt", "rng_state_rank1.pt"}
    # a half-written later step (no meta.json) is never picked by resume_mode=auto
    (full / "global_step_9").mkdir()
    assert latest_checkpoint(full).name == "global_step_4"
    shutil.rmtree(full / "global_step_9")

    at_one, at_four = tmp_path / "one", tmp_path / "four"
    for copy in (at_one, at_four):
        shutil.copytree(full, copy)
        cut_back_to(copy, 2)
    train(load_config(None, setup(at_one) + FOUR_STEPS))
    run_jobs(4, [setup(at_four) + FOUR_STEPS], tmp_path / "jobs4.json")
    for resumed in (at_one, at_four):
        assert_same(weights(resumed), weights(full), atol=1e-6)
        assert json.loads((resumed / "global_step_4" / META_FILE).read_text())["step"] == 4
    # and the whole trajectory is the single-process one
    alone = tmp_path / "alone"
    train(load_config(None, setup(alone) + FOUR_STEPS))
    assert_same(weights(full), weights(alone), atol=1e-5)


def test_a_one_process_checkpoint_resumes_at_two_processes(tmp_path, setup):
    alone = tmp_path / "alone"
    train(load_config(None, setup(alone) + FOUR_STEPS))
    resumed = tmp_path / "resumed"
    shutil.copytree(alone, resumed)
    cut_back_to(resumed, 2)
    run_jobs(2, [setup(resumed) + FOUR_STEPS], tmp_path / "jobs.json")
    assert_same(weights(resumed), weights(alone), atol=1e-5)


def sapo(*arguments: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "sapo", *arguments]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def test_sapo_train_starts_its_own_processes(tmp_path, setup):
    launched, alone = tmp_path / "launched", tmp_path / "alone"
    done = sapo("train", *setup(launched), "trainer.n_gpus_per_node=2")
    assert done.returncode == 0, done.stderr[-4000:]
    assert "world_size" in done.stdout and "device_mesh" in done.stdout  # rank 0's start-up report
    assert done.stdout.count("== resolved config ==") == 1  # printed once, by rank 0
    train(load_config(None, setup(alone)))
    assert_same(weights(launched), weights(alone), atol=1e-5)
    metrics = [json.loads(line) for line in (launched / "metrics.jsonl").open()]
    assert [m["step"] for m in metrics] == [1, 2]  # one writer


def test_several_nodes_without_torchrun_print_the_command_to_run(tmp_path, capsys):
    assert main(["train", "trainer.nnodes=2", "trainer.n_gpus_per_node=4", "trainer.device=cpu"]) == 2
    err = capsys.readouterr().err
    assert "torchrun --nnodes 2 --nproc_per_node 4" in err and "-m sapo train" in err
    assert "trainer.nnodes=2" in err and "Traceback" not in err


RAISES_ON_RANK_1 = """
import os

def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    if os.environ.get("RANK") == "1":
        raise ValueError("scorer broke on rank 1")
    return 0.0
"""

# Kills its own process (rank 1) once, after the run has saved two checkpoints.
KILLS_RANK_1_ONCE = """
import os, signal
from pathlib import Path

RUN_DIR, MARKER = Path({run_dir!r}), Path({marker!r})

def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    done = len(list(RUN_DIR.glob("global_step_*/meta.json")))
    if os.environ.get("RANK") == "1" and done >= 2 and not MARKER.exists():
        MARKER.write_text("killed")
        os.kill(os.getpid(), signal.SIGKILL)
    return (len(solution_str) % 3) / 2.0
"""


def test_a_rank_that_raises_stops_every_rank_with_its_name(tmp_path, setup):
    reward = tmp_path / "raises.py"
    reward.write_text(RAISES_ON_RANK_1)
    done = sapo("train", *setup(tmp_path / "run", reward), "trainer.n_gpus_per_node=2", timeout=300)
    assert done.returncode == 2
    assert "scorer broke on rank 1" in done.stderr and "rank 1 failed" in done.stderr


def killing_job(tmp_path, setup):
    run_dir, marker = tmp_path / "run", tmp_path / "killed"
    reward = tmp_path / "kills.py"
    reward.write_text(KILLS_RANK_1_ONCE.format(run_dir=str(run_dir), marker=str(marker)))
    # the reward kills the process it runs in: the trainer's (in-process, without a reward timeout)
    job = setup(run_dir, reward) + FOUR_STEPS + ["trainer.resume_mode=auto", "reward_model.timeout_s=null"]
    return run_dir, marker, [job]


def test_a_killed_rank_stops_the_job_and_keeps_the_last_checkpoint(tmp_path, setup):
    run_dir, marker, jobs = killing_job(tmp_path, setup)
    stopped = run_jobs(2, jobs, tmp_path / "jobs.json", check=False, timeout=300)
    assert stopped.returncode != 0 and marker.exists()
    assert "Signal 9 (SIGKILL)" in stopped.stderr and "rank: 1" in stopped.stderr
    assert latest_checkpoint(run_dir).name == "global_step_2"  # the last complete checkpoint is kept
    rerun = run_jobs(2, jobs, tmp_path / "jobs2.json", timeout=300)  # the marker is there: no kill now
    assert rerun.returncode == 0 and latest_checkpoint(run_dir).name == "global_step_4"
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").open()]
    assert steps == [1, 2, 3, 4]  # steps 1-2 kept, 3-4 from the resumed run


def test_torchrun_restarts_resume_from_the_last_checkpoint(tmp_path, setup):
    """``torchrun --max-restarts 1 -m sapo train ... resume_mode=auto``: rank 1 is killed after step 2's
    checkpoint, torchrun starts both ranks again, and they finish from that checkpoint. Each attempt's ranks
    meet under their own store prefix (torchrun's shared store kept the dead attempt's addresses and made
    about one restart in three fail to connect before, pytorch#135712)."""
    run_dir, marker, jobs = killing_job(tmp_path, setup)
    arguments = ["-m", "sapo", "train", *jobs[0]]
    restarted = torchrun(2, arguments, extra=["--max-restarts=1"], timeout=300)
    assert marker.exists() and restarted.returncode == 0
    assert latest_checkpoint(run_dir).name == "global_step_4"
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").open()]
    assert steps == [1, 2, 3, 4]


TWO_GPUS = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")


@pytest.mark.gpu
@TWO_GPUS
def test_two_gpus_with_nccl_train_like_one_gpu(tmp_path, setup):
    """nccl, one process per GPU, float32: the same weights as one GPU."""
    on_gpu = [o.replace("trainer.device=cpu", "trainer.device=cuda") for o in setup(tmp_path / "x")]
    one, two = tmp_path / "one", tmp_path / "two"
    train(load_config(None, [o for o in on_gpu if "default_local_dir" not in o]
                      + [f"trainer.default_local_dir={one}"]))  # fmt: skip
    run_jobs(2, [[o for o in on_gpu if "default_local_dir" not in o] + [f"trainer.default_local_dir={two}"]],
             tmp_path / "jobs.json")  # fmt: skip
    assert_same(weights(two), weights(one), atol=1e-5)


@pytest.mark.gpu
@TWO_GPUS
def test_two_gpus_with_bf16_mixed_precision_and_offload_train(tmp_path, setup):
    """MixedPrecisionPolicy (bf16 compute, fp32 reduce) and CPUOffloadPolicy run end to end and move the
    weights; bf16 rounding makes them differ from fp32, so only progress and finiteness are checked."""
    run_dir = tmp_path / "run"
    extra = [
        "trainer.device=cuda",
        "actor_rollout_ref.actor.fsdp_config.mixed_precision={param_dtype: bf16, reduce_dtype: fp32}",
        "actor_rollout_ref.actor.fsdp_config.param_offload=true",
    ]
    run_jobs(2, [setup(run_dir) + extra], tmp_path / "jobs.json")
    trained = weights(run_dir)
    assert all(torch.isfinite(t).all() for t in trained.values())
