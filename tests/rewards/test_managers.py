import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sapo
from sapo.errors import RewardError
from sapo.rewards import (
    DAPORewardManager,
    NaiveRewardManager,
    RewardSample,
    build_reward_manager,
    load_custom_reward_function,
    token_level_scores,
)

# One custom reward file with a behaviour per response text; it runs in-process and in worker processes.
FLAKY_REWARD = """
import os
import time


def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    if solution_str == "raise":
        raise ValueError("cannot parse")
    if solution_str == "nan":
        return float("nan")
    if solution_str == "inf":
        return float("-inf")
    if solution_str == "text":
        return "1.0"
    if solution_str == "none":
        return None
    if solution_str == "no-score":
        return {"acc": 1.0}
    if solution_str == "dict":
        return {"score": 0.5, "acc": True}
    if solution_str == "tensor":
        import torch
        return torch.tensor(0.25)
    if solution_str == "vector":
        import torch
        return torch.tensor([1.0, 0.0])
    if solution_str == "bool":
        return True
    if solution_str == "hang":
        time.sleep(60)
    if solution_str == "exit":
        os._exit(3)
    return float(solution_str == ground_truth)
"""


@pytest.fixture
def flaky(tmp_path):
    path = tmp_path / "flaky_reward.py"
    path.write_text(FLAKY_REWARD)
    return load_custom_reward_function(path, "compute_score")


def samples(*responses, truth="7"):
    return [
        RewardSample("custom", r, truth, {"k": i}, response_length=len(r), uid=f"u{i}")
        for i, r in enumerate(responses)
    ]


def test_naive_manager_scores_with_the_default_dispatch():
    batch = [
        RewardSample("openai/gsm8k", "#### 72", "72"),
        RewardSample("openai/gsm8k", "72", "72"),
        RewardSample("sapo/arithmetic", "579", "579"),
        RewardSample("lighteval/MATH", "\\boxed{\\frac12}", "1/2"),
    ]
    result = NaiveRewardManager()(batch)
    assert result.scores == [1.0, 0.0, 1.0, 1.0]
    assert result.failed == [False] * 4
    assert result.metrics() == {"reward/failures": 0.0, "reward/timeouts": 0.0}


def test_scalar_tensors_and_bools_count_as_numbers(flaky):
    assert NaiveRewardManager(flaky)(samples("tensor", "bool")).scores == [0.25, 1.0]


def test_dict_results_fill_extra_info_with_none_where_missing(flaky):
    result = NaiveRewardManager(flaky)(samples("7", "dict", "8"))
    assert result.scores == [1.0, 0.5, 0.0]
    assert result.extra_info == {"acc": [None, True, None]}


FAILURES = [
    ("raise", "raised ValueError: cannot parse"),
    ("nan", "returned nan, not a finite number"),
    ("inf", "returned -inf, not a finite number"),
    ("text", "returned str '1.0', not a number"),
    ("none", "returned NoneType None, not a number"),
    ("no-score", "returned a dict without a 'score' key"),
    ("vector", "returned Tensor tensor([1., 0.]), not a number"),
]


@pytest.mark.parametrize("response, problem", FAILURES)
def test_each_bad_reward_raises_an_error_naming_the_sample(flaky, response, problem):
    with pytest.raises(RewardError) as err:
        NaiveRewardManager(flaky)(samples("7", response))
    message = str(err.value)
    assert problem in message
    assert f"sample 1, uid 'u1' (data_source 'custom', response {response!r})" in message
    assert "on_error='zero'" in message  # the way out


@pytest.mark.parametrize("response, problem", FAILURES)
def test_on_error_zero_scores_zero_and_counts(flaky, response, problem, caplog):
    result = NaiveRewardManager(flaky, on_error="zero")(samples("7", response, "7", response))
    assert result.scores == [1.0, 0.0, 1.0, 0.0]
    assert not any(math.isnan(s) for s in result.scores)
    assert result.failed == [False, True, False, True]
    assert result.metrics() == {"reward/failures": 2.0, "reward/timeouts": 0.0}
    assert problem in result.failure_messages[0] and "uid 'u3'" in result.failure_messages[1]
    assert "scored 0" in caplog.text


