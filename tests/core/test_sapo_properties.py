"""SAPO's defining properties (SAPO.md): gradient identity, on-policy equivalence, tau by sign, clamp."""

import math

import pytest
import torch

from sapo.core.losses import get_policy_loss

D = torch.float64
sapo = get_policy_loss("sapo")


def grad_of(name, old, new, adv, mask, mode, **numbers):
    new = new.clone().requires_grad_(True)
    loss, _ = get_policy_loss(name)(old, new, adv, mask, loss_agg_mode=mode, **numbers)
    loss.backward()
    return new.grad


def random_batch(seed=0):
    gen = torch.Generator().manual_seed(seed)
    old = -torch.rand(4, 6, generator=gen, dtype=D) * 2
    new = old + 0.8 * torch.randn(4, 6, generator=gen, dtype=D)
    adv = torch.randn(4, 6, generator=gen, dtype=D)
    mask = torch.arange(6).unsqueeze(0) < torch.tensor([[6], [2], [5], [3]])
    return old, new, adv, mask


@pytest.mark.parametrize("tau_pos, tau_neg", [(1.0, 1.05), (0.5, 2.0)])
def test_gradient_is_minus_a_times_sech2_times_r_times_aggregation_weight(tau_pos, tau_neg):
    old, new, adv, mask = random_batch()
    grad = grad_of("sapo", old, new, adv, mask, "seq-mean-token-mean", tau_pos=tau_pos, tau_neg=tau_neg)
    # independent reference: sech^2(tau (r - 1) / 2) = 4 s (1 - s)
    r = torch.exp(new - old)
    tau = torch.where(adv > 0, torch.tensor(tau_pos, dtype=D), torch.tensor(tau_neg, dtype=D))  # float64
    weight = 1.0 / torch.cosh(tau * (r - 1.0) / 2.0) ** 2
    lengths = mask.sum(dim=-1, keepdim=True).to(D)  # seq-mean-token-mean weight: 1 / (L_i * S)
    expected = -adv * weight * r / (lengths * mask.shape[0]) * mask
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "token-sum"])
def test_on_policy_gradient_equals_policy_gradient_and_ppo(mode):
    old, _, adv, mask = random_batch(1)
    sapo_grad = grad_of("sapo", old, old, adv, mask, mode)
    pg_grad = grad_of("gpg", old, old, adv, mask, mode)  # -A log pi: plain policy gradient
    ppo_grad = grad_of("vanilla", old, old, adv, mask, mode)
    torch.testing.assert_close(sapo_grad, pg_grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sapo_grad, ppo_grad, rtol=1e-12, atol=1e-12)


def test_tau_chosen_by_sign_of_advantage():
    # r = 1: loss = -(2 / tau) A. A = +1 uses tau_pos = 0.5 -> -4; A = -1 uses tau_neg = 4 -> +0.5;
    # A = 0 takes tau_neg (loss 0 either way).
    old = torch.zeros(1, 3, dtype=D)
    adv = torch.tensor([[1.0, -1.0, 0.0]], dtype=D)
    for column, expected in ((0, -4.0), (1, 0.5), (2, 0.0)):
        mask = torch.zeros(1, 3)
        mask[0, column] = 1
        loss, _ = sapo(old, old, adv, mask, loss_agg_mode="token-sum", tau_pos=0.5, tau_neg=4.0)
        assert loss.item() == pytest.approx(expected)
    # off-policy (r = 2) the larger tau closes the gate more: weight sech^2(tau / 2)
    new = torch.full((1, 3), math.log(2.0), dtype=D)
    _, metrics = sapo(old, new, adv, torch.ones(1, 3), loss_agg_mode="token-sum", tau_pos=0.5, tau_neg=4.0)
    assert metrics["actor/sapo/gate_weight_mean_pos"] == pytest.approx(1 / math.cosh(0.25) ** 2)
    assert metrics["actor/sapo/gate_weight_mean_neg"] == pytest.approx(1 / math.cosh(2.0) ** 2)
    assert metrics["actor/sapo/soft_clip_frac"] == pytest.approx(2 / 3)  # the neg token and the A = 0 token


def test_negative_gate_closes_faster_with_default_temperatures():
    old = torch.zeros(1, 2, dtype=D)
    new = torch.full((1, 2), math.log(1.5), dtype=D)
    grad = grad_of("sapo", old, new, torch.tensor([[1.0, -1.0]], dtype=D), torch.ones(1, 2), "token-sum")
    assert abs(grad[0, 1].item()) < abs(grad[0, 0].item())  # tau_neg = 1.05 > tau_pos = 1.0


def test_log_ratio_clamped_at_20():
    # log r = 25 is treated as 20: same loss value, and no gradient through the clamp
    old = torch.zeros(1, 1, dtype=D)
    adv = torch.tensor([[-1.0]], dtype=D)
    at_25, _ = sapo(old, torch.full((1, 1), 25.0, dtype=D), adv, torch.ones(1, 1), loss_agg_mode="token-sum")
    at_20, _ = sapo(old, torch.full((1, 1), 20.0, dtype=D), adv, torch.ones(1, 1), loss_agg_mode="token-sum")
    assert at_25.item() == at_20.item() == pytest.approx(4.0 / 1.05)  # sigmoid saturates at 1
    grad = grad_of("sapo", old, torch.full((1, 1), 25.0, dtype=D), adv, torch.ones(1, 1), "token-sum")
    assert grad.item() == 0.0
    # below: log r = -25 -> r = e^-20, s ~ sigmoid(-1.05); loss finite
    low, metrics = sapo(
        old, torch.full((1, 1), -25.0, dtype=D), adv, torch.ones(1, 1), loss_agg_mode="token-sum"
    )
    assert math.isfinite(low.item()) and metrics["actor/ratio_min"] == pytest.approx(math.exp(-20))
