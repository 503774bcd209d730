"""Rollout correction against hand-computed values on a batch with a known mismatch: the rollout's
log-probs are the trainer's shifted by a constant c_i per sequence, so every token of sequence i has
delta = old - rollout = c_i, token weights exp(c_i) and sequence weights exp(c_i * len_i)."""

import math

import pytest
import torch

from sapo.core.losses import get_policy_loss
from sapo.core.rollout_correction import (
    logprob_gap,
    offpolicy_metrics,
    parse_rejection,
    rollout_correction,
)
from sapo.errors import ConfigError, UserError

D = torch.float64
C = (0.1, -0.3, 0.5)  # per-sequence shift
LENGTHS = (4, 2, 3)
OLD = [[-0.5, -1.0, -0.2, -2.0], [-0.7, -0.1, 0.0, 0.0], [-1.5, -0.3, -0.9, 0.0]]


def case():
    mask = torch.tensor([[1.0] * n + [0.0] * (4 - n) for n in LENGTHS], dtype=D)
    old = torch.tensor(OLD, dtype=D)
    shift = torch.tensor(C, dtype=D).unsqueeze(-1)
    rollout = (old - shift) * mask + torch.tensor(7.0) * (1 - mask)  # padding holds junk: must not matter
    return old, rollout, mask


def per_token(values_per_seq):
    """Flat list of the valid tokens' values, sequence by sequence."""
    return [v for v, n in zip(values_per_seq, LENGTHS, strict=True) for _ in range(n)]


def mean(xs):
    return sum(xs) / len(xs)


def correct(**kwargs):
    old, rollout, mask = case()
    return rollout_correction(old, rollout, mask, **kwargs), mask


def test_token_weights_are_exp_c_truncated_and_their_metrics_are_the_hand_values():
    threshold = 1.2
    out, mask = correct(rollout_is="token", rollout_is_threshold=threshold)
    raw = [math.exp(c) for c in C]  # 1.105, 0.741, 1.649
    truncated = [min(w, threshold) for w in raw]
    expected = torch.tensor([[w] * n + [0.0] * (4 - n) for w, n in zip(truncated, LENGTHS)], dtype=D)
    torch.testing.assert_close(out.weights, expected, rtol=0, atol=1e-12)
    assert not out.weights.requires_grad
    torch.testing.assert_close(out.keep_mask, mask)  # no rejection configured
    m = out.metrics
    tokens = per_token(raw)  # 9 valid tokens
    assert m["rollout_corr/rollout_is_mean"] == pytest.approx(mean(tokens), abs=1e-12)
    assert m["rollout_corr/rollout_is_max"] == pytest.approx(math.exp(0.5), abs=1e-12)
    assert m["rollout_corr/rollout_is_min"] == pytest.approx(math.exp(-0.3), abs=1e-12)
    assert m["rollout_corr/rollout_is_ratio_fraction_high"] == pytest.approx(3 / 9)  # exp(0.5) > 1.2
    assert m["rollout_corr/rollout_is_ratio_fraction_low"] == pytest.approx(2 / 9)  # exp(-0.3) < 1/1.2
    v = [min(max(w, 1 / threshold), threshold) for w in tokens]  # 1.105 x4, 0.833 x2, 1.2 x3
    v_mean = mean(v)
    std = math.sqrt(mean([x * x for x in v]) - v_mean**2)
    assert m["rollout_corr/rollout_is_std"] == pytest.approx(std, abs=1e-12)
    assert m["rollout_corr/rollout_is_eff_sample_size"] == pytest.approx(v_mean**2 / mean([x * x for x in v]))
    assert "rollout_corr/rollout_is_batch_norm_factor" not in m


def test_sequence_weights_are_exp_c_times_length_truncated():
    threshold = 2.0
    out, _ = correct(rollout_is="sequence", rollout_is_threshold=threshold)
    raw = [math.exp(c * n) for c, n in zip(C, LENGTHS)]  # exp(0.4)=1.49, exp(-0.6)=0.55, exp(1.5)=4.48
    truncated = [min(w, threshold) for w in raw]
    expected = torch.tensor([[w] * n + [0.0] * (4 - n) for w, n in zip(truncated, LENGTHS)], dtype=D)
    torch.testing.assert_close(out.weights, expected, rtol=0, atol=1e-12)
    m = out.metrics
    assert m["rollout_corr/rollout_is_mean"] == pytest.approx(mean(per_token(raw)), abs=1e-12)
    assert m["rollout_corr/rollout_is_max"] == pytest.approx(math.exp(1.5), abs=1e-12)
    assert m["rollout_corr/rollout_is_min"] == pytest.approx(math.exp(-0.6), abs=1e-12)
    assert m["rollout_corr/rollout_is_ratio_fraction_high"] == pytest.approx(1 / 3)  # sequences
    assert m["rollout_corr/rollout_is_ratio_fraction_low"] == pytest.approx(0.0)  # 0.55 > 1/2


