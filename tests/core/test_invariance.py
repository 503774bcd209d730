"""The gradient of one pass over a mini-batch equals the sum over any micro-batch split and over 2 simulated
data-parallel ranks, for every loss and every aggregation mode (float64, 1e-6).

Trainer convention under test (sapo.core.aggregation): each micro-batch call gets the mini-batch's global
token and sequence counts; micro-batch losses are summed; with DDP gradient averaging over W ranks each rank
multiplies its loss by W.
"""

import pytest
import torch

from sapo.core.aggregation import LOSS_AGG_MODES, num_valid_seqs
from sapo.core.losses import POLICY_LOSSES, get_policy_loss

D = torch.float64
B, T = 8, 7
MICRO_SPLITS = [[0, 1, 2], [3, 4], [5, 6, 7]]
RANKS = [[[0, 1], [2, 3]], [[4], [5, 6, 7]]]  # rank -> its micro-batches
# clip_cov with bounds no centred product reaches (no token chosen); see test_cov_losses_choose_per_call.
NUMBERS = {"clip_cov": {"clip_cov_lb": 1e9, "clip_cov_ub": 2e9}}


def make_batch(seed: int = 0, on_policy: bool = False):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([7, 1, 4, 0, 6, 3, 5, 2])  # one row fully padded
    mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)  # [B, T]
    old = -torch.rand(B, T, generator=gen, dtype=D) * 3  # [B, T]
    new = old if on_policy else old + 0.4 * torch.randn(B, T, generator=gen, dtype=D)
    adv = torch.randn(B, 1, generator=gen, dtype=D).expand(B, T).clone()  # [B, T]
    adv[2] = torch.randn(T, generator=gen, dtype=D)  # one row with token-level advantages
    weights = 0.5 + torch.rand(B, T, generator=gen, dtype=D)  # rollout IS weights
    return old, new, adv, mask, weights


def gradient(name, mode, old, new, adv, mask, weights, groups, scale=1.0, global_counts=True):
    """Sum of the losses of micro-batches ``groups`` (row lists), times ``scale``; d/d new."""
    new = new.clone().requires_grad_(True)
    counts = (
        dict(global_num_tokens=int(mask.sum()), global_num_seqs=num_valid_seqs(mask)) if global_counts else {}
    )
    fn = get_policy_loss(name)
    for rows in groups:
        loss, _ = fn(
            old[rows], new[rows], adv[rows], mask[rows], loss_agg_mode=mode,
            rollout_is_weights=weights[rows], **counts, **NUMBERS.get(name, {}),
        )  # fmt: skip
        (loss * scale).backward()
    return new.grad


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
@pytest.mark.parametrize("name", sorted(POLICY_LOSSES))
def test_micro_batch_and_rank_splits_give_the_one_pass_gradient(name, mode):
    on_policy = name == "kl_cov"  # see module docstring of sapo.core.cov_losses
    batch = make_batch(on_policy=on_policy)
    one_pass = gradient(name, mode, *batch, groups=[list(range(B))], global_counts=False)
    assert one_pass.abs().sum() > 0
    micro = gradient(name, mode, *batch, groups=MICRO_SPLITS)
    torch.testing.assert_close(micro, one_pass, rtol=0, atol=1e-6)
    # 2 ranks: each rank's gradient (loss x W), then DDP's average over ranks
    world = len(RANKS)
    per_rank = [gradient(name, mode, *batch, groups=groups, scale=world) for groups in RANKS]
    torch.testing.assert_close(sum(per_rank) / world, one_pass, rtol=0, atol=1e-6)


def test_local_counts_would_break_invariance():
    # The reason for global counts: normalising each micro-batch by its own counts changes the gradient.
    batch = make_batch()
    one_pass = gradient("sapo", "token-mean", *batch, groups=[list(range(B))], global_counts=False)
    local = gradient("sapo", "token-mean", *batch, groups=MICRO_SPLITS, global_counts=False)
    assert (local - one_pass).abs().max() > 1e-3


def test_cov_losses_choose_per_call():
    # Documented limitation: clip_cov / kl_cov pick max(1, ratio * n_valid) tokens of *each call*, so two
    # micro-batches choose two tokens where one pass chooses one.
    old, new, adv, mask, _ = make_batch()
    kl_cov = get_policy_loss("kl_cov")
    _, whole = kl_cov(old, new, adv, mask, loss_agg_mode="token-sum")
    chosen_whole = whole["actor/kl_cov_frac"] * int(mask.sum())
    chosen_split = 0.0
    for rows in ([0, 1, 2, 3], [4, 5, 6, 7]):
        _, part = kl_cov(old[rows], new[rows], adv[rows], mask[rows], loss_agg_mode="token-sum")
        chosen_split += part["actor/kl_cov_frac"] * int(mask[rows].sum())
    assert round(chosen_whole) == 1
    assert round(chosen_split) == 2
