"""KL estimators and controllers, entropy, masked reductions and diagnostics, against hand values."""

import math

import pytest
import torch

from sapo.core.diagnostics import ratio_metrics, reduce_metrics, rollout_mismatch_metrics, sapo_gate_metrics
from sapo.core.kl import AdaptiveKLController, FixedKLController, entropy_from_logits, kl_penalty
from sapo.core.masked import masked_mean, masked_var, masked_whiten

D = torch.float64
LOG_PROB = torch.tensor([[-1.0, -1.5]], dtype=D)
REF = torch.tensor([[-1.5, -1.0]], dtype=D)  # d = log_prob - ref = [0.5, -0.5]


@pytest.mark.parametrize(
    "names, expected",
    [
        (("kl", "k1"), [0.5, -0.5]),
        (("abs",), [0.5, 0.5]),
        (("mse", "k2"), [0.125, 0.125]),
        # exp(-d) - 1 + d: e^-0.5 - 0.5 = 0.1065307, e^0.5 - 1.5 = 0.1487213
        (("low_var_kl", "k3"), [0.1065307, 0.1487213]),
    ],
)
def test_kl_estimators_by_hand(names, expected):
    for name in names:
        assert kl_penalty(LOG_PROB, REF, name).tolist()[0] == pytest.approx(expected, abs=1e-7)


def test_low_var_kl_clamped():
    # d = -30: -d clamped to 20, e^20 - 20 - 1 is huge, result clamped to 10
    value = kl_penalty(torch.tensor([[-30.0]]), torch.tensor([[0.0]]), "low_var_kl")
    assert value.item() == 10.0


def test_full_kl_over_the_vocabulary():
    # p = [0.5, 0.5], p_ref = [0.25, 0.75]: 0.5 ln 2 + 0.5 ln(2/3) = 0.1438410
    log_p = torch.log(torch.tensor([[[0.5, 0.5]]], dtype=D))
    log_ref = torch.log(torch.tensor([[[0.25, 0.75]]], dtype=D))
    assert kl_penalty(log_p, log_ref, "full").item() == pytest.approx(0.1438410, abs=1e-7)
    # a zero-probability entry (log p = -inf) contributes 0 log 0 = 0: p = [1, 0], p_ref = [0.5, 0.5] -> ln 2
    certain = torch.log(torch.tensor([[[1.0, 0.0]]], dtype=D))
    half = torch.log(torch.tensor([[[0.5, 0.5]]], dtype=D))
    assert kl_penalty(certain, half, "full").item() == pytest.approx(math.log(2.0))
    with pytest.raises(ValueError, match=r"\[B, T, V\]"):
        kl_penalty(LOG_PROB, REF, "full")


def test_kl_controllers():
    fixed = FixedKLController(0.05)
    fixed.update(current_kl=100.0, n_steps=256)
    assert fixed.value == 0.05
    # target 6, horizon 10000: kl 9 -> error clip(0.5) = 0.2, x (1 + 0.2 * 256 / 10000) = 1.00512
    adaptive = AdaptiveKLController(init_kl_coef=0.1, target_kl=6.0, horizon=10000)
    adaptive.update(current_kl=9.0, n_steps=256)
    assert adaptive.value == pytest.approx(0.100512)
    # kl 5.4 -> error -0.1 -> x (1 - 0.1 * 100 / 10000) = 0.999
    adaptive.update(current_kl=5.4, n_steps=100)
    assert adaptive.value == pytest.approx(0.100512 * 0.999)


def test_entropy_from_logits():
    # uniform over 2: ln 2; p = [0.25, 0.75]: -(0.25 ln 0.25 + 0.75 ln 0.75) = 0.5623351
    logits = torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)]], dtype=D)
    assert entropy_from_logits(logits).tolist() == pytest.approx([math.log(2.0), 0.5623351], abs=1e-7)
    masked_vocab = torch.tensor([[0.0, 0.0, -math.inf]], dtype=D)
    assert entropy_from_logits(masked_vocab).item() == pytest.approx(math.log(2.0))
    assert entropy_from_logits(logits + 100.0).tolist() == pytest.approx([math.log(2.0), 0.5623351], abs=1e-7)


def test_masked_reductions():
    values = torch.tensor([[1.0, 2.0, math.nan], [3.0, math.inf, 4.0]], dtype=D)
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]])
    assert masked_mean(values, mask).item() == pytest.approx(2.5)
    assert masked_mean(values, mask, dim=-1).tolist() == pytest.approx([1.5, 3.5])
    # unbiased variance of [1, 2, 3, 4]: 5 / 3
    assert masked_var(values, mask).item() == pytest.approx(5 / 3)
    whitened = masked_whiten(values, mask)
    expected = (torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=D) - 2.5) / math.sqrt(5 / 3 + 1e-8)
    torch.testing.assert_close(whitened[mask.bool()], expected)
    assert whitened[~mask.bool()].tolist() == [0.0, 0.0]
    # degenerate: nothing valid -> 0; one valid -> variance 0 and whitened 0
    assert masked_mean(values, torch.zeros(2, 3)).item() == 0.0
    single = torch.zeros(2, 3)
    single[0, 0] = 1
    assert masked_var(values, single).item() == 0.0
    assert masked_whiten(values, single).abs().sum().item() == 0.0


