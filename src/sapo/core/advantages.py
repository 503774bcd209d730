"""Advantage estimators, keyed by verl's ``algorithm.adv_estimator`` names.

Call :func:`compute_advantages` with the name, ``token_level_rewards [B, T]``, ``response_mask [B, T]``,
``index`` (the prompt / group id of each row: a list, numpy array or tensor of hashable ids) and any
estimator numbers; numbers an estimator does not take are ignored, so the trainer may pass all of
``gamma, lam, norm_adv_by_std_in_grpo, epsilon, values, reward_baselines``. Each returns
``(advantages [B, T], returns [B, T])``, zero on padding. Outcome estimators use the row's score
``R_i = sum_t token_level_rewards_it``.

A group of one (a prompt with a single sample) has no baseline: following verl, its mean is taken as 0 and
its std as 1, so grpo/rloo/gpg/reinforce_plus_plus_baseline/opo give the raw score ``R_i`` (grpo divides it by
``1 + epsilon``). ``grpo_passk`` needs two samples and raises. Set ``actor_rollout_ref.rollout.n >= 2``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch

from sapo.core.masked import as_bool_mask, masked_whiten, masked_zero
from sapo.errors import UserError, unknown_name

AdvantageEstimator = Callable[..., tuple[torch.Tensor, torch.Tensor]]
# Keyword arguments the trainer supplies from the batch, not from the config.
BATCH_KEYWORDS = frozenset({"token_level_rewards", "response_mask", "index", "values"})


@dataclass(frozen=True)
class AdvantageEstimatorEntry:
    """What the registry knows about one estimator (what the trainer and the config checks need)."""

    name: str
    fn: AdvantageEstimator
    needs_group: bool  # its baseline is the prompt's group: rollout.n >= 2, or every advantage is 0
    needs_values: bool  # it reads a critic's values (gae)

    @property
    def numbers(self) -> dict[str, object]:
        """Its own numbers and their signature defaults (filled from ``algorithm.<name>`` when that key
        exists), e.g. ``{'norm_adv_by_std_in_grpo': True, 'epsilon': 1e-06}`` for grpo."""
        parameters = inspect.signature(self.fn).parameters.values()
        return {p.name: p.default for p in parameters if p.name not in BATCH_KEYWORDS}


ADVANTAGE_ESTIMATORS: dict[str, AdvantageEstimator] = {}  # name -> estimator function
ADVANTAGE_ESTIMATOR_ENTRIES: dict[str, AdvantageEstimatorEntry] = {}  # name -> the whole entry


def register_advantage_estimator(
    name: str, *, needs_group: bool = False, needs_values: bool = False
) -> Callable[[AdvantageEstimator], AdvantageEstimator]:
    """Decorator: register ``fn(*, token_level_rewards, response_mask, index, ...)`` as ``name``.
    ``needs_group``: its baseline is the prompt's group (the config then requires rollout.n >= 2);
    ``needs_values``: it reads the critic's values (the config then requires the critic)."""

    def decorator(fn: AdvantageEstimator) -> AdvantageEstimator:
        ADVANTAGE_ESTIMATORS[name] = fn
        ADVANTAGE_ESTIMATOR_ENTRIES[name] = AdvantageEstimatorEntry(name, fn, needs_group, needs_values)
        return fn

    return decorator


def advantage_estimator_entry(name: str) -> AdvantageEstimatorEntry:
    """The entry registered as ``name``; a ConfigError listing the valid names otherwise."""
    if name not in ADVANTAGE_ESTIMATOR_ENTRIES:
        raise unknown_name(
            "advantage estimator", name, "algorithm.adv_estimator", ADVANTAGE_ESTIMATOR_ENTRIES
        )
    return ADVANTAGE_ESTIMATOR_ENTRIES[name]


def get_advantage_estimator(name: str) -> AdvantageEstimator:
    return advantage_estimator_entry(name).fn


