"""Each policy loss on tiny tensors against values worked out by hand, plus the registry helpers."""

import math

import pytest
import torch

from sapo.core.losses import (
    POLICY_LOSSES,
    default_loss_agg_mode,
    get_policy_loss,
    policy_loss_kwargs,
    policy_loss_numbers,
    register_policy_loss,
)
from sapo.errors import ConfigError

D = torch.float64


def t(rows):
    return torch.tensor(rows, dtype=D)


def run(name, old, new, adv, mask, mode="token-mean", **numbers):
    """Loss, metrics and d loss / d log_prob."""
    new = new.clone().requires_grad_(True)
    loss, metrics = get_policy_loss(name)(old, new, adv, mask, loss_agg_mode=mode, **numbers)
    loss.backward()
    return loss.item(), metrics, new.grad


def test_registry_holds_verl_loss_modes():
    expected = {"sapo", "vanilla", "gspo", "cispo", "gpg", "geo_mean", "clip_cov", "kl_cov"}
    assert expected <= set(POLICY_LOSSES)


def test_sapo_hand_values():
    # token 1: A = +1, r = 2 (log r = ln 2), tau_pos = 1: s = sigmoid(1) = 0.7310585786,
    #          loss = -4 s = -2.9242343
    # token 2: A = -2, r = 1, tau_neg = 1.05: s = 0.5, loss = -(4 / 1.05) * 0.5 * (-2) = 3.8095238
    old = t([[0.0, 0.0]])
    new = t([[math.log(2.0), 0.0]])
    adv = t([[1.0, -2.0]])
    loss, metrics, grad = run("sapo", old, new, adv, torch.ones(1, 2), mode="token-sum")
    assert loss == pytest.approx(-2.9242343 + 3.8095238, abs=1e-6)
    # gradient: -A * 4 s (1 - s) * r = -1 * 4 * 0.7310586 * 0.2689414 * 2 = -1.5728954 ; token 2: -A = 2
    assert grad.tolist()[0] == pytest.approx([-1.5728954, 2.0], abs=1e-6)
    # gate weights 4 s (1 - s): 0.7864477 (pos) and 1 (neg)
    assert metrics["actor/sapo/gate_weight_mean_pos"] == pytest.approx(0.7864477, abs=1e-6)
    assert metrics["actor/sapo/gate_weight_mean_neg"] == pytest.approx(1.0)
    assert metrics["actor/sapo/gate_weight_mean"] == pytest.approx((0.7864477 + 1.0) / 2, abs=1e-6)
    assert metrics["actor/sapo/soft_clip_frac"] == 0.0


def test_vanilla_hand_values_with_dual_clip():
    # eps = 0.2, clip_ratio_c = 3. Per token (A, r) -> loss:
    #   (+1, 1.5): max(-1.5, -1.2) = -1.2 (clipped)       (-1, 0.5): max(0.5, 0.8) = 0.8 (clipped)
    #   (-1, 5.0): max(5, 1.2) = 5, dual cap -A*3 = 3 -> 3  (+1, 1.1): -1.1
    old = torch.zeros(1, 4, dtype=D)
    new = torch.log(t([[1.5, 0.5, 5.0, 1.1]]))
    adv = t([[1.0, -1.0, -1.0, 1.0]])
    loss, metrics, grad = run("vanilla", old, new, adv, torch.ones(1, 4), clip_ratio=0.2, clip_ratio_c=3.0)
    assert loss == pytest.approx((-1.2 + 0.8 + 3.0 - 1.1) / 4)
    assert metrics["actor/pg_clipfrac"] == pytest.approx(0.5)
    assert metrics["actor/pg_clipfrac_lower"] == pytest.approx(0.25)
    # only the unclipped token has a gradient: d(-A r)/d log r = -A r = -1.1, divided by 4 tokens
    assert grad.tolist()[0] == pytest.approx([0.0, 0.0, 0.0, -1.1 / 4])


def test_vanilla_decoupled_clip_widths():
    # clip_ratio_high = 0.28 (DAPO's clip-higher): (+1, r = 1.25) is inside [0.8, 1.28], loss -1.25
    old = torch.zeros(1, 1, dtype=D)
    new = torch.log(t([[1.25]]))
    loss, metrics, _ = run("vanilla", old, new, t([[1.0]]), torch.ones(1, 1), clip_ratio_high=0.28)
    assert loss == pytest.approx(-1.25)
    assert metrics["actor/pg_clipfrac"] == 0.0


