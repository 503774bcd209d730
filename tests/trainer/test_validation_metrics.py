import itertools
from math import comb

import pytest

from sapo.errors import UserError
from sapo.trainer.validation_metrics import k_values, pass_at_k, validation_metrics


def test_pass_at_k_hand_values():
    # n=4, c=1: 1 - C(3,2)/C(4,2) = 1 - 3/6 = 0.5
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    # n=5, c=2, k=2: 1 - C(3,2)/C(5,2) = 1 - 3/10 = 0.7
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    # k=1 is the fraction correct: 3/8
    assert pass_at_k(8, 3, 1) == pytest.approx(3 / 8)
    # n - c < k: every draw contains a correct answer
    assert pass_at_k(4, 3, 2) == 1.0
    assert pass_at_k(4, 0, 4) == 0.0 and pass_at_k(4, 4, 1) == 1.0


def test_pass_at_k_matches_enumeration_of_all_draws():
    # independent reference: enumerate every k-subset of the n samples and count those with a correct one
    for n, c, k in [(6, 2, 3), (7, 1, 4), (5, 0, 2), (6, 5, 1)]:
        samples = [1] * c + [0] * (n - c)
        subsets = list(itertools.combinations(range(n), k))
        hit = sum(any(samples[i] for i in s) for s in subsets) / len(subsets)
        assert pass_at_k(n, c, k) == pytest.approx(hit)


def test_pass_at_k_is_stable_for_large_n():
    n, c, k = 1000, 3, 500
    exact = 1 - comb(n - c, k) / comb(n, k)  # big integers, exact
    assert pass_at_k(n, c, k) == pytest.approx(exact, rel=1e-12)


def test_pass_at_k_rejects_bad_counts():
    with pytest.raises(UserError):
        pass_at_k(4, 5, 1)
    with pytest.raises(UserError):
        pass_at_k(4, 1, 5)


def test_k_values():
    assert k_values(1) == [1]
    assert k_values(4) == [1, 2, 4]
    assert k_values(6) == [1, 2, 4, 6]


def test_validation_metrics_per_data_source_by_hand():
    # gsm8k: prompt a has responses correct [1, 0, 0, 0] (rewards 1,0,0,0); prompt b [1, 1, 0, 0]
    # math:  prompt c [0, 0, 0, 0] with rewards -0.5 each (a format penalty)
    sources = ["gsm8k"] * 8 + ["math"] * 4
    prompts = ["a"] * 4 + ["b"] * 4 + ["c"] * 4
    correct = [1, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0]
    rewards = [1, 0, 0, 0, 1, 1, 0, 0, -0.5, -0.5, -0.5, -0.5]
    m = validation_metrics(sources, prompts, rewards, correct)
    # mean@4 of reward: prompt a 0.25, prompt b 0.5 -> 0.375
    assert m["val-core/gsm8k/reward/mean@4"] == pytest.approx(0.375)
    assert m["val-core/gsm8k/acc/mean@4"] == pytest.approx(0.375)
    # pass@2: a: 1 - C(3,2)/C(4,2) = 0.5 ; b: 1 - C(2,2)/C(4,2) = 5/6 ; mean 2/3
    assert m["val-aux/gsm8k/acc/pass@2"] == pytest.approx((0.5 + 5 / 6) / 2)
    # pass@4 = 1 for both prompts (each has a correct answer); pass@1 = mean accuracy
    assert m["val-core/gsm8k/acc/pass@4"] == pytest.approx(1.0)
    assert m["val-aux/gsm8k/acc/pass@1"] == pytest.approx(0.375)
    # std@4 (population std per prompt): a: sqrt(0.25 x 0.75) = 0.4330 ; b: 0.5 ; mean 0.4665
    assert m["val-aux/gsm8k/reward/std@4"] == pytest.approx((0.75**0.5 * 0.5 + 0.5) / 2)
    assert m["val-core/math/reward/mean@4"] == pytest.approx(-0.5)
    assert m["val-core/math/acc/pass@4"] == 0.0
    assert m["val-aux/gsm8k/num_prompts"] == 2.0


def test_single_sample_and_reward_only():
    m = validation_metrics(["t", "t"], [0, 1], [1.0, 0.0])
    assert m == {"val-aux/t/num_prompts": 2.0, "val-core/t/reward/mean@1": 0.5}


def test_uneven_groups_rejected():
    with pytest.raises(UserError, match="different numbers of responses"):
        validation_metrics(["t"] * 3, [0, 0, 1], [1, 1, 1], [1, 1, 1])