def test_more_than_max_error_fraction_failing_stops_even_with_on_error_zero(flaky):
    # 2 of 4 fail: at the default 0.5, not more, so they score 0; 3 of 4 is more
    assert NaiveRewardManager(flaky, on_error="zero")(samples("7", "raise", "7", "nan")).num_failures == 2
    with pytest.raises(RewardError) as err:
        NaiveRewardManager(flaky, on_error="zero")(samples("7", "raise", "text", "nan"))
    message = str(err.value)
    assert "3 of 4 samples failed" in message and "reward_model.max_error_fraction=0.5" in message
    assert "raised ValueError: cannot parse on sample 1" in message  # the first failure, named
    assert "on_error='zero'" not in message  # it is not the way out when the function is broken
    with pytest.raises(RewardError, match="1 of 4 samples failed"):  # a stricter limit
        NaiveRewardManager(flaky, on_error="zero", max_error_fraction=0.2)(samples("7", "raise", "7", "8"))


def test_every_sample_failing_with_on_error_raise_does_not_suggest_zero(flaky):
    with pytest.raises(RewardError) as err:
        NaiveRewardManager(flaky)(samples("raise", "raise"))
    assert "2 of 2 samples failed" in str(err.value) and "on_error='zero'" not in str(err.value)


def test_a_hanging_reward_is_killed_after_the_timeout(flaky):
    manager = NaiveRewardManager(flaky, on_error="zero", timeout_s=1.0, num_workers=2)
    try:
        result = manager(samples("7", "hang", "8", "7", "dict"))
        assert result.scores == [1.0, 0.0, 0.0, 1.0, 0.5]
        assert result.failed == [False, True, False, False, False]
        assert result.metrics() == {"reward/failures": 1.0, "reward/timeouts": 1.0}
        assert "did not return within the 1 s timeout" in result.failure_messages[0]
        # the killed worker was replaced: the pool keeps working
        assert manager(samples("7", "8")).scores == [1.0, 0.0]
        raising = NaiveRewardManager(flaky, timeout_s=1.0)
        with pytest.raises(RewardError, match="did not return within the 1 s timeout on sample 0, uid 'u0'"):
            raising(samples("hang"))
        raising.close()
    finally:
        manager.close()


def test_workers_leave_sigterm_to_the_trainer_and_exit_when_it_is_gone(flaky):
    """SLURM's SIGTERM and Ctrl-C's SIGINT reach the whole process group: the worker must keep scoring the
    step the trainer is finishing; and a trainer killed outright must not leave workers behind."""
    manager = NaiveRewardManager(flaky, timeout_s=30.0)
    try:
        assert manager(samples("7")).scores == [1.0]
        worker = manager._pool._workers[0]
        os.kill(worker.process.pid, signal.SIGTERM)
        os.kill(worker.process.pid, signal.SIGINT)
        assert manager(samples("7", "8")).scores == [1.0, 0.0]  # the same worker, still scoring
        assert worker.process.is_alive()
        worker.conn.close()  # what the trainer's death does to the pipe
        worker.process.join(timeout=10)
        assert worker.process.exitcode == 0
    finally:
        manager.close()


def test_worker_processes_report_the_same_failures_as_in_process_calls(flaky):
    responses = ["7", "raise", "nan", "text", "dict", "exit", "8"]
    manager = NaiveRewardManager(flaky, on_error="zero", timeout_s=30.0, max_error_fraction=1.0)
    try:
        result = manager(samples(*responses))
    finally:
        manager.close()
    assert result.scores == [1.0, 0.0, 0.0, 0.0, 0.5, 0.0, 0.0]
    assert result.failed == [False, True, True, True, False, True, False]
    assert result.num_timeouts == 0
    assert "raised ValueError: cannot parse" in result.failure_messages[0]
    assert "killed its worker process (exit code 3)" in result.failure_messages[3]


def test_timeouts_need_a_picklable_function():
    manager = NaiveRewardManager(lambda **kw: 1.0, timeout_s=5.0)
    with pytest.raises(RewardError, match="cannot be sent to a worker process"):
        manager(samples("7"))


def test_a_worker_that_cannot_load_the_function_is_a_clear_error(flaky, tmp_path):
    (tmp_path / "flaky_reward.py").unlink()  # the worker reloads the file by path: it is gone
    manager = NaiveRewardManager(flaky, timeout_s=5.0)
    with pytest.raises(RewardError, match="reward worker process for compute_score .* did not start"):
        manager(samples("7"))