def test_gspo_sequence_ratio_and_straight_through_gradient():
    # seq 0: A = +1, log r = [ln 2, 0] -> s = exp(ln2 / 2) = 1.4142136 > 1.2 -> loss -1.2 per token, grad 0
    # seq 1: A = -1, log r = [0.1, -0.1] -> s = 1 -> loss +1 per token; d/d log_prob_t = -A * s = 1
    old = torch.zeros(2, 2, dtype=D)
    new = t([[math.log(2.0), 0.0], [0.1, -0.1]])
    adv = t([[1.0, 1.0], [-1.0, -1.0]])
    loss, metrics, grad = run("gspo", old, new, adv, torch.ones(2, 2), mode="seq-mean-token-mean")
    assert loss == pytest.approx((-1.2 + 1.0) / 2)
    # seq-mean-token-mean weight of a token: 1 / (2 tokens * 2 seqs)
    assert grad.flatten().tolist() == pytest.approx([0.0, 0.0, 0.25, 0.25])
    assert metrics["actor/pg_clipfrac"] == pytest.approx(0.5)


def test_cispo_clipped_detached_weight():
    # token 1: A = +1, r = 2 -> weight clip(2, 0.8, 1.2) = 1.2, log_prob -0.5: loss -1.2 * 1 * -0.5 = 0.6
    # token 2: A = -1, r = 0.9 -> weight 0.9, log_prob -2: loss -0.9 * -1 * -2 = -1.8
    new = t([[-0.5, -2.0]])
    old = new - torch.log(t([[2.0, 0.9]]))
    loss, metrics, grad = run("cispo", old, new, t([[1.0, -1.0]]), torch.ones(1, 2))
    assert loss == pytest.approx((0.6 - 1.8) / 2)
    # gradient -weight * A (the weight is detached): [-1.2, 0.9] / 2 tokens
    assert grad.tolist()[0] == pytest.approx([-0.6, 0.45])
    assert metrics["actor/pg_clipfrac"] == pytest.approx(0.5)


def test_gpg_is_plain_reinforce():
    # -A * log_prob: -(2)(-0.5) = 1, -(-1)(-3) = -3; mean -1; gradient -A / 2
    new = t([[-0.5, -3.0]])
    loss, _, grad = run("gpg", new.clone(), new, t([[2.0, -1.0]]), torch.ones(1, 2))
    assert loss == pytest.approx(-1.0)
    assert grad.tolist()[0] == pytest.approx([-1.0, 0.5])


def test_geo_mean_hand_values():
    # clip 0.4 in log space.
    # seq 0: A = +1, log r = [0.6, -0.2] -> min(lr, clip(lr)) = [0.4, -0.2], mean 0.1,
    #        loss -e^0.1 = -1.1051709
    # seq 1: A = -1, log r = [-0.6, 0.2] -> max(lr, clip(lr)) = [-0.4, 0.2], mean -0.1,
    #        loss e^-0.1 = 0.9048374
    old = torch.zeros(2, 2, dtype=D)
    new = t([[0.6, -0.2], [-0.6, 0.2]])
    adv = t([[1.0, 1.0], [-1.0, -1.0]])
    loss, metrics, grad = run("geo_mean", old, new, adv, torch.ones(2, 2), mode="seq-mean-token-mean")
    assert loss == pytest.approx((-1.1051709 + 0.9048374) / 2, abs=1e-7)
    assert metrics["actor/pg_clipfrac"] == pytest.approx(0.25)
    assert metrics["actor/pg_clipfrac_lower"] == pytest.approx(0.25)
    # clipped tokens have no gradient; seq 0 token 1: d/dlr of -e^{mean} = -e^0.1 / 2 tokens, / 2 seqs
    assert grad[0, 0].item() == 0.0 and grad[1, 0].item() == 0.0
    assert grad[0, 1].item() == pytest.approx(-1.1051709 / 4, abs=1e-7)
    assert grad[1, 1].item() == pytest.approx(0.9048374 / 4, abs=1e-7)


def _cov_batch():
    # A = [3, -1, -1, -1] (mean 0), log_prob = [-1, -3, -3, -3] (mean -2.5):
    # centred products (A - 0)(lp + 2.5) = [4.5, 0.5, 0.5, 0.5]; only token 0 lies in (1, 5).
    adv = t([[3.0, -1.0, -1.0, -1.0]])
    new = t([[-1.0, -3.0, -3.0, -3.0]])
    return adv, new


