import re

import pytest

from sapo.data.tasks import TASKS, generate_splits, get_task
from sapo.data.tasks import countdown as cd
from sapo.errors import DataError


@pytest.mark.parametrize("name", ["arithmetic", "countdown"])
def test_generation_is_deterministic_disjoint_and_in_verl_layout(name):
    task = get_task(name)
    train, test = generate_splits(task, train_size=300, test_size=50, seed=5)
    again_train, again_test = generate_splits(task, train_size=300, test_size=50, seed=5)
    other_train, _ = generate_splits(task, train_size=300, test_size=50, seed=6)
    assert (train, test) == (again_train, again_test)
    assert train != other_train
    assert len(train) == 300 and len(test) == 50
    train_prompts = {r["prompt"][0]["content"] for r in train}
    test_prompts = {r["prompt"][0]["content"] for r in test}
    assert len(train_prompts) == 300 and not train_prompts & test_prompts
    row = train[0]
    assert set(row) == {"data_source", "prompt", "ability", "reward_model", "extra_info"}
    assert row["data_source"] == f"sapo/{name}"
    assert row["prompt"][0]["role"] == "user"
    assert row["extra_info"]["raw_prompt"] is True
    assert [r["extra_info"]["index"] for r in test] == list(range(50))


@pytest.mark.parametrize("name", ["arithmetic", "countdown"])
def test_reference_solutions_score_one_and_fit_the_vocabulary(name):
    task = get_task(name)
    train, test = generate_splits(task, train_size=200, test_size=20, seed=0)
    for row in train + test:
        answer = task.solution(row)
        assert task.score(answer, row["reward_model"]["ground_truth"]) == 1.0
        assert set(row["prompt"][0]["content"] + answer) <= set(task.chars)


def test_arithmetic_answers_are_the_sums_of_the_prompts():
    train, _ = generate_splits(get_task("arithmetic"), train_size=500, test_size=0, seed=1)
    operands = []
    for row in train:
        a, b = map(int, re.fullmatch(r"(\d+)\+(\d+)=", row["prompt"][0]["content"]).groups())
        assert row["reward_model"]["ground_truth"] == str(a + b)
        operands += [a, b]
    assert min(operands) >= 0 and max(operands) <= 99
    assert max(operands) >= 90  # the default range (0-99) reaches its top


def test_arithmetic_knobs_change_the_problems():
    train, _ = generate_splits(
        get_task("arithmetic"), train_size=100, test_size=0, seed=0, knobs={"max_value": 9, "ops": "-*"}
    )
    for row in train:
        a, op, b = re.fullmatch(r"(\d)([-*])(\d)=", row["prompt"][0]["content"]).groups()
        expected = int(a) - int(b) if op == "-" else int(a) * int(b)
        assert row["reward_model"]["ground_truth"] == str(expected)


@pytest.mark.parametrize(
    "response, score",
    [
        ("579", 1.0),
        (" 579\n", 1.0),
        ("0579", 0.0),
        ("57", 0.0),
        ("5790", 0.0),
        ("579=", 0.0),
        ("+579", 0.0),
        ("57 9", 0.0),
        ("578", 0.0),
        ("", 0.0),
    ],
)
def test_arithmetic_scorer_near_misses(response, score):
    assert get_task("sapo/arithmetic").score(response, "579") == score


COUNTDOWN_TRUTH = {"target": 26, "numbers": [3, 7, 5]}  # 3*7+5 = 21+5 = 26


@pytest.mark.parametrize(
    "response, score",
    [
        ("3*7+5", 1.0),
        ("5+7*3", 1.0),  # precedence: 7*3 first
        (" (3)*7 + 5 ", 1.0),
        ("(3*7)+5", 1.0),
        ("3*7+5=26", 0.0),  # the expression alone is the answer
        ("3*(7+5)", 0.0),  # 36
        ("3*7", 0.0),  # leaves 5 out
        ("3*7+5+5-5", 0.0),  # reuses 5
        ("21+5", 0.0),  # other numbers
        ("3*7+5+0", 0.0),  # 0 is not given
        ("-3+7*5-6", 0.0),  # unary minus, other numbers
        ("3*7+5)", 0.0),
        ("(3*7+5", 0.0),
        ("3x7+5", 0.0),
        ("", 0.0),
    ],
)
def test_countdown_scorer_near_misses(response, score):
    assert cd.score(response, COUNTDOWN_TRUTH) == score


