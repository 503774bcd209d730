"""Preemption and Ctrl-C: SIGTERM / SIGINT finish the step, save, say how to resume and exit 128 + signal;
a second signal stops at once; ``trainer.save_every_minutes`` saves on a clock. The signals are real
(``os.kill`` on the process itself); the runs are real ``python -m sapo train`` processes."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from distributed_worker import REWARD, base_overrides, torchrun
from safetensors.torch import load_file

from sapo.config import load_config
from sapo.distributed.world import World
from sapo.run_dir import latest_checkpoint
from sapo.trainer.loop import train
from sapo.trainer.stopping import SaveClock, StopSignals, decide

# Sends SIGTERM to its own process while step 2's responses are scored (rank 1 only, when RANK is set).
SIGNALS_ITSELF_AT_STEP_2 = """
import os, signal
from pathlib import Path

MARKER = Path({marker!r})
calls = 0

def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    global calls
    calls += 1
    if calls == {first_call_of_step_2} and os.environ.get("RANK", "1") == "1" and not MARKER.exists():
        MARKER.write_text("sent")
        os.kill(os.getpid(), signal.SIGTERM)
    return (len(solution_str) % 3) / 2.0
"""

# The reward signals the process it runs in: the trainer's, so in-process (no reward timeout: a timed
# reward runs in a worker process, which ignores SIGTERM and leaves it to the trainer; see test_managers).
FOUR_STEPS = [
    "trainer.total_training_steps=4",
    "trainer.save_every_minutes=null",
    "reward_model.timeout_s=null",
]


@pytest.fixture
def setup(tmp_path, tiny_qwen3, gsm8k_files):
    def overrides(run_dir, reward_source=REWARD):
        reward = run_dir.parent / f"{run_dir.name}_reward.py"
        reward.write_text(reward_source)
        return base_overrides(tiny_qwen3, gsm8k_files, reward, run_dir) + FOUR_STEPS

    return overrides


def sapo_train(overrides, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "sapo", "train", *overrides]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def signalling_reward(tmp_path, responses_per_step: int) -> str:
    marker = str(tmp_path / "signal_sent")
    return SIGNALS_ITSELF_AT_STEP_2.format(marker=marker, first_call_of_step_2=responses_per_step + 1)


def weights(run_dir):
    return load_file(run_dir / "hf_model" / "model.safetensors")


def test_sigterm_saves_after_the_step_and_the_rerun_ends_like_an_uninterrupted_run(tmp_path, setup):
    run_dir = tmp_path / "run"
    overrides = setup(run_dir, signalling_reward(tmp_path, responses_per_step=16))  # 8 prompts x 2
    stopped = sapo_train(overrides)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    assert "SIGTERM received: finishing this step" in stopped.stderr
    assert "stopped by SIGTERM after step 2" in stopped.stderr and "Traceback" not in stopped.stderr
    assert str(run_dir / "global_step_2") in stopped.stderr  # where the checkpoint is
    assert latest_checkpoint(run_dir).name == "global_step_2"  # save_freq=0 alone would have saved none
    assert not (run_dir / "hf_model").exists()  # no export: the run is not finished

    resumed = sapo_train(overrides)  # the marker exists: no signal this time
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").open()]
    assert steps == [1, 2, 3, 4]
    alone = tmp_path / "alone"
    train(load_config(None, setup(alone)))
    for name, tensor in weights(alone).items():
        torch.testing.assert_close(weights(run_dir)[name], tensor, atol=0, rtol=0, msg=name)


def test_a_signal_to_one_rank_stops_both_after_the_same_step(tmp_path, setup):
    run_dir = tmp_path / "run"
    overrides = setup(run_dir, signalling_reward(tmp_path, responses_per_step=8))  # rank 1 scores 4 x 2
    stopped = torchrun(2, ["-m", "sapo", "train", *overrides], timeout=300, check=False)
    assert stopped.returncode != 0
    assert "stopped by SIGTERM after step 2" in stopped.stderr  # rank 0 stopped for rank 1's signal
    assert latest_checkpoint(run_dir).name == "global_step_2"
    resumed = torchrun(2, ["-m", "sapo", "train", *overrides], timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert latest_checkpoint(run_dir).name == "global_step_4"


def test_save_every_minutes_saves_after_every_step_once_due(tmp_path, setup):
    run_dir = tmp_path / "run"
    overrides = setup(run_dir)[:-1] + ["trainer.save_every_minutes=1e-6"]  # due after any step
    train(load_config(None, overrides))
    saved = sorted(p.name for p in run_dir.glob("global_step_*"))
    assert saved == ["global_step_1", "global_step_2", "global_step_3", "global_step_4"]


def test_the_first_signal_is_deferred_and_the_second_acts_at_once():
    with StopSignals(stream=open(os.devnull, "w")) as signals:
        os.kill(os.getpid(), signal.SIGINT)
        assert signals.received == signal.SIGINT  # no KeyboardInterrupt: the step goes on
        assert decide(signals, SaveClock(None), World()).stop == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # Python's own handler again
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_the_save_clock_and_no_signal_decide_nothing():
    now = [1000.0]
    clock = SaveClock(2.0, now=lambda: now[0])
    quiet = StopSignals()
    assert decide(quiet, clock, World()).save is False
    now[0] += 119.0
    assert not clock.due()
    now[0] += 1.0
    decision = decide(quiet, clock, World())
    assert decision.save and decision.stop is None
    clock.saved()
    assert not clock.due()
    assert SaveClock(None).due() is False and SaveClock(0).due() is False
