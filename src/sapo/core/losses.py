"""Policy losses, keyed by verl's ``actor_rollout_ref.actor.policy_loss.loss_mode`` names.

Every loss has one signature::

    fn(old_log_prob, log_prob, advantages, response_mask, *,       # [B, T] each
       loss_agg_mode,                                               # see sapo.core.aggregation
       <its own numbers, verl's config names: tau_pos, clip_ratio_low, ...>,
       rollout_is_weights=None,                                     # [B, T], multiplies the token loss
       global_num_tokens=None, global_num_seqs=None, loss_scale_factor=None)
    -> (loss: scalar tensor, metrics: dict[str, float])

Shared semantics (verl's ``core_algos.py`` unless noted):

1. masked-out positions are replaced by 0 before anything is computed, so padding never reaches the loss or
   its gradient (NaN in padding is harmless); NaN/inf at a valid position is an error;
2. the token log-ratio ``log r = log_prob - old_log_prob`` is clamped to [-20, 20] (gspo instead clamps
   its combined log-ratio at +10 only, as verl does); clip_cov, kl_cov and geo_mean get the same [-20, 20]
   clamp here, which verl omits, so that no valid input can overflow;
3. ``rollout_is_weights`` (detached) multiply the per-token loss before aggregation;
4. the loss honours the ``loss_agg_mode`` it is given, except GMPO (``geo_mean``), whose objective is a
   mean over sequences by definition (verl ignores the mode for it too); the mode used when the user sets
   none is registered with the loss (SAPO, GSPO and GMPO: ``seq-mean-token-mean``; others:
   ``token-mean``, verl's default) and read through :func:`default_loss_agg_mode`;
5. metrics are this call's statistics (see sapo.core.diagnostics for names and how to combine them).

The registry and the shared steps are in :mod:`sapo.core.loss_registry`. A user adds a loss with
``@register_policy_loss("name", default_agg_mode=...)`` and the same signature; the trainer fills its
numbers from the config keys of the same names and validates them by calling it (see that module).
"""

from __future__ import annotations

import torch

from sapo.core import cov_losses  # noqa: F401  (registers clip_cov and kl_cov)
from sapo.core.aggregation import aggregate_loss, check_loss_agg_mode
from sapo.core.diagnostics import fraction, ratio_metrics, sapo_gate_metrics
from sapo.core.loss_registry import (  # noqa: F401  (the registry's names, importable from here as before)
    COMMON_KEYWORDS,
    POLICY_LOSS_ENTRIES,
    POLICY_LOSSES,
    check_policy_loss_numbers,
    check_positive,
    clip_range,
    default_loss_agg_mode,
    finish_loss,
    get_policy_loss,
    policy_loss_entry,
    policy_loss_kwargs,
    policy_loss_numbers,
    prepare_inputs,
    register_policy_loss,
    token_log_ratio,
)
from sapo.core.masked import masked_count, masked_sum
from sapo.errors import ConfigError

# ---------------------------------------------------------------------------------------------------------
# the losses


_TAU_WHY = (
    "the SAPO gate sigmoid(tau (r - 1)) x 4 / tau divides by tau; the paper uses tau_pos=1.0, tau_neg=1.05"
)