def compute_advantages(name: str, *, token_level_rewards, response_mask, index=None, **kwargs):
    """Run estimator ``name``; returns ``(advantages [B, T], returns [B, T])`` (see module docstring)."""
    estimator = get_advantage_estimator(name)
    if token_level_rewards.shape != response_mask.shape or token_level_rewards.dim() != 2:
        raise UserError(
            f"token_level_rewards {tuple(token_level_rewards.shape)} and response_mask "
            f"{tuple(response_mask.shape)} must both be [batch, response_length]"
        )
    mask = as_bool_mask(response_mask)
    if not bool(torch.isfinite(token_level_rewards[mask]).all()):
        raise UserError("token_level_rewards has NaN or inf at valid positions: check the reward function")
    params = inspect.signature(estimator).parameters
    own = {key: value for key, value in kwargs.items() if key in params}
    if "index" in params:
        own["index"] = index
    rewards = masked_zero(token_level_rewards.detach(), mask)
    with torch.no_grad():
        return estimator(token_level_rewards=rewards, response_mask=mask, **own)


# ---------------------------------------------------------------------------------------------------------
# grouping helpers


def group_ids(index, batch_size: int) -> torch.Tensor:
    """Map arbitrary hashable group ids (one per row) to ``0..G-1`` in order of first appearance."""
    if index is None:
        raise UserError("this advantage estimator needs `index`: the prompt id of each row (uid in verl)")
    items = index.tolist() if hasattr(index, "tolist") else list(index)
    if len(items) != batch_size:
        raise UserError(f"index has {len(items)} entries but the batch has {batch_size} rows")
    codes: dict[object, int] = {}
    return torch.tensor([codes.setdefault(item, len(codes)) for item in items], dtype=torch.long)


def group_stats(scores: torch.Tensor, groups: torch.Tensor):
    """Per row: (group size, group mean, unbiased group std); size-1 groups get mean 0 and std 1 (verl)."""
    n_groups = int(groups.max()) + 1 if groups.numel() else 0
    groups = groups.to(scores.device)
    counts = torch.zeros(n_groups, dtype=scores.dtype, device=scores.device).index_add_(
        0, groups, torch.ones_like(scores)
    )  # [G]
    sums = torch.zeros_like(counts).index_add_(0, groups, scores)  # [G]
    means = sums / counts  # [G]
    squares = torch.zeros_like(counts).index_add_(0, groups, (scores - means[groups]) ** 2)  # [G]
    stds = torch.sqrt(squares / (counts - 1).clamp(min=1))  # [G]
    single = counts == 1
    means = torch.where(single, torch.zeros_like(means), means)
    stds = torch.where(single, torch.ones_like(stds), stds)
    return counts[groups], means[groups], stds[groups]  # [B] each


def _outcome(scores: torch.Tensor, mask: torch.Tensor):
    """Broadcast a per-row advantage to the row's valid tokens; returns == advantages (verl)."""
    advantages = masked_zero(scores.unsqueeze(-1).expand(mask.shape), mask)  # [B, T]
    return advantages, advantages


# ---------------------------------------------------------------------------------------------------------
# estimators


@register_advantage_estimator("grpo", needs_group=True)
def grpo_advantages(*, token_level_rewards, response_mask, index, norm_adv_by_std_in_grpo=True, epsilon=1e-6):
    """GRPO (Shao et al., arXiv 2402.03300): ``A_i = (R_i - mean_g R) / (std_g R + epsilon)``.

    ``norm_adv_by_std_in_grpo=False`` drops the division: Dr. GRPO (Liu et al., arXiv 2503.20783).
    std is the unbiased (n - 1) sample std, as torch.std and verl.
    """
    scores = token_level_rewards.sum(dim=-1)  # [B]
    _, mean, std = group_stats(scores, group_ids(index, len(scores)))
    centred = scores - mean  # [B]
    return _outcome(centred / (std + epsilon) if norm_adv_by_std_in_grpo else centred, response_mask)