@pytest.mark.parametrize(
    ("level", "factor"),
    [
        # token: mean of the truncated weights over the 9 valid tokens
        ("token", (4 * math.exp(0.1) + 2 * math.exp(-0.3) + 3 * 1.2) / 9),
        # sequence: mean over the 3 sequences, each once
        ("sequence", (math.exp(0.4) + math.exp(-0.6) + 2.0) / 3),
    ],
)
def test_batch_normalize_divides_by_the_hand_mean(level, factor):
    threshold = 1.2 if level == "token" else 2.0
    plain, mask = correct(rollout_is=level, rollout_is_threshold=threshold)
    normed, _ = correct(rollout_is=level, rollout_is_threshold=threshold, rollout_is_batch_normalize=True)
    assert normed.metrics["rollout_corr/rollout_is_batch_norm_factor"] == pytest.approx(factor, abs=1e-12)
    torch.testing.assert_close(normed.weights, plain.weights / factor, rtol=0, atol=1e-12)
    valid = mask.bool()
    if level == "token":
        assert float(normed.weights[valid].mean()) == pytest.approx(1.0, abs=1e-12)
    else:
        assert float(normed.weights.amax(-1).mean()) == pytest.approx(1.0, abs=1e-12)


# Per sequence: k1 = -c, k2 = c^2 / 2, k3 = exp(c) - 1 - c; sums multiply by the length.
K2 = [0.5 * c * c for c in C]  # 0.005, 0.045, 0.125
K3 = [math.exp(c) - 1 - c for c in C]  # 0.00517, 0.0408, 0.1487


@pytest.mark.parametrize(
    ("rollout_rs", "threshold", "rejected"),
    [
        ("seq_sum_k1", "0.5_2.0", [2]),  # sums -0.4, 0.6, -1.5 against [log 0.5, log 2] = [-0.69, 0.69]
        ("seq_sum_k1", 2.0, [2]),  # one number hi: lo = 1 / hi, the same bounds
        ("seq_sum_k1", "0.5_1.5", [1, 2]),  # 0.6 > log 1.5 = 0.405
        ("seq_sum_k1", "0.5_1.9", [2]),
        ("seq_sum_k1", "0.5_1.8", [1, 2]),  # log 1.8 = 0.588 < 0.6
        ("seq_mean_k1", "0.7_1.5", [2]),  # means -0.1, 0.3, -0.5 against [-0.357, 0.405]
        ("seq_mean_k1", "0.7_1.25", [1, 2]),  # log 1.25 = 0.223 < 0.3
        ("seq_mean_k1", "0.6_1.5", []),  # log 0.6 = -0.511 <= -0.5
        ("seq_mean_k1", "0.62_1.5", [2]),  # log 0.62 = -0.478 > -0.5
        ("seq_mean_k3", 0.1, [2]),
        ("seq_mean_k3", 0.03, [1, 2]),
        ("seq_mean_k3", 0.2, []),
        ("seq_sum_k2", 0.05, [1, 2]),  # sums 0.02, 0.09, 0.375
        ("seq_sum_k2", 0.1, [2]),
        ("seq_max_k2", 0.01, [1, 2]),
        ("seq_max_k3", 0.045, [2]),
        ("token_k2", 0.05, [2]),  # constant per sequence: the token rule rejects whole sequences here
        ("token_k3", 0.04, [1, 2]),
        ("seq_max_k2,seq_sum_k1", "0.1,0.5_1.8", [1, 2]),  # each option with its own threshold
    ],
)
def test_rejection_masks_exactly_the_expected_sequences(rollout_rs, threshold, rejected):
    out, mask = correct(rollout_is=None, rollout_rs=rollout_rs, rollout_rs_threshold=threshold)
    expected = mask.clone()
    for i in rejected:
        expected[i] = 0.0
    torch.testing.assert_close(out.keep_mask, expected)
    assert out.weights is None
    m = out.metrics
    tokens = sum(LENGTHS[i] for i in rejected)
    assert m["rollout_corr/rollout_rs_masked_fraction"] == pytest.approx(tokens / 9)
    assert m["rollout_corr/rollout_rs_seq_masked_fraction"] == pytest.approx(len(rejected) / 3)


def test_token_rejection_masks_single_tokens():
    old, rollout, mask = case()
    rollout[0, 1] = old[0, 1] - 1.0  # one token of sequence 0 far off: k2 = 0.5
    out = rollout_correction(
        old, rollout, mask, rollout_is=None, rollout_rs="token_k2", rollout_rs_threshold=0.1
    )
    expected = mask.clone()
    expected[0, 1] = 0.0
    expected[2] = 0.0  # k2 = 0.125 > 0.1 on every token
    torch.testing.assert_close(out.keep_mask, expected)
    assert out.metrics["rollout_corr/rollout_rs_token_k2_masked_fraction"] == pytest.approx(4 / 9)
    assert out.metrics["rollout_corr/rollout_rs_token_k2_seq_masked_fraction"] == pytest.approx(2 / 3)


