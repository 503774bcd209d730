"""Advantage estimators against values worked out by hand (or torch.std as an independent reference)."""

import math

import numpy as np
import pytest
import torch

from sapo.core.advantages import ADVANTAGE_ESTIMATORS, compute_advantages

D = torch.float64


def outcome_rewards(scores, length=3):
    """Rewards with each row's score on its last token (verl's outcome layout) and a full mask."""
    rewards = torch.zeros(len(scores), length, dtype=D)
    rewards[:, -1] = torch.tensor(scores, dtype=D)
    return rewards, torch.ones(len(scores), length)


def first_column(name, scores, index, **kwargs):
    rewards, mask = outcome_rewards(scores)
    advantages, returns = compute_advantages(
        name, token_level_rewards=rewards, response_mask=mask, index=index, **kwargs
    )
    # outcome estimators put the same value on every valid token
    assert torch.equal(advantages, advantages[:, :1].expand_as(advantages))
    return advantages[:, 0].tolist(), returns


def test_registry_holds_verl_estimators():
    expected = {"grpo", "rloo", "reinforce_plus_plus", "reinforce_plus_plus_baseline", "remax", "opo", "gpg",
                "grpo_passk", "gae"}  # fmt: skip
    assert expected <= set(ADVANTAGE_ESTIMATORS)


def test_grpo_groups_and_group_of_one():
    # group a: [1, 0, 0]: mean 1/3, unbiased std sqrt(((2/3)^2 + 2 (1/3)^2) / 2) = sqrt(1/3) = 0.5773503
    # group b: [1, 1]: std 0 -> 0 / (0 + 1e-6) = 0.     group c (alone): mean 0, std 1 -> 0.5 / (1 + 1e-6)
    advantages, _ = first_column("grpo", [1, 0, 0, 1, 1, 0.5], ["a", "a", "a", "b", "b", "c"])
    expected = [(2 / 3) / (0.5773503 + 1e-6), (-1 / 3) / (0.5773503 + 1e-6), (-1 / 3) / (0.5773503 + 1e-6),
                0.0, 0.0, 0.5 / (1 + 1e-6)]  # fmt: skip
    assert advantages == pytest.approx(expected, abs=1e-6)


def test_dr_grpo_does_not_divide_by_std():
    advantages, returns = first_column(
        "grpo", [1, 0, 0, 2], np.array([7, 7, 7, 8]), norm_adv_by_std_in_grpo=False
    )
    assert advantages == pytest.approx([2 / 3, -1 / 3, -1 / 3, 2.0])
    assert returns[:, 0].tolist() == pytest.approx(advantages)


def test_index_may_be_a_tensor():
    from_list, _ = first_column("grpo", [1, 0, 3, 1], [0, 0, 1, 1])
    from_tensor, _ = first_column("grpo", [1, 0, 3, 1], torch.tensor([0, 0, 1, 1]))
    assert from_list == from_tensor


def test_rloo_leave_one_out():
    # group [1, 0, 0]: 1 - mean(0, 0) = 1; 0 - mean(1, 0) = -0.5; group of one keeps its score 0.5
    advantages, _ = first_column("rloo", [1, 0, 0, 0.5], [0, 0, 0, 1])
    assert advantages == pytest.approx([1.0, -0.5, -0.5, 0.5])


def test_opo_length_weighted_baseline():
    # lengths [1, 3], scores [1, 0]: baseline (1*1 + 3*0) / 4 = 0.25
    rewards = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=D)
    mask = torch.tensor([[1, 0, 0], [1, 1, 1]])
    advantages, _ = compute_advantages("opo", token_level_rewards=rewards, response_mask=mask, index=[0, 0])
    assert advantages.tolist() == [[0.75, 0.0, 0.0], [-0.25, -0.25, -0.25]]


def test_gpg_alpha_rescaling():
    # B = 4, 2 non-zero scores -> alpha = 2; group means 0.5 -> 2 * (+-0.5)
    advantages, _ = first_column("gpg", [1, 0, 0, 1], [0, 0, 1, 1])
    assert advantages == pytest.approx([1.0, -1.0, -1.0, 1.0])


