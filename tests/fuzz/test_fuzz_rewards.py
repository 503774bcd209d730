"""What a custom reward function returns, fuzzed through the reward managers (in-process calls, as
``sapo train`` makes them without ``reward_model.timeout_s``): a real, finite number (or a dict with one
under ``"score"``) becomes the score; anything else is a ``RewardError`` naming the sample and what came
back (``on_error=raise``), or a score of 0 counted in ``reward/failures`` (``on_error=zero``)."""

from __future__ import annotations

import fractions
import math
from numbers import Real

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sapo.errors import RewardError, UserError
from sapo.rewards import RewardSample, build_reward_manager, load_custom_reward_function

NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(),
    st.sampled_from([10**400, -(10**400), 2**1024, fractions.Fraction(10**400, 3), True, False]),
    st.floats(allow_nan=True, allow_infinity=True, width=32).map(np.float32),
    st.integers(-(2**63), 2**63 - 1).map(np.int64),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda x: torch.tensor(x)),
    st.floats(allow_nan=True, allow_infinity=True).map(np.array),
)
NOT_NUMBERS = st.one_of(
    st.none(),
    st.text(max_size=6),
    st.sampled_from(
        ["1.0", b"1", 1 + 2j, [1.0], (0.5,), {1.0}, np.array([1.0]), torch.ones(2), np.array("x")]
    ),
    st.just(10**5000),  # an int whose repr Python refuses (over 4300 digits)
)
DICTS = st.one_of(
    st.dictionaries(st.sampled_from(["acc", "pred", "Score", "scores", 1, None]), NUMBERS, max_size=3),
    st.builds(
        lambda score, extra: {"score": score, **extra},
        st.one_of(NUMBERS, NOT_NUMBERS),
        st.dictionaries(st.sampled_from(["acc", "pred"]), st.integers(), max_size=2),
    ),
)
RAISES = st.sampled_from([KeyError("ground_truth"), ZeroDivisionError(), RecursionError(), SystemExit(1)])
RESULTS = st.one_of(NUMBERS, NOT_NUMBERS, DICTS, RAISES)  # an exception instance: the function raises it


def expected_score(result) -> float | None:
    """The score ``result`` must give, or None when it must be refused (written from the documented
    contract, not from the code under test)."""
    if isinstance(result, BaseException):
        return None
    if isinstance(result, dict):
        if "score" not in result:
            return None
        result = result["score"]
    if isinstance(result, (np.ndarray, torch.Tensor)):
        if result.ndim != 0 or not np.issubdtype(np.asarray(result).dtype, np.number):
            return None
        result = result.item()
    if not isinstance(result, Real):
        return None
    try:
        score = float(result)
    except OverflowError:
        return None
    return score if math.isfinite(score) else None


def manager(name: str, result, on_error: str):
    # every sample gets the same value, so a failure is 2 of 2: max_error_fraction=1 keeps on_error=zero
    # scoring them (the fraction rule itself is tested in tests/rewards/test_managers.py)
    kwargs = {"on_error": on_error, "max_error_fraction": 1.0}
    if name == "dapo":
        kwargs.update(overlong_buffer_len=0, overlong_penalty_factor=1.0, max_response_length=16)

    def compute_score(**_):
        if isinstance(result, BaseException):
            raise result
        return result

    return build_reward_manager(name, compute_score, **kwargs)


SAMPLES = [RewardSample("openai/gsm8k", "the answer is 3", "3", {}, 4, uid=i) for i in range(2)]


@settings(max_examples=400)
@given(result=RESULTS, name=st.sampled_from(["naive", "dapo"]), on_error=st.sampled_from(["raise", "zero"]))
def test_a_reward_value_is_a_score_or_a_named_failure(fuzz_cases, result, name, on_error):
    fuzz_cases.tick("rewards: returned values")
    want = expected_score(result)
    rewards = manager(name, result, on_error)
    if want is not None:
        outcome = rewards(SAMPLES)
        assert outcome.scores == [want, want] and outcome.num_failures == 0
        return
    if on_error == "zero":
        outcome = rewards(SAMPLES)
        assert outcome.scores == [0.0, 0.0] and outcome.metrics()["reward/failures"] == 2.0
        assert all("sample" in m for m in outcome.failure_messages)
        return
    try:
        rewards(SAMPLES)
    except RewardError as err:
        message = str(err)
        assert "sample 0" in message and "uid 0" in message, message
        why = (
            "not a number",
            "not a finite number",
            "without a 'score' key",
            "too large for a float",
            "raised",
        )
        assert any(w in message for w in why), message
    else:
        raise AssertionError(f"{result!r:.80} was accepted as a score")


SOURCES = st.sampled_from(
    [
        "def compute_score(data_source, solution_str, ground_truth, extra_info=None):\n    return 1.0\n",
        "def compute_score(**kwargs):\n    raise KeyError('ground_truth')\n",
        "def compute_score(data_source, solution_str):\n    return 1.0\n",  # wrong signature
        "compute_score = 3\n",
        "def other(**kwargs):\n    return 1.0\n",
        "def compute_score(**kwargs)\n    return 1\n",  # syntax error
        "import no_such_module_sapo\n",
        "raise SystemExit(3)\n",
        "",
    ]
)


@settings(max_examples=40)
@given(source=SOURCES, name=st.sampled_from([None, "compute_score", "other", ""]))
def test_a_custom_reward_file_loads_or_is_named(fuzz_cases, tmp_path_factory, source, name):
    fuzz_cases.tick("rewards: custom reward files")
    path = tmp_path_factory.mktemp("reward") / "my_reward.py"
    path.write_text(source)
    try:
        function = load_custom_reward_function(str(path), name)
        outcome = build_reward_manager("naive", function)(SAMPLES)
    except UserError as err:
        assert str(path) in str(err) or "my_reward" in str(err), str(err)
        return
    assert outcome.scores == [1.0, 1.0]
