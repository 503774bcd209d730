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
4. the loss honours the ``loss_agg_mode`` it is given; :func:`default_loss_agg_mode` picks the mode when the
   user set none (SAPO, GSPO and GMPO: ``seq-mean-token-mean``; others: ``token-mean``, verl's default);
5. metrics are this call's statistics (see sapo.core.diagnostics for names and how to combine them).

The trainer passes all actor numbers through :func:`policy_loss_kwargs`, which keeps those the loss takes.
A user registers a new loss with ``@register_policy_loss("name")`` and the same signature.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch

from sapo.core.aggregation import aggregate_loss, check_loss_agg_mode
from sapo.core.diagnostics import fraction, ratio_metrics, sapo_gate_metrics
from sapo.core.masked import as_bool_mask, masked_count, masked_sum, masked_zero
from sapo.errors import ConfigError, UserError

PolicyLoss = Callable[..., tuple[torch.Tensor, dict[str, float]]]
POLICY_LOSSES: dict[str, PolicyLoss] = {}

LOG_RATIO_CLAMP = 20.0
# Keyword arguments every loss takes that are not the loss's own numbers.
COMMON_KEYWORDS = frozenset(
    {"loss_agg_mode", "rollout_is_weights", "global_num_tokens", "global_num_seqs", "loss_scale_factor"}
)
SEQUENCE_LEVEL_LOSSES = ("sapo", "gspo", "geo_mean")


def register_policy_loss(name: str) -> Callable[[PolicyLoss], PolicyLoss]:
    """Decorator: register ``fn`` as the policy loss ``name`` (replaces an earlier one of that name)."""

    def decorator(fn: PolicyLoss) -> PolicyLoss:
        POLICY_LOSSES[name] = fn
        return fn

    return decorator


def get_policy_loss(name: str) -> PolicyLoss:
    """The loss registered as ``name``; a ConfigError listing the valid names otherwise."""
    if name not in POLICY_LOSSES:
        raise ConfigError(
            f"unknown policy loss {name!r}: set actor_rollout_ref.actor.policy_loss.loss_mode to one of "
            f"{', '.join(sorted(POLICY_LOSSES))}"
        )
    return POLICY_LOSSES[name]


def policy_loss_numbers(name: str) -> tuple[str, ...]:
    """Names of the keyword numbers the loss ``name`` takes (e.g. ``('tau_pos', 'tau_neg')`` for sapo)."""
    parameters = inspect.signature(get_policy_loss(name)).parameters.values()
    return tuple(
        p.name
        for p in parameters
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in COMMON_KEYWORDS
    )


def policy_loss_kwargs(name: str, **numbers: object) -> dict[str, object]:
    """From all actor numbers (``tau_pos=..., clip_ratio=..., ...``) keep those the loss ``name`` takes."""
    wanted = policy_loss_numbers(name)
    return {key: value for key, value in numbers.items() if key in wanted}


def default_loss_agg_mode(loss_mode: str, user_value: str | None) -> str:
    """The effective ``loss_agg_mode``: the user's when set, else the loss's paper default.

    SAPO (arXiv 2511.20347), GSPO (arXiv 2507.18071) and GMPO/geo_mean (arXiv 2507.20673) are defined with a
    per-sequence token mean, so they default to ``seq-mean-token-mean``; every other loss to ``token-mean``.
    """
    get_policy_loss(loss_mode)
    if user_value is not None:
        return check_loss_agg_mode(user_value)
    return "seq-mean-token-mean" if loss_mode in SEQUENCE_LEVEL_LOSSES else "token-mean"


# ---------------------------------------------------------------------------------------------------------
# shared steps


def check_positive(name: str, value: float, example: str) -> None:
    if not value > 0:
        raise ConfigError(
            f"{name} must be > 0 (got {value}): set actor_rollout_ref.actor.{name} to a positive number "
            f"such as {example}"
        )


def clip_range(clip_ratio: float, clip_ratio_low: float | None, clip_ratio_high: float | None):
    """(low, high) clip widths; ``None`` falls back to ``clip_ratio`` (verl)."""
    low = clip_ratio if clip_ratio_low is None else clip_ratio_low
    high = clip_ratio if clip_ratio_high is None else clip_ratio_high
    for name, value in (("clip_ratio_low", low), ("clip_ratio_high", high)):
        if not value >= 0:
            raise ConfigError(f"{name} must be >= 0 (got {value}): set actor_rollout_ref.actor.{name}")
    return float(low), float(high)


def _check_finite(name: str, tensor: torch.Tensor, mask: torch.Tensor) -> None:
    bad = int((~torch.isfinite(tensor.detach()) & mask).sum())
    if bad:
        raise UserError(
            f"{name} has {bad} non-finite value(s) (NaN or inf) at valid response positions: check the "
            "model's log-probs (a -inf log-prob means the token was impossible) and the rewards/advantages"
        )


def prepare_inputs(old_log_prob, log_prob, advantages, response_mask, rollout_is_weights=None):
    """Check shapes and finiteness; return (old, new, adv, mask, is_weights) with padding set to 0."""
    tensors = {"old_log_prob": old_log_prob, "log_prob": log_prob, "advantages": advantages}
    if rollout_is_weights is not None:
        tensors["rollout_is_weights"] = rollout_is_weights
    shape = response_mask.shape
    for name, tensor in tensors.items():
        if tensor.shape != shape or len(shape) != 2:
            raise UserError(
                f"{name} has shape {tuple(tensor.shape)} but response_mask has {tuple(shape)}: every "
                "input of a policy loss must be [batch, response_length] with the same shape"
            )
    mask = as_bool_mask(response_mask)  # [B, T]
    for name, tensor in tensors.items():
        _check_finite(name, tensor, mask)
    cleaned = [masked_zero(t, mask) for t in (old_log_prob, log_prob, advantages)]
    weights = None if rollout_is_weights is None else masked_zero(rollout_is_weights.detach(), mask)
    return (*cleaned, mask, weights)


def finish_loss(loss_mat, mask, rollout_is_weights, loss_agg_mode, **agg_counts) -> torch.Tensor:
    """Apply rollout importance weights and aggregate ``loss_mat [B, T]`` to a scalar."""
    if rollout_is_weights is not None:
        loss_mat = loss_mat * rollout_is_weights  # [B, T]
    return aggregate_loss(loss_mat, mask, loss_agg_mode, **agg_counts)


def token_log_ratio(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """``clamp(log_prob - old_log_prob, -20, 20)`` (verl's overflow guard)."""
    return torch.clamp(new - old, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # [B, T]


# ---------------------------------------------------------------------------------------------------------
# the losses


@register_policy_loss("sapo")
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
    check_positive("tau_pos", tau_pos, "1.0")
    check_positive("tau_neg", tau_neg, "1.05")
    old, new, adv, mask, is_w = prepare_inputs(
        old_log_prob, log_prob, advantages, response_mask, rollout_is_weights
    )
    log_ratio = token_log_ratio(old, new)  # [B, T]
    ratio = torch.exp(log_ratio)  # [B, T]
    tau = torch.where(adv > 0, tau_pos, tau_neg).to(ratio.dtype)  # [B, T]; A == 0 takes tau_neg (verl)
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
            f"clip_ratio_c must be > 1 (got {clip_ratio_c}): set actor_rollout_ref.actor.clip_ratio_c, "
            "e.g. 3.0"
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


@register_policy_loss("gspo")
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


@register_policy_loss("geo_mean")
def geo_mean_policy_loss(
    old_log_prob, log_prob, advantages, response_mask, *, loss_agg_mode,
    clip_ratio=0.4, clip_ratio_low=None, clip_ratio_high=None,
    rollout_is_weights=None, global_num_tokens=None, global_num_seqs=None, loss_scale_factor=None,
):  # fmt: skip
    """GMPO, Geometric-Mean Policy Optimization (Zhao et al., arXiv 2507.20673).

    Per sequence: ``l_i = -Abar_i * exp(mean_t c_it)`` with ``Abar_i`` the token-mean advantage and
    ``c_it = sign(A) * min(sign(A) log r, sign(A) clip(log r, -clip_ratio_low, clip_ratio_high))``: the clip
    acts in log space (the paper's range is (e^-0.4, e^0.4), hence default 0.4). ``l_i`` is placed on each
    valid token of sequence i and then aggregated, so ``seq-mean-token-mean`` gives verl's/the paper's
    ``mean_i l_i``. Metrics: ``actor/pg_clipfrac`` (clipped tokens with A > 0), ``_lower`` (A < 0).
    """
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
    loss_mat = (-seq_adv * seq_ratio).unsqueeze(-1).expand_as(new)  # [B, T]
    loss = finish_loss(
        loss_mat, mask, is_w, loss_agg_mode, global_num_tokens=global_num_tokens,
        global_num_seqs=global_num_seqs, loss_scale_factor=loss_scale_factor,
    )  # fmt: skip
    metrics = ratio_metrics(log_ratio, mask)
    was_clipped = log_ratio != log_ratio_clipped  # [B, T]
    metrics["actor/pg_clipfrac"] = fraction(was_clipped & (adv > 0), mask)
    metrics["actor/pg_clipfrac_lower"] = fraction(was_clipped & (adv < 0), mask)
    return loss, metrics


# clip_cov and kl_cov live in their own module; importing it registers them.
from sapo.core import cov_losses  # noqa: E402, F401