def test_grpo_passk_only_best_row():
    # group [3, 1, 2]: best row 0 gets 3 - 2 = 1, over std([3, 1, 2]) = 1 (+1e-6); others 0
    advantages, _ = first_column("grpo_passk", [3, 1, 2, 0, 5], [0, 0, 0, 1, 1])
    assert advantages == pytest.approx([1 / (1 + 1e-6), 0, 0, 0, 5 / (math.sqrt(12.5) + 1e-6)])
    raw, _ = first_column("grpo_passk", [3, 1, 2], [0, 0, 0], norm_adv_by_std_in_grpo=False)
    assert raw == pytest.approx([1.0, 0.0, 0.0])


def test_remax_subtracts_greedy_baseline():
    # rewards [0, 1, (pad) 2] -> padding dropped; return-to-go [1, 1]; minus baseline 0.5
    rewards = torch.tensor([[0.0, 1.0, 2.0]], dtype=D)
    mask = torch.tensor([[1, 1, 0]])
    advantages, returns = compute_advantages(
        "remax", token_level_rewards=rewards, response_mask=mask, reward_baselines=torch.tensor([0.5])
    )
    assert advantages.tolist() == [[0.5, 0.5, 0.0]]
    assert returns.tolist() == [[1.0, 1.0, 0.0]]


def whiten_reference(values):
    """Independent reference: torch.std (unbiased) over the given valid values."""
    return (values - values.mean()) / torch.sqrt(values.var() + 1e-8)


def test_reinforce_plus_plus_discounted_and_whitened():
    # gamma 0.5, row 0 rewards [0, 0, 1] -> returns [0.25, 0.5, 1]; row 1 [0, 2, (pad)] -> [1, 2, 0]
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]], dtype=D)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    advantages, returns = compute_advantages(
        "reinforce_plus_plus", token_level_rewards=rewards, response_mask=mask, gamma=0.5
    )
    assert returns.tolist() == [[0.25, 0.5, 1.0], [1.0, 2.0, 0.0]]
    valid = mask.bool()
    torch.testing.assert_close(advantages[valid], whiten_reference(returns[valid]))
    assert advantages[1, 2].item() == 0.0


def _verl_reinforce_returns(rewards, mask, gamma):
    """verl's loop (an independent reference for single-turn masks): the running return times the mask."""
    returns, running = torch.zeros_like(rewards), torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        running = rewards[:, t] + gamma * running
        returns[:, t] = running
        running = running * mask[:, t]
    return returns * mask


def test_reinforce_plus_plus_carries_the_return_across_masked_tokens_inside_a_response():
    # multi-turn: [turn 1][tool output, masked][turn 2], reward 1 on the last token, gamma 0.5.
    # valid positions 0, 2, 3: G_3 = 1, G_2 = 0.5 G_3 = 0.5, G_0 = 0.5 G_2 = 0.25 (position 1 skipped, no
    # discount); verl's reset at the masked token gives G_0 = 0: turn 1 never sees the reward
    rewards = torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=D)
    mask = torch.tensor([[1, 0, 1, 1]])
    _, returns = compute_advantages(
        "reinforce_plus_plus", token_level_rewards=rewards, response_mask=mask, gamma=0.5
    )
    assert returns.tolist() == [[0.25, 0.0, 0.5, 1.0]]
    assert _verl_reinforce_returns(rewards, mask, 0.5).tolist() == [[0.0, 0.0, 0.5, 1.0]]


def test_reinforce_plus_plus_equals_verl_on_single_turn_responses():
    gen = torch.Generator().manual_seed(0)
    rewards = torch.randn(6, 9, generator=gen, dtype=D)
    lengths = torch.tensor([9, 1, 4, 7, 2, 5])
    mask = (torch.arange(9).unsqueeze(0) < lengths.unsqueeze(1)).long()  # valid tokens, then padding
    rewards = rewards * mask  # the trainer puts no reward on padding
    _, returns = compute_advantages(
        "reinforce_plus_plus", token_level_rewards=rewards, response_mask=mask, gamma=0.9
    )
    torch.testing.assert_close(returns, _verl_reinforce_returns(rewards, mask, 0.9))


