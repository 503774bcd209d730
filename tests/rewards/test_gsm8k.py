import pytest

from sapo.rewards import default_compute_score
from sapo.rewards.gsm8k import compute_score, extract_solution


@pytest.mark.parametrize(
    "response, score",
    [
        ("She has 3 + 4 = 7 apples.\n#### 7", 1.0),
        ("#### 7 apples", 1.0),
        ("#### 1 then fixed: #### 7", 1.0),  # the last #### counts
        ("#### 7\n#### 8", 0.0),
        ("The answer is 7", 0.0),  # strict: no ####, no answer
        ("####7", 0.0),  # the space after #### is part of the convention
        ("#### 7.0", 0.0),  # compared as strings
        ("#### 07", 0.0),
        ("#### $7", 0.0),  # the regex wants a digit, dot, comma or minus right after '#### '
    ],
)
def test_strict_scoring_of_gsm8k_answers(response, score):
    assert compute_score(response, "7") == score
    assert default_compute_score("openai/gsm8k", response, "7") == score


def test_commas_are_removed_and_negatives_kept():
    assert extract_solution("so #### 1,234") == "1234"
    assert compute_score("#### 1,234", "1234") == 1.0
    assert compute_score("#### -5", "-5") == 1.0
    assert compute_score("#### 5", "-5") == 0.0


def test_only_the_last_300_characters_are_searched():
    answer = "#### 7"
    assert compute_score(answer + "x" * (300 - len(answer)), "7") == 1.0
    assert compute_score(answer + "x" * (301 - len(answer)), "7") == 0.0  # '#' cut off, '### 7' left


def test_format_score_applies_to_a_found_but_wrong_answer_only():
    assert compute_score("#### 8", "7", format_score=0.1) == 0.1
    assert compute_score("eight", "7", format_score=0.1) == 0.0


def test_flexible_takes_the_last_number_anywhere():
    assert extract_solution("first 15, then 16", method="flexible") == "16"
    assert extract_solution("16 .", method="flexible") == "16"  # a lone '.' is skipped
    assert extract_solution("16 ...", method="flexible") == "..."  # but not '...' (verl's rule)
    assert compute_score("I get 3 then 7", "7", method="flexible") == 1.0
    assert compute_score("it is 7.", "7", method="flexible") == 0.0  # '7.' as written
    assert extract_solution("no digits", method="flexible") is None
    with pytest.raises(ValueError, match="strict' or 'flexible"):
        extract_solution("#### 1", method="lenient")