@register_policy_loss("sapo", default_agg_mode="seq-mean-token-mean")
def sapo_policy_loss(
    old_log_prob, log_prob, advantages, response_mask, *, loss_agg_mode,
    tau_pos=1.0, tau_neg=1.05,
    rollout_is_weights=None, global_num_tokens=None, global_num_seqs=None, loss_scale_factor=None,
):  # fmt: skip
    """SAPO, Soft Adaptive Policy Optimization (Gao et al., arXiv 2511.20347).

    ``r = exp(clamp(log_prob - old_log_prob, -20, 20))``, ``tau = tau_pos if A > 0 else tau_neg``,
    ``loss_t = -(4 / tau) * sigmoid(tau * (r - 1)) * A``.
    d loss_t / d log_prob = ``-A * 4 s (1 - s) * r`` with ``s = sigmoid(tau (r - 1))``: exactly ``-A`` at
    r = 1 (plain policy gradient), smoothly decaying as r leaves 1, faster for negative advantages when
    ``tau_neg > tau_pos``. Metrics: ratio statistics and ``actor/sapo/*`` gate statistics.
    """
    for name, tau in (("tau_pos", tau_pos), ("tau_neg", tau_neg)):
        check_positive(name, tau, _TAU_WHY)
    old, new, adv, mask, is_w = prepare_inputs(
        old_log_prob, log_prob, advantages, response_mask, rollout_is_weights
    )
    log_ratio = token_log_ratio(old, new)  # [B, T]
    ratio = torch.exp(log_ratio)  # [B, T]
    # [B, T]; A == 0 takes tau_neg (verl); tau in the ratio's dtype (a float32 1.05 would round)
    tau = torch.where(adv > 0, ratio.new_tensor(tau_pos), ratio.new_tensor(tau_neg))
    gate = torch.sigmoid(tau * (ratio - 1.0)) * (4.0 / tau)  # [B, T]
    loss_mat = -gate * adv  # [B, T]
    loss = finish_loss(
        loss_mat, mask, is_w, loss_agg_mode, global_num_tokens=global_num_tokens,
        global_num_seqs=global_num_seqs, loss_scale_factor=loss_scale_factor,
    )  # fmt: skip
    metrics = ratio_metrics(log_ratio, mask)
    metrics.update(sapo_gate_metrics(ratio, adv, mask, tau_pos=tau_pos, tau_neg=tau_neg))
    return loss, metrics


@register_policy_loss("vanilla")
def vanilla_policy_loss(
    old_log_prob, log_prob, advantages, response_mask, *, loss_agg_mode,
    clip_ratio=0.2, clip_ratio_low=None, clip_ratio_high=None, clip_ratio_c=3.0,
    rollout_is_weights=None, global_num_tokens=None, global_num_seqs=None, loss_scale_factor=None,
):  # fmt: skip
    """PPO clipped surrogate (Schulman et al., arXiv 1707.06347) with decoupled clip widths (DAPO,
    arXiv 2503.14476) and dual clip (Ye et al., arXiv 1912.09729).

    ``l = max(-A r, -A clip(r, 1 - clip_ratio_low, 1 + clip_ratio_high))``; for ``A < 0`` additionally
    ``l = min(l, -A * clip_ratio_c)`` (caps the loss of very large ratios; ``clip_ratio_c > 1``).
    Metrics: ratio statistics, ``actor/pg_clipfrac`` (tokens where the clip is active) and
    ``actor/pg_clipfrac_lower`` (tokens where the dual clip is active).
    """
    low, high = clip_range(clip_ratio, clip_ratio_low, clip_ratio_high)
    if not clip_ratio_c > 1.0:
        raise ConfigError(
            f"actor_rollout_ref.actor.clip_ratio_c must be > 1 (got {clip_ratio_c}): it is the dual-clip "
            "bound on the loss of negative advantages, a multiple of |A| such as 3.0"
        )
    old, new, adv, mask, is_w = prepare_inputs(
        old_log_prob, log_prob, advantages, response_mask, rollout_is_weights
    )
    log_ratio = token_log_ratio(old, new)  # [B, T]
    ratio = torch.exp(log_ratio)  # [B, T]
    unclipped = -adv * ratio  # [B, T]
    clipped = -adv * torch.clamp(ratio, 1.0 - low, 1.0 + high)  # [B, T]
    ppo_loss = torch.maximum(unclipped, clipped)  # [B, T]
    dual_cap = -adv * clip_ratio_c  # [B, T]
    loss_mat = torch.where(adv < 0, torch.minimum(ppo_loss, dual_cap), ppo_loss)  # [B, T]
    loss = finish_loss(
        loss_mat, mask, is_w, loss_agg_mode, global_num_tokens=global_num_tokens,
        global_num_seqs=global_num_seqs, loss_scale_factor=loss_scale_factor,
    )  # fmt: skip
    metrics = ratio_metrics(log_ratio, mask)
    metrics["actor/pg_clipfrac"] = fraction(clipped > unclipped, mask)
    metrics["actor/pg_clipfrac_lower"] = fraction((ppo_loss > dual_cap) & (adv < 0), mask)
    return loss, metrics