def test_reinforce_plus_plus_baseline():
    # scores [1, 0 | 3]; group means 0.5 and (alone) 0 -> [0.5, -0.5, 3] on every token, then whitened
    rewards, mask = outcome_rewards([1, 0, 3], length=2)
    advantages, _ = compute_advantages(
        "reinforce_plus_plus_baseline", token_level_rewards=rewards, response_mask=mask, index=[0, 0, 1]
    )
    centred = torch.tensor([0.5, 0.5, -0.5, -0.5, 3.0, 3.0], dtype=D)
    torch.testing.assert_close(advantages.flatten(), whiten_reference(centred))


def test_gae_by_hand():
    # gamma 0.9, lam 0.5; values [0.5, (pad) 9, 0.2], rewards [0, 0, 1]; the padded position is skipped:
    # t=2: delta = 1 - 0.2 = 0.8, A = 0.8
    # t=0: delta = 0 + 0.9*0.2 - 0.5 = -0.32, A = -0.32 + 0.45*0.8 = 0.04
    # row 1 (no padding): values [0, 0, 0], rewards [0, 0, 1]: A_2 = 1, A_1 = 0.45, A_0 = 0.2025
    values = torch.tensor([[0.5, 9.0, 0.2], [0.0, 0.0, 0.0]], dtype=D)
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]], dtype=D)
    mask = torch.tensor([[1, 0, 1], [1, 1, 1]])
    advantages, returns = compute_advantages(
        "gae", token_level_rewards=rewards, response_mask=mask, values=values, gamma=0.9, lam=0.5
    )
    raw = torch.tensor([0.04, 0.8, 0.2025, 0.45, 1.0], dtype=D)  # valid tokens in row order
    valid = mask.bool()
    torch.testing.assert_close(returns[valid], raw + values[valid])
    torch.testing.assert_close(advantages[valid], whiten_reference(raw))
    assert advantages[0, 1].item() == 0.0


def test_padding_never_gets_an_advantage():
    rewards, _ = outcome_rewards([1, 0])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    rewards[:, 0] = torch.tensor([1.0, 0.0], dtype=D)  # score on a valid token
    for name in ("grpo", "rloo", "opo", "gpg", "reinforce_plus_plus_baseline"):
        advantages, _ = compute_advantages(
            name, token_level_rewards=rewards, response_mask=mask, index=[0, 0]
        )
        assert advantages[~mask.bool()].abs().sum() == 0, name


def test_group_of_one_gets_its_raw_score():
    # row 0 is alone in its group (no baseline: mean 0, std 1); rows 1-2 form a group with scores [1, 0]
    scores, index = [2.0, 1.0, 0.0], ["alone", "pair", "pair"]
    assert first_column("grpo", scores, index)[0][0] == pytest.approx(2.0 / (1 + 1e-6))
    assert first_column("grpo", scores, index, norm_adv_by_std_in_grpo=False)[0][0] == 2.0
    assert first_column("rloo", scores, index)[0][0] == 2.0
    assert first_column("opo", scores, index)[0][0] == 2.0
    # gpg: alpha = 3 rows / 2 non-zero scores = 1.5 -> 1.5 * 2
    assert first_column("gpg", scores, index)[0][0] == pytest.approx(3.0)
    # reinforce_plus_plus_baseline: [2 | 0.5, -0.5] on each token before whitening over the batch
    rewards, mask = outcome_rewards(scores, length=2)
    advantages, _ = compute_advantages(
        "reinforce_plus_plus_baseline", token_level_rewards=rewards, response_mask=mask, index=index
    )
    centred = torch.tensor([2.0, 2.0, 0.5, 0.5, -0.5, -0.5], dtype=D)
    torch.testing.assert_close(advantages.flatten(), whiten_reference(centred))
