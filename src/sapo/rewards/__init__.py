"""Rewards: scoring functions keyed by ``data_source``, custom reward functions, reward managers.

``token_level_scores`` is imported lazily so that reward worker processes (which import this package) do
not pay for importing torch.
"""

from __future__ import annotations

from sapo.rewards.custom import CustomRewardFunction, load_custom_reward_function
from sapo.rewards.dispatch import default_compute_score
from sapo.rewards.managers import (
    REWARD_MANAGERS,
    DAPORewardManager,
    NaiveRewardManager,
    RewardResult,
    RewardSample,
    build_reward_manager,
)


def __getattr__(name: str):
    if name == "token_level_scores":
        from sapo.rewards.token_level import token_level_scores

        return token_level_scores
    raise AttributeError(f"module 'sapo.rewards' has no attribute {name!r}")


__all__ = [
    "REWARD_MANAGERS",
    "CustomRewardFunction",
    "DAPORewardManager",
    "NaiveRewardManager",
    "RewardResult",
    "RewardSample",
    "build_reward_manager",
    "default_compute_score",
    "load_custom_reward_function",
    "token_level_scores",
]