def test_dapo_overlong_penalty_follows_the_buffer_formula(flaky):
    # L_max = 20, L_buf = 5: no penalty up to 15 tokens, then -(L - 15) / 5 * 1.0
    manager = DAPORewardManager(
        flaky, overlong_buffer_len=5, overlong_penalty_factor=1.0, max_response_length=20
    )
    batch = [RewardSample("custom", "7", "7", response_length=n) for n in (10, 15, 16, 18, 20)]
    result = manager(batch)
    penalties = [0.0, 0.0, -1 / 5, -3 / 5, -5 / 5]
    assert result.scores == pytest.approx([1.0 + p for p in penalties])
    assert result.extra_info["overlong_reward"] == pytest.approx(penalties)
    assert result.extra_info["overlong"] == [False, False, True, True, True]
    assert result.extra_info["acc"] == [1.0] * 5


def test_dapo_penalty_factor_scales_and_dict_results_pass_through(flaky):
    manager = build_reward_manager(
        "dapo", flaky, overlong_buffer_len=4, overlong_penalty_factor=0.5, max_response_length=8
    )
    result = manager([RewardSample("custom", "dict", "7", response_length=6)])
    assert result.scores == pytest.approx([0.5 - (6 - 4) / 4 * 0.5])
    assert result.extra_info["acc"] == [True]


def test_dapo_with_a_zero_buffer_has_no_penalty(flaky):
    manager = DAPORewardManager(
        flaky, overlong_buffer_len=0, overlong_penalty_factor=1.0, max_response_length=8
    )
    result = manager([RewardSample("custom", "7", "7", response_length=8)])
    assert result.scores == [1.0]
    assert result.extra_info["overlong"] == [False]


def test_importing_data_and_rewards_does_not_import_torch():
    # reward worker processes import these packages; torch would add seconds and memory to each
    code = "import sys, sapo.rewards, sapo.data; print('torch' in sys.modules, 'transformers' in sys.modules)"
    src = str(Path(sapo.__file__).parents[1])  # this checkout's src, not an installed copy
    env = {**os.environ, "PYTHONPATH": src}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.split() == ["False", "False"]


def test_bad_manager_settings_are_rejected():
    with pytest.raises(RewardError, match="one of naive, dapo"):
        build_reward_manager("prime")
    with pytest.raises(RewardError, match="overlong_buffer.len must be in 0..max_response_length=8"):
        DAPORewardManager(overlong_buffer_len=9, overlong_penalty_factor=1.0, max_response_length=8)
    with pytest.raises(RewardError, match="penalty_factor must be >= 0"):
        DAPORewardManager(overlong_buffer_len=2, overlong_penalty_factor=-1.0, max_response_length=8)
    with pytest.raises(RewardError, match="on_error must be 'raise' or 'zero'"):
        NaiveRewardManager(on_error="ignore")
    with pytest.raises(RewardError, match="timeout must be > 0"):
        NaiveRewardManager(timeout_s=0)


def test_token_level_scores_sit_on_the_last_valid_token():
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    out = token_level_scores([0.5, -1.0, 2.0], mask)
    expected = torch.tensor([[0, 0.5, 0, 0], [0, 0, 0, -1.0], [2.0, 0, 0, 0]])
    assert out.dtype == torch.float32
    assert torch.equal(out, expected)
    assert torch.equal(out.sum(dim=1), torch.tensor([0.5, -1.0, 2.0]))
    with pytest.raises(ValueError, match="responses \\[1\\] have no valid token"):
        token_level_scores([1.0, 1.0], torch.tensor([[1, 0], [0, 0]]))
    with pytest.raises(ValueError, match="one score per response"):
        token_level_scores([1.0], mask)


# Found by tests/fuzz (bad-input fuzzing): each escaped the reward managers as a raw exception.
@pytest.mark.parametrize(
    "value, error",
    [
        (10**400, "returned 1000000000"),  # OverflowError from float()
        ({1: 2.0, "a": 3.0}, "without a 'score' key (keys: ['a', 1])"),  # TypeError from sorted()
        (10**5000, "returned <a int that cannot be shown>, too large"),  # ValueError from repr()
    ],
    ids=["beyond-float", "mixed-keys", "over-4300-digits"],
)
def test_odd_reward_values_are_named_failures(value, error):
    from sapo.rewards.execution import check_result

    assert error in check_result(value).error


def test_sys_exit_in_a_reward_function_is_a_failure_not_the_end_of_the_run():
    def compute_score(**_):
        raise SystemExit(3)

    manager = build_reward_manager("naive", compute_score, on_error="zero", max_error_fraction=1.0)
    result = manager([RewardSample("openai/gsm8k", "x", "1")])
    assert result.scores == [0.0] and "raised SystemExit: 3" in result.failure_messages[0]