def test_ratio_metrics_by_hand():
    # r = [1, 2, 0.5] (+ a padded token): mean 7/6; quantiles on sorted [0.5, 1, 2] with linear interpolation:
    # p01 at position 0.02 -> 0.5 + 0.02 * 0.5 = 0.51; p99 at 1.98 -> 1 + 0.98 * 1 = 1.98
    # ppo_kl = mean(-log r) = 0
    log_ratio = torch.log(torch.tensor([[1.0, 2.0, 0.5, 100.0]], dtype=D))
    metrics = ratio_metrics(log_ratio, torch.tensor([[1, 1, 1, 0]]))
    assert metrics == pytest.approx(
        {
            "actor/ratio_mean": 7 / 6,
            "actor/ratio_min": 0.5,
            "actor/ratio_max": 2.0,
            "actor/ratio_p01": 0.51,
            "actor/ratio_p99": 1.98,
            "actor/ppo_kl": 0.0,
        }  # fmt: skip
    )
    assert ratio_metrics(log_ratio, torch.zeros(1, 4)) == {}


def test_gate_metrics_soft_clip_threshold():
    # tau = 1: weight sech^2((r - 1) / 2)
    # r = 3 -> sech^2(1) = 0.4199743 < 0.5; r = 1 -> 1; r = 2 -> 0.7864477
    ratio = torch.tensor([[3.0, 1.0, 2.0]], dtype=D)
    adv = torch.tensor([[1.0, 1.0, 0.0]], dtype=D)
    metrics = sapo_gate_metrics(ratio, adv, torch.ones(1, 3), tau_pos=1.0, tau_neg=1.0)
    assert metrics["actor/sapo/gate_weight_mean"] == pytest.approx((0.4199743 + 1 + 0.7864477) / 3, abs=1e-7)
    assert metrics["actor/sapo/gate_weight_mean_pos"] == pytest.approx((0.4199743 + 1) / 2, abs=1e-7)
    assert "actor/sapo/gate_weight_mean_neg" not in metrics  # no negative advantage: not reported as 0
    assert metrics["actor/sapo/soft_clip_frac"] == pytest.approx(1 / 3)


def test_rollout_mismatch_by_hand():
    # d = rollout - trainer = [0.5, 0]: k1 0.25; k3 mean(e^-0.5 - 1 + 0.5, 0) = 0.1065307 / 2
    rollout = torch.tensor([[-1.0, -2.0, 0.0]], dtype=D)
    trainer = torch.tensor([[-1.5, -2.0, -9.0]], dtype=D)
    metrics = rollout_mismatch_metrics(rollout, trainer, torch.tensor([[1, 1, 0]]))
    assert metrics == pytest.approx(
        {
            "rollout_corr/kl": 0.25,
            "rollout_corr/k3_kl": 0.1065307 / 2,
            "rollout_corr/mean_abs_diff": 0.25,
            "rollout_corr/max_abs_diff": 0.5,
        },  # fmt: skip
        abs=1e-7,
    )


def test_reduce_metrics_across_micro_batches():
    reduced = reduce_metrics(
        [
            {
                "actor/ratio_min": 0.9,
                "actor/ratio_max": 1.2,
                "actor/ppo_kl": 0.1,
                "actor/sapo/gate_weight_mean_neg": 0.8,
            },
            {"actor/ratio_min": 0.7, "actor/ratio_max": 1.1, "actor/ppo_kl": 0.3},
        ]
    )
    assert reduced == pytest.approx(
        {
            "actor/ratio_min": 0.7,
            "actor/ratio_max": 1.2,
            "actor/ppo_kl": 0.2,
            "actor/sapo/gate_weight_mean_neg": 0.8,
        }
    )


def test_reduce_metrics_weights_means_by_tokens_not_min_max():
    micro = [{"actor/ppo_kl": 0.1, "actor/ratio_max": 1.2}, {"actor/ppo_kl": 0.3, "actor/ratio_max": 1.5}]
    reduced = reduce_metrics(micro, weights=[3, 1])  # 3 and 1 valid tokens
    assert reduced == pytest.approx({"actor/ppo_kl": (3 * 0.1 + 0.3) / 4, "actor/ratio_max": 1.5})
    assert reduce_metrics(micro, weights=[0, 0])["actor/ppo_kl"] == pytest.approx(0.2)  # no tokens: plain


def test_selection_quantile_matches_torch_quantile():
    from sapo.core.diagnostics import quantile

    gen = torch.Generator().manual_seed(0)
    for n in (1, 2, 3, 101, 5000):
        values = torch.randn(n, generator=gen, dtype=D)
        for q in (0.0, 0.01, 0.5, 0.99, 1.0):
            assert quantile(values, q) == pytest.approx(torch.quantile(values, q).item(), abs=1e-12)