def test_offpolicy_metrics_are_the_hand_perplexities():
    old, rollout, mask = case()
    m = offpolicy_metrics(old, rollout, mask)
    lbar_old = [mean(row[:n]) for row, n in zip(OLD, LENGTHS)]
    lbar_rollout = [lo - c for lo, c in zip(lbar_old, C)]
    ppl_old = mean([math.exp(-x) for x in lbar_old])  # ppl = exp(-mean log p) per sequence, then mean
    ppl_rollout = mean([math.exp(-x) for x in lbar_rollout])
    assert m["rollout_corr/training_ppl"] == pytest.approx(ppl_old, abs=1e-12)
    assert m["rollout_corr/rollout_ppl"] == pytest.approx(ppl_rollout, abs=1e-12)
    assert m["rollout_corr/training_log_ppl"] == pytest.approx(-mean(lbar_old), abs=1e-12)
    assert m["rollout_corr/ppl_ratio"] == pytest.approx(mean([math.exp(-c) for c in C]), abs=1e-12)
    assert m["rollout_corr/log_ppl_diff"] == pytest.approx(-mean(C), abs=1e-12)
    assert m["rollout_corr/chi2_token"] == pytest.approx(mean(per_token([math.exp(2 * c) for c in C])) - 1)
    chi2_seq = mean([math.exp(2 * c * n) for c, n in zip(C, LENGTHS)]) - 1
    assert m["rollout_corr/chi2_seq"] == pytest.approx(chi2_seq)
    assert logprob_gap(old, rollout, mask) == pytest.approx(mean(per_token([abs(c) for c in C])), abs=1e-12)


def test_no_mismatch_gives_unit_weights_and_rejects_nothing():
    old, _, mask = case()
    out = rollout_correction(
        old, old.clone(), mask, rollout_is="sequence", rollout_rs="seq_mean_k3", rollout_rs_threshold=1e-6
    )
    torch.testing.assert_close(out.weights, mask)
    torch.testing.assert_close(out.keep_mask, mask)
    assert out.metrics["rollout_corr/rollout_is_eff_sample_size"] == pytest.approx(1.0)
    assert out.metrics["rollout_corr/ppl_ratio"] == pytest.approx(1.0)
    assert logprob_gap(old, old, mask) == 0.0


def test_sapo_loss_with_weights_is_the_hand_product():
    # two tokens of one sequence and one token of another; seq-mean-token-mean, tau_pos = 1, tau_neg = 1.05
    old = torch.tensor([[-1.0, -0.5], [-0.2, 0.0]], dtype=D)
    new = old + torch.tensor([[math.log(1.5), 0.0], [math.log(0.8), 0.0]], dtype=D)  # r = 1.5, 1, 0.8
    adv = torch.tensor([[1.0, 1.0], [-2.0, 0.0]], dtype=D)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=D)
    weights = torch.tensor([[1.3, 0.6], [2.0, 9.0]], dtype=D)  # 9.0 sits on padding

    def sig(x):
        return 1 / (1 + math.exp(-x))

    l00 = -(4 / 1.0) * sig(1.0 * 0.5) * 1.0
    l01 = -(4 / 1.0) * sig(0.0) * 1.0
    l10 = -(4 / 1.05) * sig(1.05 * -0.2) * -2.0
    hand = ((1.3 * l00 + 0.6 * l01) / 2 + 2.0 * l10) / 2
    new = new.clone().requires_grad_(True)
    loss, _ = get_policy_loss("sapo")(
        old, new, adv, mask, loss_agg_mode="seq-mean-token-mean", rollout_is_weights=weights
    )
    assert loss.item() == pytest.approx(hand, abs=1e-12)
    loss.backward()
    # d/d log_prob of -w (4/tau) s A is -w A 4 s (1 - s) r
    s = sig(0.5)
    assert new.grad[0, 0].item() == pytest.approx(-1.3 * 1.0 * 4 * s * (1 - s) * 1.5 / 4, abs=1e-12)


@pytest.mark.parametrize(
    ("rollout_rs", "threshold", "words"),
    [
        ("seq_sum_k9", 1.0, "is not a rejection mode"),
        ("token_k2", None, "rollout_rs_threshold must be set"),
        ("token_k2", "0.5_2.0", "one positive upper bound"),
        ("token_k2", -1.0, "positive"),
        ("seq_mean_k1", "2.0_0.5", "0 < lo <= hi"),
        ("token_k2,seq_sum_k1", "1,2,3", "3 thresholds for 2"),
    ],
)
def test_bad_rejection_settings_name_the_key(rollout_rs, threshold, words):
    with pytest.raises(ConfigError, match="algorithm.rollout_correction.rollout_rs") as err:
        parse_rejection(rollout_rs, threshold)
    assert words in str(err.value)


def test_bad_is_settings_and_missing_rollout_log_probs_are_errors():
    old, rollout, mask = case()
    with pytest.raises(ConfigError, match="rollout_is must be null, token or sequence"):
        rollout_correction(old, rollout, mask, rollout_is="tokens")
    with pytest.raises(ConfigError, match="rollout_is_threshold must be a positive"):
        rollout_correction(old, rollout, mask, rollout_is="token", rollout_is_threshold=0.0)
    with pytest.raises(UserError, match="calculate_log_probs=True"):
        rollout_correction(old, None, mask, rollout_is="token")
    rollout[1, 0] = -math.inf
    with pytest.raises(UserError, match="non-finite"):
        logprob_gap(old, rollout, mask)