@register_policy_loss("gspo", default_agg_mode="seq-mean-token-mean")
def gspo_policy_loss(
    old_log_prob, log_prob, advantages, response_mask, *, loss_agg_mode,
    clip_ratio=0.2, clip_ratio_low=None, clip_ratio_high=None,
    rollout_is_weights=None, global_num_tokens=None, global_num_seqs=None, loss_scale_factor=None,
):  # fmt: skip
    """GSPO, Group Sequence Policy Optimization (Zheng et al., arXiv 2507.18071), token form GSPO-token.

    Sequence ratio ``s_i = exp(mean_t log r_it)``; per token ``s_it = sg[s_i] * pi(y_it) / sg[pi(y_it)]``
    (value ``s_i``, gradient that of ``log pi(y_it)``, scaled by ``s_i``), log clamped at +10;
    ``l = max(-A s_it, -A clip(s_it, 1 - clip_ratio_low, 1 + clip_ratio_high))``. The paper's widths are
    tiny (3e-4 / 4e-4). verl forces seq-mean-token-mean; here that is the default and other modes are
    honoured.
    """
    low, high = clip_range(clip_ratio, clip_ratio_low, clip_ratio_high)
    old, new, adv, mask, is_w = prepare_inputs(
        old_log_prob, log_prob, advantages, response_mask, rollout_is_weights
    )
    seq_lengths = masked_count(mask, dim=-1).clamp(min=1).to(new.dtype)  # [B]
    seq_log_ratio = masked_sum(new - old, mask, dim=-1) / seq_lengths  # [B]
    # new - sg(new) is 0 in value but carries the token's gradient; add the detached sequence log-ratio last.
    log_s = new - new.detach() + seq_log_ratio.detach().unsqueeze(-1)  # [B, T]
    s = torch.exp(torch.clamp(log_s, max=10.0))  # [B, T]
    unclipped = -adv * s  # [B, T]
    clipped = -adv * torch.clamp(s, 1.0 - low, 1.0 + high)  # [B, T]
    loss_mat = torch.maximum(unclipped, clipped)  # [B, T]
    loss = finish_loss(
        loss_mat, mask, is_w, loss_agg_mode, global_num_tokens=global_num_tokens,
        global_num_seqs=global_num_seqs, loss_scale_factor=loss_scale_factor,
    )  # fmt: skip
    metrics = ratio_metrics(token_log_ratio(old, new), mask)
    metrics["actor/pg_clipfrac"] = fraction(clipped > unclipped, mask)
    return loss, metrics


@register_policy_loss("cispo")
def cispo_policy_loss(
    old_log_prob, log_prob, advantages, response_mask, *, loss_agg_mode,
    clip_ratio=0.2, clip_ratio_low=None, clip_ratio_high=None,
    rollout_is_weights=None, global_num_tokens=None, global_num_seqs=None, loss_scale_factor=None,
):  # fmt: skip
    """CISPO, clipped importance-sampling-weight policy optimization (MiniMax-M1, arXiv 2506.13585).

    ``l = -sg[clip(r, 1 - clip_ratio_low, 1 + clip_ratio_high)] * A * log_prob``: the IS weight is clipped
    and detached, so every token keeps a gradient ``-A * clip(r)`` (PPO would zero clipped tokens).
    Metrics: ratio statistics, ``actor/pg_clipfrac`` = fraction of tokens whose weight was clipped.
    """
    low, high = clip_range(clip_ratio, clip_ratio_low, clip_ratio_high)
    old, new, adv, mask, is_w = prepare_inputs(
        old_log_prob, log_prob, advantages, response_mask, rollout_is_weights
    )
    log_ratio = token_log_ratio(old, new)  # [B, T]
    ratio = torch.exp(log_ratio).detach()  # [B, T]
    weight = torch.clamp(ratio, 1.0 - low, 1.0 + high)  # [B, T]
    loss_mat = -weight * adv * new  # [B, T]
    loss = finish_loss(
        loss_mat, mask, is_w, loss_agg_mode, global_num_tokens=global_num_tokens,
        global_num_seqs=global_num_seqs, loss_scale_factor=loss_scale_factor,
    )  # fmt: skip
    metrics = ratio_metrics(log_ratio, mask)
    metrics["actor/pg_clipfrac"] = fraction(weight != ratio, mask)
    return loss, metrics


