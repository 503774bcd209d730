"""The policy-loss registry and the steps every loss shares.

A loss is registered once, with everything the rest of the project needs to know about it::

    @register_policy_loss("sapo", default_agg_mode="seq-mean-token-mean")
    def sapo_policy_loss(old_log_prob, log_prob, advantages, response_mask, *, loss_agg_mode,
                         tau_pos=1.0, tau_neg=1.05, rollout_is_weights=None,
                         global_num_tokens=None, global_num_seqs=None, loss_scale_factor=None): ...

- its **numbers** are its keyword-only parameters other than the common ones (:data:`COMMON_KEYWORDS`);
  the trainer fills each from the config key of the same name (``actor_rollout_ref.actor.policy_loss.<n>``,
  else ``actor_rollout_ref.actor.<n>``), and a number with no such key keeps the signature's default;
- its **default aggregation** is the ``loss_agg_mode`` used when the user sets none (the paper's);
- its **validation** is the loss's own argument checks: :func:`check_policy_loss_numbers` calls the loss
  once on a one-token batch, so a rule such as SAPO's ``tau > 0`` is written once, in the loss, and is
  reported by ``sapo config`` / ``sapo train`` before any compute.

This module imports nothing from :mod:`sapo.core.losses`; the losses import it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch

from sapo.core.aggregation import aggregate_loss, check_loss_agg_mode
from sapo.core.masked import as_bool_mask, masked_zero
from sapo.errors import ConfigError, UserError, unknown_name

PolicyLoss = Callable[..., tuple[torch.Tensor, dict[str, float]]]

LOG_RATIO_CLAMP = 20.0
# Keyword arguments every loss takes that are not the loss's own numbers.
COMMON_KEYWORDS = frozenset(
    {"loss_agg_mode", "rollout_is_weights", "global_num_tokens", "global_num_seqs", "loss_scale_factor"}
)


@dataclass(frozen=True)
class PolicyLossEntry:
    """What the registry knows about one loss."""

    name: str
    fn: PolicyLoss
    default_agg_mode: str  # the loss_agg_mode when the user sets none

    @property
    def numbers(self) -> dict[str, object]:
        """The loss's own numbers and their signature defaults, e.g. ``{'tau_pos': 1.0, 'tau_neg': 1.05}``."""
        parameters = inspect.signature(self.fn).parameters.values()
        return {
            p.name: p.default
            for p in parameters
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in COMMON_KEYWORDS
        }


POLICY_LOSSES: dict[str, PolicyLoss] = {}  # name -> loss function
POLICY_LOSS_ENTRIES: dict[str, PolicyLossEntry] = {}  # name -> the whole entry


def register_policy_loss(
    name: str, *, default_agg_mode: str = "token-mean"
) -> Callable[[PolicyLoss], PolicyLoss]:
    """Decorator: register ``fn`` as the policy loss ``name`` (replaces an earlier one of that name).
    ``default_agg_mode`` is its ``loss_agg_mode`` when the user sets none (verl's default: token-mean)."""
    check_loss_agg_mode(default_agg_mode)

    def decorator(fn: PolicyLoss) -> PolicyLoss:
        POLICY_LOSSES[name] = fn
        POLICY_LOSS_ENTRIES[name] = PolicyLossEntry(name, fn, default_agg_mode)
        return fn

    return decorator


def policy_loss_entry(name: str) -> PolicyLossEntry:
    """The entry registered as ``name``; a ConfigError listing the valid names otherwise."""
    if name not in POLICY_LOSS_ENTRIES:
        raise unknown_name(
            "policy loss", name, "actor_rollout_ref.actor.policy_loss.loss_mode", POLICY_LOSS_ENTRIES
        )
    return POLICY_LOSS_ENTRIES[name]


def get_policy_loss(name: str) -> PolicyLoss:
    """The loss function registered as ``name``; a ConfigError listing the valid names otherwise."""
    return policy_loss_entry(name).fn


def policy_loss_numbers(name: str) -> tuple[str, ...]:
    """Names of the keyword numbers the loss ``name`` takes (e.g. ``('tau_pos', 'tau_neg')`` for sapo)."""
    return tuple(policy_loss_entry(name).numbers)


def policy_loss_kwargs(name: str, **numbers: object) -> dict[str, object]:
    """From any set of numbers (``tau_pos=..., clip_ratio=..., ...``) keep those the loss ``name`` takes."""
    wanted = policy_loss_entry(name).numbers
    return {key: value for key, value in numbers.items() if key in wanted}


def default_loss_agg_mode(loss_mode: str, user_value: str | None) -> str:
    """The effective ``loss_agg_mode``: the user's when set (validated), else the loss's registered
    default (sapo, gspo, geo_mean: ``seq-mean-token-mean``, as their papers define them; others:
    ``token-mean``, verl's). The one place this rule lives: the config's resolution uses it too."""
    entry = policy_loss_entry(loss_mode)
    if user_value is not None:
        return check_loss_agg_mode(user_value)
    return entry.default_agg_mode


def check_policy_loss_numbers(name: str, numbers: dict[str, object]) -> list[str]:
    """The loss's own complaints about ``numbers`` (its keyword numbers), found by calling it once on a
    one-token batch: an empty list when it accepts them. Any other exception is reported as the loss's
    failure on that probe, so ``sapo config`` names it instead of printing a traceback."""
    one = torch.zeros(1, 1)
    try:
        get_policy_loss(name)(
            one, one, one, torch.ones(1, 1), loss_agg_mode=policy_loss_entry(name).default_agg_mode,
            **policy_loss_kwargs(name, **numbers),
        )  # fmt: skip
    except UserError as err:
        return [str(err)]
    except Exception as err:  # a user loss that cannot run on one token: say so, by name
        return [f"policy loss {name!r} failed on a one-token validation probe: {type(err).__name__}: {err}"]
    return []


# ---------------------------------------------------------------------------------------------------------
# shared steps


def check_positive(name: str, value: float, why: str) -> None:
    """ConfigError naming ``actor_rollout_ref.actor.<name>`` unless ``value > 0``."""
    if not value > 0:
        raise ConfigError(f"actor_rollout_ref.actor.{name} must be > 0 (got {value}): {why}")


def clip_range(clip_ratio: float, clip_ratio_low: float | None, clip_ratio_high: float | None):
    """(low, high) clip widths; ``None`` falls back to ``clip_ratio`` (verl)."""
    low = clip_ratio if clip_ratio_low is None else clip_ratio_low
    high = clip_ratio if clip_ratio_high is None else clip_ratio_high
    for name, value in (("clip_ratio_low", low), ("clip_ratio_high", high)):
        if not value >= 0:
            raise ConfigError(
                f"actor_rollout_ref.actor.{name} must be >= 0 (got {value}): set it to a clip width such as "
                "0.2"
            )
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
