"""Token-budget grouping of rows into micro-batches (verl's use_dynamic_bsz)."""

import pytest

from sapo.batch import token_budget_groups


def test_groups_respect_the_budget_and_cover_every_row_once():
    lengths = [5, 9, 2, 7, 3, 3, 8]
    groups = token_budget_groups(lengths, 10)
    # Longest first (9, 8, 7, 5, 3, 3, 2), next-fit: a row joins the open group if it still fits, else
    # opens a new one: 9 | 8 (9+8 > 10) | 7 (8+7 > 10) | 5 + 3 = 8 (7+5 > 10) | 3 + 2 (8+3 > 10)
    assert groups == [[1], [6], [3], [0, 4], [2, 5]]
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in g) <= 10 for g in groups)


def test_a_row_longer_than_the_budget_gets_its_own_group():
    assert token_budget_groups([12, 4, 4], 10) == [[0], [1, 2]]


def test_a_budget_below_one_token_is_an_error():
    with pytest.raises(ValueError, match="max_tokens"):
        token_budget_groups([1], 0)