@register_policy_loss("gpg")
def gpg_policy_loss(
    old_log_prob, log_prob, advantages, response_mask, *, loss_agg_mode,
    rollout_is_weights=None, global_num_tokens=None, global_num_seqs=None, loss_scale_factor=None,
):  # fmt: skip
    """GPG, Group Policy Gradient (Chu et al., arXiv 2504.02546): plain REINFORCE, ``l = -A * log_prob``.

    No ratio, no clip; ``old_log_prob`` only feeds the ratio metrics.
    """
    old, new, adv, mask, is_w = prepare_inputs(
        old_log_prob, log_prob, advantages, response_mask, rollout_is_weights
    )
    loss_mat = -adv * new  # [B, T]
    loss = finish_loss(
        loss_mat, mask, is_w, loss_agg_mode, global_num_tokens=global_num_tokens,
        global_num_seqs=global_num_seqs, loss_scale_factor=loss_scale_factor,
    )  # fmt: skip
    return loss, ratio_metrics(token_log_ratio(old, new), mask)


@register_policy_loss("geo_mean", default_agg_mode="seq-mean-token-mean")
def geo_mean_policy_loss(
    old_log_prob, log_prob, advantages, response_mask, *, loss_agg_mode,
    clip_ratio=0.4, clip_ratio_low=None, clip_ratio_high=None,
    rollout_is_weights=None, global_num_tokens=None, global_num_seqs=None, loss_scale_factor=None,
):  # fmt: skip
    """GMPO, Geometric-Mean Policy Optimization (Zhao et al., arXiv 2507.20673), as verl computes it.

    Per sequence ``i`` with valid tokens ``t = 1..L_i``::

        c_it = sign(A) * min(sign(A) log r_it, sign(A) clip(log r_it, -clip_ratio_low, clip_ratio_high))
        l_i  = -Abar_i * exp(mean_t c_it) * w_i,    w_i = exp(mean_t log w_it)

    ``Abar_i`` is the token-mean advantage, the clip acts in log space (the paper's range is
    ``(e^-0.4, e^0.4)``, hence the default 0.4), and the rollout IS weights enter as their per-sequence
    geometric mean ``w_i`` (verl's ``compute_policy_loss_geo_mean``). The objective is a mean over
    sequences, ``mean_i l_i`` (normalised by the mini-batch's valid sequences), whatever ``loss_agg_mode``
    says: as in verl, the mode does not apply to this loss (it still applies to the entropy and KL
    terms of the actor's loss). Metrics: ``actor/pg_clipfrac`` (clipped tokens with A > 0), ``_lower``
    (A < 0).
    """
    check_loss_agg_mode(loss_agg_mode)  # validated like every loss's, though GMPO's objective fixes it
    low, high = clip_range(clip_ratio, clip_ratio_low, clip_ratio_high)
    old, new, adv, mask, is_w = prepare_inputs(
        old_log_prob, log_prob, advantages, response_mask, rollout_is_weights
    )
    log_ratio = token_log_ratio(old, new)  # [B, T]
    sign = torch.sign(adv)  # [B, T]
    log_ratio_clipped = torch.clamp(log_ratio, -low, high)  # [B, T]
    pessimistic = sign * torch.minimum(sign * log_ratio, sign * log_ratio_clipped)  # [B, T]
    seq_lengths = masked_count(mask, dim=-1).clamp(min=1).to(new.dtype)  # [B]
    seq_ratio = torch.exp(masked_sum(pessimistic, mask, dim=-1) / seq_lengths)  # [B]
    seq_adv = masked_sum(adv, mask, dim=-1) / seq_lengths  # [B]
    seq_loss = -seq_adv * seq_ratio  # [B]
    if is_w is not None:  # the geometric mean of the sequence's weights (floored at 1e-10 for log 0;
        # verl adds 1e-10 instead, which shifts every weight; the floor leaves weights >= 1e-10 exact)
        log_w = torch.log(is_w.clamp(min=1e-10))  # [B, T]
        seq_loss = seq_loss * torch.exp(masked_sum(log_w, mask, dim=-1) / seq_lengths)
    loss = aggregate_loss(
        seq_loss.unsqueeze(-1).expand_as(new), mask, "seq-mean-token-mean",
        global_num_tokens=global_num_tokens, global_num_seqs=global_num_seqs,
        loss_scale_factor=loss_scale_factor,
    )  # fmt: skip
    metrics = ratio_metrics(log_ratio, mask)
    was_clipped = log_ratio != log_ratio_clipped  # [B, T]
    metrics["actor/pg_clipfrac"] = fraction(was_clipped & (adv > 0), mask)
    metrics["actor/pg_clipfrac_lower"] = fraction(was_clipped & (adv < 0), mask)
    return loss, metrics
