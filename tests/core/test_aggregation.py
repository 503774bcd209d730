"""loss_agg_mode formulas on a hand-sized matrix, global counts, and the SAPO aggregation properties."""

import math

import pytest
import torch

from sapo.core.aggregation import LOSS_AGG_MODES, aggregate_loss
from sapo.core.losses import get_policy_loss
from sapo.errors import ConfigError

D = torch.float64
LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]], dtype=D)
# row 0 has 2 valid tokens, row 1 one, row 2 none (it must not count as a sequence)
MASK = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("token-mean", (1 + 2 + 4) / 3),
        ("seq-mean-token-sum", (3 + 4) / 2),
        ("seq-mean-token-mean", (1.5 + 4) / 2),
        ("seq-mean-token-sum-norm", (3 + 4) / (2 * 3)),  # C defaults to T = 3
        ("token-sum", 7.0),
    ],
)
def test_modes_by_hand(mode, expected):
    assert aggregate_loss(LOSS, MASK, mode).item() == pytest.approx(expected)


def test_global_counts_replace_local_ones():
    assert aggregate_loss(LOSS, MASK, "token-mean", global_num_tokens=7).item() == pytest.approx(1.0)
    assert aggregate_loss(LOSS, MASK, "seq-mean-token-sum", global_num_seqs=4).item() == pytest.approx(7 / 4)
    assert aggregate_loss(LOSS, MASK, "seq-mean-token-mean", global_num_seqs=4).item() == pytest.approx(
        5.5 / 4
    )
    norm = aggregate_loss(LOSS, MASK, "seq-mean-token-sum-norm", global_num_seqs=4, loss_scale_factor=10)
    assert norm.item() == pytest.approx(7 / 40)


def test_padding_values_never_leak():
    poisoned = LOSS.clone()
    poisoned[MASK == 0] = math.nan
    for mode in LOSS_AGG_MODES:
        assert aggregate_loss(poisoned, MASK, mode).item() == pytest.approx(
            aggregate_loss(LOSS, MASK, mode).item()
        )


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_all_masked_gives_zero_and_zero_gradient(mode):
    values = LOSS.clone().requires_grad_(True)
    loss = aggregate_loss(values, torch.zeros(3, 3), mode)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(values.grad, torch.zeros_like(values))


def test_unknown_mode_lists_the_valid_ones():
    with pytest.raises(ConfigError) as error:
        aggregate_loss(LOSS, MASK, "seq-mean")
    for mode in LOSS_AGG_MODES:
        assert mode in str(error.value)


def test_sapo_honours_explicit_loss_agg_mode():
    # r = 1 everywhere, tau = 1, A = +1: token loss -2. Row 0 has 2 tokens, row 1 has 1; make row 1's A = +2
    # so its token loss is -4. token-mean: (-2 - 2 - 4) / 3; seq-mean-token-mean: (-2 + -4) / 2.
    old = torch.zeros(2, 2, dtype=D)
    adv = torch.tensor([[1.0, 1.0], [2.0, 2.0]], dtype=D)
    mask = torch.tensor([[1, 1], [1, 0]])
    sapo = get_policy_loss("sapo")
    token_mean, _ = sapo(old, old, adv, mask, loss_agg_mode="token-mean", tau_pos=1.0)
    seq_mean, _ = sapo(old, old, adv, mask, loss_agg_mode="seq-mean-token-mean", tau_pos=1.0)
    token_sum, _ = sapo(old, old, adv, mask, loss_agg_mode="token-sum", tau_pos=1.0)
    assert token_mean.item() == pytest.approx(-8 / 3)
    assert seq_mean.item() == pytest.approx(-3.0)
    assert token_sum.item() == pytest.approx(-8.0)