def test_clip_cov_drops_the_high_covariance_token():
    adv, new = _cov_batch()
    loss, metrics, grad = run("clip_cov", new.clone(), new, adv, torch.ones(1, 4))
    # r = 1: token losses -A = [-3, 1, 1, 1]; token 0 dropped -> (0 + 3) / 4
    assert loss == pytest.approx(0.75)
    assert metrics["actor/pg_clipfrac"] == pytest.approx(0.25)
    assert grad.tolist()[0] == pytest.approx([0.0, 0.25, 0.25, 0.25])


def test_kl_cov_penalises_the_top_covariance_token():
    adv, new = _cov_batch()
    old = new - t([[0.5, 0.0, 0.0, 0.0]])  # token 0 has log r = 0.5
    loss, metrics, grad = run("kl_cov", old, new, adv, torch.ones(1, 4), ppo_kl_coef=1.0)
    # token 0: -3 e^0.5 + |0.5| = -4.9461638 + 0.5; others: -(-1) * 1 = 1
    assert loss == pytest.approx((-4.9461638 + 0.5 + 3.0) / 4, abs=1e-7)
    assert metrics["actor/kl_cov_frac"] == pytest.approx(0.25)
    # gradient token 0: -3 e^0.5 + sign(0.5) = -3.9461638, / 4
    assert grad[0, 0].item() == pytest.approx(-3.9461638 / 4, abs=1e-7)


def test_rollout_is_weights_scale_the_token_loss():
    new = t([[-0.5, -3.0]])
    weights = t([[2.0, 0.5]])
    loss, _, grad = run(
        "gpg", new.clone(), new, t([[2.0, -1.0]]), torch.ones(1, 2), rollout_is_weights=weights
    )
    assert loss == pytest.approx((2.0 * 1.0 + 0.5 * -3.0) / 2)
    assert grad.tolist()[0] == pytest.approx([-2.0, 0.25])


def test_rollout_is_weights_multiply_every_loss_sapo_gate_included():
    """A constant weight c on every token multiplies each loss's value and gradient by c (off-policy, so
    SAPO's gate, the clips and the covariance selections are all active)."""
    gen = torch.Generator().manual_seed(3)
    old = -torch.rand(3, 5, generator=gen, dtype=D) * 2  # [B, T]
    new = old + 0.3 * torch.randn(3, 5, generator=gen, dtype=D)  # [B, T]
    adv = torch.randn(3, 5, generator=gen, dtype=D)  # [B, T]
    mask = torch.ones(3, 5)
    mask[1, 3:] = 0
    for name in POLICY_LOSSES:
        plain, _, plain_grad = run(name, old, new, adv, mask)
        weighted, _, weighted_grad = run(
            name, old, new, adv, mask, rollout_is_weights=torch.full((3, 5), 0.7, dtype=D)
        )
        assert weighted == pytest.approx(0.7 * plain, abs=1e-12), name
        torch.testing.assert_close(weighted_grad, 0.7 * plain_grad, rtol=0, atol=1e-12, msg=name)


def test_ratio_metrics_present_for_every_loss():
    new = t([[0.0, math.log(2.0)]])
    for name in POLICY_LOSSES:
        _, metrics, _ = run(name, torch.zeros(1, 2, dtype=D), new, t([[1.0, -1.0]]), torch.ones(1, 2))
        assert metrics["actor/ratio_max"] == pytest.approx(2.0), name
        assert metrics["actor/ppo_kl"] == pytest.approx(-math.log(2.0) / 2), name
        assert all(isinstance(value, float) for value in metrics.values()), name


def test_policy_loss_kwargs_picks_each_loss_numbers():
    actor = dict(tau_pos=1.0, tau_neg=1.05, clip_ratio=0.2, clip_ratio_low=0.2, clip_ratio_high=0.28,
                 clip_ratio_c=3.0, clip_cov_ratio=2e-4, kl_cov_ratio=2e-4, ppo_kl_coef=1.0)  # fmt: skip
    assert policy_loss_kwargs("sapo", **actor) == {"tau_pos": 1.0, "tau_neg": 1.05}
    assert set(policy_loss_kwargs("vanilla", **actor)) == {
        "clip_ratio", "clip_ratio_low", "clip_ratio_high", "clip_ratio_c"
    }  # fmt: skip
    assert policy_loss_kwargs("gpg", **actor) == {}
    assert policy_loss_numbers("kl_cov") == ("kl_cov_ratio", "ppo_kl_coef")
    # every loss accepts what policy_loss_kwargs hands it
    for name in POLICY_LOSSES:
        get_policy_loss(name)(
            torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2),
            loss_agg_mode="token-mean", **policy_loss_kwargs(name, **actor),
        )  # fmt: skip


