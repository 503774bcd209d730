import sys

import pytest

from sapo.rewards import default_compute_score
from sapo.rewards import math as math_reward
from sapo.rewards.math import compute_score, last_boxed_content, normalize_answer


@pytest.mark.parametrize(
    "text, content",
    [
        ("so \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
        ("\\boxed{1} or rather \\boxed{2}", "2"),
        ("\\fbox{4}", "4"),
        ("\\boxed 5$", "5"),
        ("\\boxed{\\sqrt{2}", None),  # unbalanced
        ("no box here: 5", None),
    ],
)
def test_last_boxed_content(text, content):
    assert last_boxed_content(text) == content


# (response, ground truth): equal under both comparisons
BOTH_EQUAL = [
    ("\\boxed{3}", "3"),
    ("\\boxed{\\dfrac{1}{2}}", "\\frac{1}{2}"),
    ("\\boxed{1/2}", "\\frac12"),
    ("\\boxed{x=3}", "3"),
    ("\\boxed{10\\%}", "10"),
    ("\\boxed{1,000}", "1000"),
    ("\\boxed{.5}", "0.5"),
    ("\\boxed{3.0}", "3"),
    ("\\boxed{\\sqrt2}", "\\sqrt{2}"),
    ("\\boxed{90^\\circ}", "90"),
    ("\\boxed{\\text{(B)}}", "(B)"),
    ("The answer: \\boxed{5}.", "\\boxed{5}"),  # a boxed ground truth is unboxed
]
# near misses: different under both
BOTH_DIFFERENT = [
    ("\\boxed{3.1}", "3"),
    ("\\boxed{-3}", "3"),
    ("\\boxed{\\frac{1}{3}}", "\\frac{1}{2}"),
    ("the answer is 3", "3"),  # no box: no answer
    ("\\boxed{31}", "3"),
]
# equal only for math-verify (the fallback's documented limits)
VERIFY_ONLY = [("\\boxed{0.5}", "\\frac{1}{2}"), ("\\boxed{x+1}", "1+x")]


@pytest.mark.parametrize("use_math_verify", [True, False])
def test_equivalent_answers_score_one_and_near_misses_zero(use_math_verify):
    for response, truth in BOTH_EQUAL:
        assert compute_score(response, truth, use_math_verify=use_math_verify) == 1.0, (response, truth)
    for response, truth in BOTH_DIFFERENT:
        assert compute_score(response, truth, use_math_verify=use_math_verify) == 0.0, (response, truth)
    for response, truth in VERIFY_ONLY:
        expected = 1.0 if use_math_verify else 0.0
        assert compute_score(response, truth, use_math_verify=use_math_verify) == expected


def test_normalisation_steps():
    assert normalize_answer(" \\left( 1, 2 \\right) ") == "(1,2)"
    assert normalize_answer("\\tfrac{3}{4}") == "\\frac{3}{4}"
    assert normalize_answer("\\frac1{4}") == "\\frac{1}{4}"
    assert normalize_answer("\\frac{1}4") == "\\frac{1}{4}"
    assert normalize_answer("-.25") == "-0.25"
    assert normalize_answer("12,345.5") == "12345.5"
    assert normalize_answer("1,2") == "1,2"  # a pair, not a thousands separator
    assert normalize_answer("\\$5\\mbox{ dollars}") == "5dollars"


def test_fallback_is_used_when_math_verify_is_not_installed(monkeypatch):
    args = ("lighteval/MATH", "\\boxed{0.5}", "\\frac{1}{2}")
    assert math_reward.math_verify_available()
    assert default_compute_score(*args) == 1.0
    monkeypatch.setitem(sys.modules, "math_verify", None)  # makes `import math_verify` raise ImportError
    assert not math_reward.math_verify_available()
    assert default_compute_score(*args) == 0.0
    assert default_compute_score("lighteval/MATH", "\\boxed{\\dfrac12}", "1/2") == 1.0


@pytest.mark.parametrize(
    "source",
    [
        "lighteval/MATH",
        "DigitalLearningGmbH/MATH-lighteval",
        "HuggingFaceH4/MATH-500",
        "math_dapo",
        "aime2024",
    ],
)
def test_math_data_sources_dispatch_to_the_boxed_scorer(source):
    assert default_compute_score(source, "so \\boxed{42}", "42") == 1.0
    assert default_compute_score(source, "so 42", "42") == 0.0