@register_advantage_estimator("rloo", needs_group=True)
def rloo_advantages(*, token_level_rewards, response_mask, index):
    """RLOO (Ahmadian et al., arXiv 2402.14740): leave-one-out baseline,
    ``A_i = R_i - mean_{j != i} R_j = n / (n - 1) * (R_i - mean_g R)``; a group of one gets ``R_i``."""
    scores = token_level_rewards.sum(dim=-1)  # [B]
    count, mean, _ = group_stats(scores, group_ids(index, len(scores)))
    factor = torch.where(count > 1, count / (count - 1).clamp(min=1), torch.ones_like(count))  # [B]
    return _outcome(torch.where(count > 1, factor * (scores - mean), scores), response_mask)


@register_advantage_estimator("reinforce_plus_plus")
def reinforce_plus_plus_advantages(*, token_level_rewards, response_mask, gamma=1.0):
    """REINFORCE++ (Hu, arXiv 2501.03262): the discounted return-to-go over the response's valid tokens,
    ``G_t = r_t + gamma G_next(t)`` with ``next(t)`` the next valid position, whitened over all valid tokens
    of the batch. Returns ``G`` (0 at masked positions).

    Masked positions inside a response (a multi-turn rollout's tool output) are skipped: the return is
    carried across them undiscounted, so an earlier turn's tokens are credited with the final reward, as
    GAE does here. verl's loop multiplies the running return by the mask at every position instead, which
    resets it at the first masked token it meets going backwards: identical for a single-turn response
    (valid tokens, then padding), but in multi-turn every turn before a masked span gets only the rewards
    of its own turn. docs/algorithms.md has a worked example."""
    valid = response_mask.bool()  # [B, T]
    returns = torch.zeros_like(token_level_rewards)  # [B, T]
    running = torch.zeros_like(token_level_rewards[:, 0])  # [B]
    for t in reversed(range(token_level_rewards.shape[1])):
        running = torch.where(valid[:, t], token_level_rewards[:, t] + gamma * running, running)
        returns[:, t] = torch.where(valid[:, t], running, torch.zeros_like(running))
    return masked_whiten(returns, response_mask), returns


@register_advantage_estimator("reinforce_plus_plus_baseline")
def reinforce_plus_plus_baseline_advantages(*, token_level_rewards, response_mask, index):
    """REINFORCE++-baseline (arXiv 2501.03262): ``R_i - mean_g R`` on every token, then whitened over
    all valid tokens of the batch (a group of one keeps ``R_i`` before whitening)."""
    scores = token_level_rewards.sum(dim=-1)  # [B]
    _, mean, _ = group_stats(scores, group_ids(index, len(scores)))
    advantages, _ = _outcome(scores - mean, response_mask)
    advantages = masked_whiten(advantages, response_mask)
    return advantages, advantages


@register_advantage_estimator("remax")
def remax_advantages(*, token_level_rewards, response_mask, reward_baselines=None):
    """ReMax (Li et al., arXiv 2310.10505): return-to-go minus the reward of the greedy response,
    ``A_it = sum_{t' >= t} r_it' - b_i`` (``reward_baselines [B]``, scored by the trainer). Returns G."""
    if reward_baselines is None:
        raise UserError(
            "remax needs reward_baselines: the reward of each prompt's greedy response, shape [B]"
        )
    returns = token_level_rewards.flip(dims=[-1]).cumsum(dim=-1).flip(dims=[-1])  # [B, T]
    baseline = reward_baselines.to(returns.dtype).unsqueeze(-1)  # [B, 1]
    return masked_zero(returns - baseline, response_mask), returns