def test_default_loss_agg_mode():
    assert default_loss_agg_mode("sapo", None) == "seq-mean-token-mean"
    assert default_loss_agg_mode("gspo", None) == "seq-mean-token-mean"
    assert default_loss_agg_mode("vanilla", None) == "token-mean"
    assert default_loss_agg_mode("sapo", "token-mean") == "token-mean"
    with pytest.raises(ConfigError, match="seq-mean-token-mean"):
        default_loss_agg_mode("sapo", "token_mean")


def test_register_a_user_loss():
    @register_policy_loss("test_double_pg")
    def double_pg(old_log_prob, log_prob, advantages, response_mask, *, loss_agg_mode, factor=2.0,
                  rollout_is_weights=None, global_num_tokens=None, global_num_seqs=None,
                  loss_scale_factor=None):  # fmt: skip
        return (-factor * advantages * log_prob * response_mask).sum(), {}

    try:
        assert get_policy_loss("test_double_pg") is double_pg
        assert policy_loss_numbers("test_double_pg") == ("factor",)
    finally:
        del POLICY_LOSSES["test_double_pg"]


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_every_loss_runs_in_lower_precision(dtype, tolerance):
    gen = torch.Generator().manual_seed(3)
    old = -torch.rand(4, 8, generator=gen, dtype=D) * 2
    new = old + 0.2 * torch.randn(4, 8, generator=gen, dtype=D)
    adv = torch.randn(4, 8, generator=gen, dtype=D)
    mask = torch.arange(8).unsqueeze(0) < torch.tensor([[8], [3], [5], [1]])
    numbers = {"clip_cov": {"clip_cov_lb": 1e9, "clip_cov_ub": 2e9}}  # no random token choice
    for name in POLICY_LOSSES:
        reference, _, _ = run(name, old, new, adv, mask, **numbers.get(name, {}))
        low, metrics, grad = run(
            name, old.to(dtype), new.to(dtype), adv.to(dtype), mask, **numbers.get(name, {})
        )
        assert grad.dtype == dtype, name
        assert low == pytest.approx(reference, abs=tolerance * max(1.0, abs(reference))), name
        assert all(math.isfinite(value) for value in metrics.values()), name


GMPO_MODES = [
    "token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-mean",
    "seq-mean-token-sum-norm",
    "token-sum",
]


@pytest.mark.parametrize("mode", GMPO_MODES)
def test_geo_mean_is_a_mean_over_sequences_of_different_lengths_in_every_mode(mode):
    # seq 0: 3 valid tokens, A = +2, log r = [0.3, 0.6, -0.3] -> min(lr, clip(lr)) = [0.3, 0.4, -0.3],
    #        mean 0.4 / 3, loss -2 e^(0.4/3) = -2.2853304
    # seq 1: 1 valid token (2 padded), A = -1, log r = [-0.1] -> -0.1, loss e^-0.1 = 0.9048374
    # verl: mean over the two sequences, whatever loss_agg_mode says (token-mean would weight seq 0 3:1)
    old = torch.zeros(2, 3, dtype=D)
    new = t([[0.3, 0.6, -0.3], [-0.1, 5.0, 5.0]])
    adv = t([[2.0, 2.0, 2.0], [-1.0, -1.0, -1.0]])
    mask = t([[1, 1, 1], [1, 0, 0]])
    loss, _, _ = run("geo_mean", old, new, adv, mask, mode=mode)
    assert loss == pytest.approx((-2.0 * math.exp(0.4 / 3) + math.exp(-0.1)) / 2, abs=1e-7)
    # rollout IS weights enter as each sequence's geometric mean: seq 0 (0.5 * 2 * 1)^(1/3) = 1,
    # seq 1: 0.25 (its padded weights do not count)
    weights = t([[0.5, 2.0, 1.0], [0.25, 9.0, 9.0]])
    new_ = new.clone().requires_grad_(True)
    weighted, _ = get_policy_loss("geo_mean")(
        old, new_, adv, mask, loss_agg_mode=mode, rollout_is_weights=weights
    )
    assert weighted.item() == pytest.approx(
        (-2.0 * math.exp(0.4 / 3) * 1.0 + math.exp(-0.1) * 0.25) / 2, abs=1e-7
    )
    with pytest.raises(ConfigError, match="loss_agg_mode"):
        run("geo_mean", old, new, adv, mask, mode="per-token")