def test_countdown_targets_are_reachable_and_follow_the_knobs():
    task = get_task("countdown")
    knobs = {"num_numbers": 4, "min_number": 2, "max_number": 9, "ops": "+-*"}
    train, _ = generate_splits(task, train_size=200, test_size=0, seed=2, knobs=knobs)
    for row in train:
        truth = row["reward_model"]["ground_truth"]
        solution = row["extra_info"]["solution"]
        assert re.fullmatch(r"[0-9+\-*]+", solution)
        assert eval(solution) == truth["target"] >= 0  # Python's own evaluator as the reference
        assert sorted(map(int, re.findall(r"\d+", solution))) == sorted(truth["numbers"])
        assert len(truth["numbers"]) == 4 and all(2 <= n <= 9 for n in truth["numbers"])
        prompt_numbers, target = row["prompt"][0]["content"].rstrip(":").split(">")
        assert [int(n) for n in prompt_numbers.split(",")] == truth["numbers"] and int(target) == truth[
            "target"
        ]


@pytest.mark.parametrize(
    "name, knobs, message",
    [
        ("arithmetic", {"min_value": 10, "max_value": 5}, "0 <= min_value <= max_value"),
        ("arithmetic", {"ops": "/"}, "subset of '\\+-\\*'"),
        ("arithmetic", {"digits": 3}, "no knob 'digits'"),
        ("countdown", {"num_numbers": 1}, "num_numbers >= 2"),
        ("countdown", {"ops": "-"}, "must include"),
        ("countdown", {"min_number": -1}, "0 <= min_number"),
    ],
)
def test_bad_knobs_are_rejected(name, knobs, message):
    with pytest.raises(DataError, match=message):
        generate_splits(get_task(name), train_size=5, test_size=0, seed=0, knobs=knobs)


def test_too_small_a_problem_space_is_an_error_not_a_hang():
    # operands 0..1 with '+': only 4 distinct prompts exist
    with pytest.raises(DataError, match="could only produce 4 distinct problems of the 10"):
        generate_splits(get_task("arithmetic"), train_size=8, test_size=2, seed=0, knobs={"max_value": 1})


def test_smaller_test_splits_are_prefixes_of_larger_ones():
    task = get_task("arithmetic")
    train_small, test_small = generate_splits(task, train_size=100, test_size=10, seed=9)
    train_big, test_big = generate_splits(task, train_size=50, test_size=60, seed=9)
    assert test_big[:10] == test_small
    big_test_prompts = {r["prompt"][0]["content"] for r in test_big}
    assert not big_test_prompts & {r["prompt"][0]["content"] for r in train_big}
    # the small split's train rows 50.. are the big split's train rows (same problem sequence)
    strip = [{**r, "extra_info": {**r["extra_info"], "index": None}} for r in train_small[50:100]]
    assert strip == [{**r, "extra_info": {**r["extra_info"], "index": None}} for r in train_big[:50]]


def test_allow_fewer_shortens_the_train_split_of_a_small_problem_space():
    task = get_task("arithmetic")
    train, test = generate_splits(
        task, train_size=50, test_size=3, seed=0, knobs={"max_value": 4}, allow_fewer=True
    )
    assert len(test) == 3 and len(train) == 5 * 5 - 3  # all 25 distinct problems were found


def test_unknown_task_and_sizes_are_errors():
    with pytest.raises(DataError, match="choose one of arithmetic, countdown"):
        get_task("sudoku")
    with pytest.raises(DataError, match="not both 0"):
        generate_splits(TASKS["arithmetic"], train_size=0, test_size=0, seed=0)