@register_advantage_estimator("opo", needs_group=True)
def opo_advantages(*, token_level_rewards, response_mask, index):
    """OPO (Hao et al., arXiv 2505.23585): length-weighted baseline ``b_g = sum L_j R_j / sum L_j``,
    ``A_i = R_i - b_g`` (``L`` = valid response length); a group of one gets ``R_i``."""
    scores = token_level_rewards.sum(dim=-1)  # [B]
    lengths = response_mask.sum(dim=-1).to(scores.dtype)  # [B]
    groups = group_ids(index, len(scores))
    count, _, _ = group_stats(scores, groups)
    weighted = torch.zeros_like(scores).index_add_(0, groups, lengths * scores)[groups]  # [B]
    total = torch.zeros_like(scores).index_add_(0, groups, lengths)[groups]  # [B]
    baseline = torch.where(count > 1, weighted / total.clamp(min=1), torch.zeros_like(scores))
    return _outcome(scores - baseline, response_mask)


@register_advantage_estimator("gpg")
def gpg_advantages(*, token_level_rewards, response_mask, index, f_norm=1.0):
    """GPG (Chu et al., arXiv 2504.02546): ``A_i = alpha (R_i - mean_g R) / f_norm`` with
    ``alpha = B / max(1, #rows with R != 0)`` (corrects for groups that carry no signal)."""
    scores = token_level_rewards.sum(dim=-1)  # [B]
    _, mean, _ = group_stats(scores, group_ids(index, len(scores)))
    alpha = len(scores) / max(1, int(torch.count_nonzero(scores)))
    return _outcome(alpha * (scores - mean) / f_norm, response_mask)


@register_advantage_estimator("grpo_passk", needs_group=True)
def grpo_passk_advantages(
    *, token_level_rewards, response_mask, index, norm_adv_by_std_in_grpo=True, epsilon=1e-6
):
    """Pass@k GRPO (arXiv 2503.19595, verl's form): only each group's best row gets an advantage,
    ``R_max - R_second`` (divided by ``std_g R + epsilon`` when normalising); all others 0."""
    scores = token_level_rewards.sum(dim=-1)  # [B]
    groups = group_ids(index, len(scores))
    advantages = torch.zeros_like(scores)  # [B]
    _, _, std = group_stats(scores, groups)
    for group in range(int(groups.max()) + 1 if len(groups) else 0):
        rows = torch.nonzero(groups == group).squeeze(-1)
        if len(rows) < 2:
            raise UserError(
                "grpo_passk needs at least 2 samples per prompt: set actor_rollout_ref.rollout.n >= 2"
            )
        top = torch.topk(scores[rows], 2)
        gap = top.values[0] - top.values[1]
        best = rows[top.indices[0]]
        advantages[best] = gap / (std[best] + epsilon) if norm_adv_by_std_in_grpo else gap
    return _outcome(advantages, response_mask)


@register_advantage_estimator("gae", needs_values=True)
def gae_advantages(*, token_level_rewards, response_mask, values=None, gamma=1.0, lam=1.0):
    """GAE (Schulman et al., arXiv 1506.02438) with a critic's ``values [B, T]``:
    ``delta_t = r_t + gamma V_{t+1} - V_t``, ``A_t = delta_t + gamma lam A_{t+1}`` (padding skipped: V and A
    carry over masked positions); ``returns = A + V``; advantages then whitened over valid tokens."""
    if values is None:
        raise UserError("gae needs the critic's values [B, T]: enable the critic or choose grpo")
    mask = response_mask.to(values.dtype)
    next_value = torch.zeros_like(values[:, 0])  # [B]
    next_advantage = torch.zeros_like(values[:, 0])  # [B]
    advantages = torch.zeros_like(values)  # [B, T]
    for t in reversed(range(values.shape[1])):
        delta = token_level_rewards[:, t] + gamma * next_value - values[:, t]
        candidate = delta + gamma * lam * next_advantage
        next_value = values[:, t] * mask[:, t] + (1 - mask[:, t]) * next_value
        next_advantage = candidate * mask[:, t] + (1 - mask[:, t]) * next_advantage
        advantages[:, t] = next_advantage
    returns = advantages + values  # [B, T]
    return masked_whiten(advantages, response_mask), returns
