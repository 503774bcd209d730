"""Bad input raises a UserError that names the problem and the fix; degenerate input gives defined results."""

import math

import pytest
import torch

from sapo.core.advantages import ADVANTAGE_ESTIMATORS, compute_advantages
from sapo.core.aggregation import LOSS_AGG_MODES
from sapo.core.kl import KL_ESTIMATORS, AdaptiveKLController, kl_penalty
from sapo.core.losses import POLICY_LOSSES, get_policy_loss
from sapo.errors import UserError

ONES = torch.ones(2, 3)


def test_unknown_loss_lists_valid_names():
    with pytest.raises(UserError) as error:
        get_policy_loss("sappo")
    message = str(error.value)
    assert "sappo" in message and "loss_mode" in message
    for name in POLICY_LOSSES:
        assert name in message


def test_unknown_estimator_lists_valid_names():
    with pytest.raises(UserError) as error:
        compute_advantages("grpoo", token_level_rewards=ONES, response_mask=ONES, index=[0, 0])
    assert "algorithm.adv_estimator" in str(error.value)
    for name in ADVANTAGE_ESTIMATORS:
        assert name in str(error.value)


def test_unknown_kl_estimator_lists_valid_names():
    with pytest.raises(UserError) as error:
        kl_penalty(ONES, ONES, "k4")
    for name in KL_ESTIMATORS:
        assert name in str(error.value)


@pytest.mark.parametrize("numbers", [{"tau_pos": 0.0}, {"tau_neg": -1.05}, {"tau_pos": math.nan}])
def test_non_positive_tau_rejected(numbers):
    with pytest.raises(UserError, match=r"actor_rollout_ref\.actor\.tau_(pos|neg)"):
        get_policy_loss("sapo")(ONES, ONES, ONES, ONES, loss_agg_mode="token-mean", **numbers)


def test_other_bad_numbers_rejected():
    with pytest.raises(UserError, match="clip_ratio_c"):
        get_policy_loss("vanilla")(ONES, ONES, ONES, ONES, loss_agg_mode="token-mean", clip_ratio_c=0.5)
    with pytest.raises(UserError, match="clip_ratio_low"):
        get_policy_loss("vanilla")(ONES, ONES, ONES, ONES, loss_agg_mode="token-mean", clip_ratio_low=-0.1)
    with pytest.raises(UserError, match="horizon"):
        AdaptiveKLController(0.1, 6.0, 0)


@pytest.mark.parametrize("name", sorted(POLICY_LOSSES))
def test_mismatched_shapes_rejected(name):
    with pytest.raises(UserError, match=r"shape"):
        get_policy_loss(name)(ONES, torch.ones(2, 4), ONES, ONES, loss_agg_mode="token-mean")


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
@pytest.mark.parametrize("name", sorted(POLICY_LOSSES))
def test_all_masked_batch_is_zero_and_finite(name, mode):
    log_prob = torch.full((2, 3), math.nan).requires_grad_(True)  # padding may hold anything
    loss, metrics = get_policy_loss(name)(log_prob, log_prob, ONES, torch.zeros(2, 3), loss_agg_mode=mode)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(log_prob.grad, torch.zeros(2, 3))
    assert all(math.isfinite(value) for value in metrics.values())


@pytest.mark.parametrize("name", sorted(POLICY_LOSSES))
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_valid_inputs_rejected(name, bad):
    for position in range(3):  # old_log_prob, log_prob, advantages
        inputs = [torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3)]
        inputs[position][1, 1] = bad
        with pytest.raises(UserError, match="non-finite"):
            get_policy_loss(name)(*inputs, ONES, loss_agg_mode="token-mean")


def test_non_finite_padding_is_ignored():
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    clean = torch.tensor([[-1.0, -2.0, 0.0]]).requires_grad_(True)
    dirty = torch.tensor([[-1.0, -2.0, math.nan]]).requires_grad_(True)
    adv = torch.tensor([[1.0, -1.0, math.inf]])
    for name in POLICY_LOSSES:
        a, _ = get_policy_loss(name)(clean.detach() - 0.1, clean, adv, mask, loss_agg_mode="token-mean")
        b, _ = get_policy_loss(name)(dirty.detach() - 0.1, dirty, adv, mask, loss_agg_mode="token-mean")
        assert a.item() == pytest.approx(b.item()), name


def test_advantage_input_errors():
    with pytest.raises(UserError, match="index"):
        compute_advantages("grpo", token_level_rewards=ONES, response_mask=ONES)
    with pytest.raises(UserError, match="rows"):
        compute_advantages("grpo", token_level_rewards=ONES, response_mask=ONES, index=[0, 0, 1])
    with pytest.raises(UserError, match="values"):
        compute_advantages("gae", token_level_rewards=ONES, response_mask=ONES)
    with pytest.raises(UserError, match="reward_baselines"):
        compute_advantages("remax", token_level_rewards=ONES, response_mask=ONES)
    with pytest.raises(UserError, match="rollout.n"):
        compute_advantages("grpo_passk", token_level_rewards=ONES, response_mask=ONES, index=[0, 1])
    with pytest.raises(UserError, match="NaN or inf"):
        compute_advantages(
            "grpo", token_level_rewards=torch.full((2, 3), math.nan), response_mask=ONES, index=[0, 0]
        )
    with pytest.raises(UserError, match=r"\[batch, response_length\]"):
        compute_advantages("grpo", token_level_rewards=torch.ones(2, 4), response_mask=ONES, index=[0, 0])
