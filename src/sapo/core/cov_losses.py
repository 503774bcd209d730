"""Clip-Cov and KL-Cov (Cui et al., "The Entropy Mechanism of RL for Reasoning LMs", arXiv 2505.22617).

Both treat a small set of tokens with large covariance between advantage and log-prob differently (those
tokens drive entropy collapse): Clip-Cov drops their gradient, KL-Cov adds a ``|log r|`` penalty to them.

Limitation (true of verl's implementation too): the tokens are chosen from statistics of the tensors
*given to the call* (batch means of A and log_prob, a count proportional to the call's valid tokens, and for
Clip-Cov a random subset). So, unlike the other losses, splitting a mini-batch into micro-batches or ranks
can change which tokens are chosen and hence the gradient. Where no token is chosen (Clip-Cov) or the chosen
tokens' penalty is flat (KL-Cov at r = 1, where ``|log r|`` has zero value and zero gradient), the gradient is
split-invariant like every other loss; the tests check exactly these cases.
"""

from __future__ import annotations

import torch

from sapo.core.diagnostics import fraction, ratio_metrics
from sapo.core.loss_registry import (
    clip_range,
    finish_loss,
    prepare_inputs,
    register_policy_loss,
    token_log_ratio,
)
from sapo.core.masked import masked_mean
from sapo.errors import ConfigError


def _centered_product(adv: torch.Tensor, new: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token ``(A - mean A) * (log_prob - mean log_prob)`` over the call's valid tokens (detached)."""
    new = new.detach()
    return (adv - masked_mean(adv, mask)) * (new - masked_mean(new, mask))  # [B, T]


@register_policy_loss("clip_cov")
def clip_cov_policy_loss(
    old_log_prob, log_prob, advantages, response_mask, *, loss_agg_mode,
    clip_ratio=0.2, clip_ratio_low=None, clip_ratio_high=None,
    clip_cov_ratio=0.0002, clip_cov_lb=1.0, clip_cov_ub=5.0,
    rollout_is_weights=None, global_num_tokens=None, global_num_seqs=None, loss_scale_factor=None,
):  # fmt: skip
    """Clip-Cov: PPO clip loss, with the gradient of a few high-covariance tokens removed.

    Candidates: valid tokens not already clipped by PPO whose centred product ``(A - Abar)(logp - logp_bar)``
    lies in ``(clip_cov_lb, clip_cov_ub)``. ``max(1, int(clip_cov_ratio * n_valid))`` of them, drawn at
    random (torch's global RNG), get loss 0. Metric ``actor/pg_clipfrac``: fraction of tokens so removed.
    """
    low, high = clip_range(clip_ratio, clip_ratio_low, clip_ratio_high)
    if not clip_cov_ratio > 0:
        raise ConfigError(
            f"actor_rollout_ref.actor.policy_loss.clip_cov_ratio must be > 0 (got {clip_cov_ratio}): it is "
            "the fraction of tokens whose gradient is removed, e.g. 0.0002"
        )
    old, new, adv, mask, is_w = prepare_inputs(
        old_log_prob, log_prob, advantages, response_mask, rollout_is_weights
    )
    log_ratio = token_log_ratio(old, new)  # [B, T]
    ratio = torch.exp(log_ratio)  # [B, T]
    unclipped = -adv * ratio  # [B, T]
    clipped = -adv * torch.clamp(ratio, 1.0 - low, 1.0 + high)  # [B, T]
    covariance = _centered_product(adv, new, mask)  # [B, T]
    candidates = mask & ~(clipped > unclipped) & (covariance > clip_cov_lb) & (covariance < clip_cov_ub)
    candidate_idx = torch.nonzero(candidates)  # [n_candidates, 2]
    n_drop = max(int(clip_cov_ratio * int(mask.sum())), 1)
    chosen = candidate_idx[torch.randperm(len(candidate_idx), device=candidate_idx.device)[:n_drop]]
    keep = torch.ones_like(new)  # [B, T]
    keep[chosen[:, 0], chosen[:, 1]] = 0.0
    loss_mat = torch.maximum(unclipped, clipped) * keep  # [B, T]
    loss = finish_loss(
        loss_mat, mask, is_w, loss_agg_mode, global_num_tokens=global_num_tokens,
        global_num_seqs=global_num_seqs, loss_scale_factor=loss_scale_factor,
    )  # fmt: skip
    metrics = ratio_metrics(log_ratio, mask)
    metrics["actor/pg_clipfrac"] = fraction(keep == 0, mask)
    return loss, metrics


@register_policy_loss("kl_cov")
def kl_cov_policy_loss(
    old_log_prob, log_prob, advantages, response_mask, *, loss_agg_mode,
    kl_cov_ratio=0.0002, ppo_kl_coef=1.0,
    rollout_is_weights=None, global_num_tokens=None, global_num_seqs=None, loss_scale_factor=None,
):  # fmt: skip
    """KL-Cov: unclipped policy gradient ``-A r``, plus ``ppo_kl_coef * |log r|`` on the top tokens.

    The ``max(1, int(kl_cov_ratio * n_valid))`` valid tokens with the largest centred product
    ``(A - Abar)(logp - logp_bar)`` get the penalty. Metric ``actor/kl_cov_frac``: fraction penalised.
    """
    if not kl_cov_ratio > 0:
        raise ConfigError(
            f"actor_rollout_ref.actor.policy_loss.kl_cov_ratio must be > 0 (got {kl_cov_ratio}): it is the "
            "fraction of tokens that get the KL penalty, e.g. 0.0002"
        )
    old, new, adv, mask, is_w = prepare_inputs(
        old_log_prob, log_prob, advantages, response_mask, rollout_is_weights
    )
    log_ratio = token_log_ratio(old, new)  # [B, T]
    policy_gradient = -adv * torch.exp(log_ratio)  # [B, T]
    penalised = policy_gradient + ppo_kl_coef * log_ratio.abs()  # [B, T]
    selected = torch.zeros_like(mask)  # [B, T] bool
    n_valid = int(mask.sum())
    if n_valid > 0:
        covariance = _centered_product(adv, new, mask)[mask]  # [n_valid]
        top = torch.topk(covariance, max(1, int(n_valid * kl_cov_ratio))).indices
        flat = selected[mask]
        flat[top] = True
        selected[mask] = flat
    loss_mat = torch.where(selected, penalised, policy_gradient)  # [B, T]
    loss = finish_loss(
        loss_mat, mask, is_w, loss_agg_mode, global_num_tokens=global_num_tokens,
        global_num_seqs=global_num_seqs, loss_scale_factor=loss_scale_factor,
    )  # fmt: skip
    metrics = ratio_metrics(log_ratio, mask)
    metrics["actor/kl_cov_frac"] = fraction(selected, mask)
    return loss, metrics
