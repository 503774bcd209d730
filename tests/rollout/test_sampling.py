"""SamplingParams validation and next-token selection (top-k, top-p, greedy, log-prob convention)."""

import math

import pytest
import torch

from sapo.errors import UserError
from sapo.rollout.base import SamplingParams
from sapo.rollout.sampling import sample_next_token


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(temperature=-0.1), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(n=0), "n "),
        (dict(top_k=-2), "top_k"),
        (dict(max_new_tokens=0), "max_new_tokens"),
    ],
)
def test_invalid_sampling_numbers_are_user_errors(kwargs, match):
    with pytest.raises(UserError, match=match):
        SamplingParams(**kwargs)


def test_greedy_and_log_prob_temperature():
    assert SamplingParams(temperature=0).greedy and SamplingParams(do_sample=False).greedy
    assert SamplingParams(temperature=0).logprob_temperature == 1.0
    assert SamplingParams(temperature=0.6).logprob_temperature == 0.6
    # verl's "off" value for top_k and 0 are both accepted.
    assert SamplingParams(top_k=-1).top_k == -1 and SamplingParams(top_k=0).top_k == 0


PROBS = torch.tensor([[0.5, 0.3, 0.15, 0.05]])


def _frequencies(sampling, draws=20000):
    logits = PROBS.log().expand(draws, 4)
    uniforms = torch.rand(draws, generator=torch.Generator().manual_seed(0))
    tokens, log_probs = sample_next_token(logits, sampling, uniforms)
    return torch.bincount(tokens, minlength=4).float() / draws, tokens, log_probs


def test_top_p_keeps_the_smallest_set_reaching_p_and_renormalises():
    # top_p = 0.7: token 0 (mass before it 0) and token 1 (mass before it 0.5 < 0.7) stay; token 2 has
    # 0.8 >= 0.7 before it and is dropped. Renormalised: 0.5 / 0.8 = 0.625, 0.3 / 0.8 = 0.375.
    freq, tokens, log_probs = _frequencies(SamplingParams(top_p=0.7))
    torch.testing.assert_close(freq, torch.tensor([0.625, 0.375, 0.0, 0.0]), atol=0.015, rtol=0)
    # Reported log-probs are the full-vocabulary ones (log 0.5, log 0.3), not the renormalised ones.
    torch.testing.assert_close(log_probs, PROBS[0].log()[tokens])


def test_top_k_and_temperature():
    # top_k = 3 with T = 0.5: p ~ p^2 over the first three: 0.25, 0.09, 0.0225 -> / 0.3625
    freq, tokens, log_probs = _frequencies(SamplingParams(top_k=3, temperature=0.5))
    expected = torch.tensor([0.25, 0.09, 0.0225, 0.0]) / 0.3625
    torch.testing.assert_close(freq, expected, atol=0.015, rtol=0)
    # log-prob at T = 0.5 over the full vocabulary: log(p^2 / sum p^2), sum p^2 = 0.365
    torch.testing.assert_close(log_probs, (PROBS[0] ** 2 / 0.365).log()[tokens])


def test_no_filter_samples_the_model_distribution_and_greedy_takes_the_argmax():
    freq, _, _ = _frequencies(SamplingParams())
    torch.testing.assert_close(freq, PROBS[0], atol=0.015, rtol=0)
    tokens, log_probs = sample_next_token(PROBS.log(), SamplingParams(temperature=0), None)
    assert tokens.tolist() == [0] and log_probs.item() == pytest.approx(math.log(0.5))


def test_inverse_cdf_never_picks_a_token_of_probability_zero():
    from sapo.rollout.sampling import inverse_cdf

    probs = torch.tensor([[0.0, 0.6, 0.4, 0.0], [0.0, 0.6, 0.4, 0.0], [0.0, 0.6, 0.4, 0.0]])
    # u = 0 lands on the flat start of the CDF, u just below 1 may round up to the total
    tokens = inverse_cdf(probs, torch.tensor([0.0, 0.6, 1.0 - 1e-8]))
    assert tokens.tolist() == [1, 2, 2]


# Found by tests/fuzz (bad-input fuzzing): wrong types raised TypeError or were taken silently.
@pytest.mark.parametrize(
    "kwargs, named",
    [
        ({"temperature": "1.0"}, "temperature must be a finite number >= 0 (got '1.0')"),  # was a TypeError
        ({"top_p": None}, "top_p must be a number in (0, 1] (got None)"),  # was a TypeError
        ({"do_sample": 0}, "do_sample must be true or false (got 0)"),  # was taken as greedy
        ({"seed": "7"}, "seed must be an integer or None (got '7')"),  # reached torch.Generator
        ({"n": True}, "n (samples per prompt) must be an integer >= 1 (got True)"),  # was taken as 1
    ],
)
def test_sampling_params_name_a_wrong_type(kwargs, named):
    from sapo.errors import UserError
    from sapo.rollout.base import SamplingParams

    with pytest.raises(UserError) as err:
        SamplingParams(**kwargs)
    assert str(err.value).startswith(named)


def test_sampling_params_take_numpy_integers():
    import numpy as np

    from sapo.rollout.base import SamplingParams

    assert SamplingParams(n=np.int64(4), top_k=np.int32(5)).n == 4
