"""KL estimators between the policy and a reference policy, KL-coefficient controllers, and entropy.

Per-token estimators of KL(pi || pi_ref) from the log-probs of tokens sampled from pi, with
``d = log_prob - ref_log_prob`` (Schulman, "Approximating KL divergence", http://joschu.net/blog/kl-approx.html;
names as verl's ``actor.kl_loss_type`` / ``algorithm.kl_penalty``):

- ``kl`` / ``k1``:          ``d``                                   (unbiased, high variance, can be negative)
- ``abs``:                  ``|d|``
- ``mse`` / ``k2``:         ``d^2 / 2``                             (biased, low variance)
- ``low_var_kl`` / ``k3``:  ``exp(-d) - 1 + d``, with ``-d`` clamped to [-20, 20] and the result to [-10, 10]
                            (unbiased before the clamp, non-negative, low variance)
- ``full``:                 ``sum_v p_v (log p_v - log p_ref_v)``: exact KL over the vocabulary; the inputs
                            must then be full log-prob vectors ``[B, T, V]`` (log_softmax of the logits).

Used for the KL loss (``actor_rollout_ref.actor.use_kl_loss``, ``kl_loss_coef``, ``kl_loss_type``; aggregate
the [B, T] result with ``aggregate_loss``) and for KL in the reward (``algorithm.use_kl_in_reward``,
``algorithm.kl_penalty``, ``algorithm.kl_ctrl.*``: ``rewards = scores - coef * kl``).
"""

from __future__ import annotations

import torch

from sapo.errors import ConfigError, UserError

KL_ESTIMATORS: tuple[str, ...] = ("kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3", "full")


def kl_penalty(log_prob: torch.Tensor, ref_log_prob: torch.Tensor, kl_penalty: str) -> torch.Tensor:
    """Per-token KL estimate ``[B, T]`` (formulas in the module docstring)."""
    if kl_penalty not in KL_ESTIMATORS:
        raise ConfigError(
            f"unknown KL estimator {kl_penalty!r}: set actor_rollout_ref.actor.kl_loss_type (or "
            f"algorithm.kl_penalty) to one of {', '.join(KL_ESTIMATORS)}"
        )
    if log_prob.shape != ref_log_prob.shape:
        raise UserError(
            f"log_prob {tuple(log_prob.shape)} and ref_log_prob {tuple(ref_log_prob.shape)} differ in shape"
        )
    if kl_penalty == "full":
        if log_prob.dim() != 3:
            raise UserError("kl_penalty='full' needs log-prob vectors over the vocabulary, shape [B, T, V]")
        p = log_prob.exp()  # [B, T, V]
        terms = torch.where(
            p > 0, p * (log_prob - ref_log_prob), torch.zeros((), dtype=p.dtype)
        )  # 0 log 0 = 0
        return terms.sum(dim=-1)  # [B, T]
    d = log_prob - ref_log_prob  # [B, T]
    if kl_penalty in ("kl", "k1"):
        return d
    if kl_penalty == "abs":
        return d.abs()
    if kl_penalty in ("mse", "k2"):
        return 0.5 * d.square()
    log_ref_ratio = torch.clamp(-d, -20.0, 20.0)  # log(p_ref / p)
    k3 = torch.exp(log_ref_ratio) - log_ref_ratio - 1.0
    return torch.clamp(k3, -10.0, 10.0)


class FixedKLController:
    """A constant KL coefficient (``algorithm.kl_ctrl.type=fixed``, ``kl_coef``)."""

    def __init__(self, kl_coef: float):
        if kl_coef < 0:
            raise ConfigError(f"kl_coef must be >= 0 (got {kl_coef}): set algorithm.kl_ctrl.kl_coef")
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """No-op: the coefficient is fixed."""


class AdaptiveKLController:
    """Adaptive KL coefficient (Ziegler et al., arXiv 1909.08593, section 2.2).

    ``e = clip(current_kl / target_kl - 1, -0.2, 0.2)``; ``value <- value * (1 + e * n_steps / horizon)``.
    Keys: ``algorithm.kl_ctrl.type=adaptive``, ``.kl_coef`` (initial), ``.target_kl``, ``.horizon``.
    """

    def __init__(self, init_kl_coef: float, target_kl: float, horizon: float):
        if not horizon > 0:
            raise ConfigError(
                f"horizon must be > 0 (got {horizon}): set algorithm.kl_ctrl.horizon, e.g. 10000"
            )
        if not target_kl > 0:
            raise ConfigError(f"target_kl must be > 0 (got {target_kl}): set algorithm.kl_ctrl.target_kl")
        self.value = float(init_kl_coef)
        self.target = float(target_kl)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        proportional_error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of ``softmax(logits)`` over the last dim: ``logsumexp(z) - sum_v softmax(z)_v z_v``.

    Logits of -inf (masked vocabulary entries) contribute 0, not NaN.
    """
    probs = torch.softmax(logits, dim=-1)  # [..., V]
    weighted = torch.where(probs > 0, probs * logits, torch.zeros((), dtype=probs.dtype))  # -inf logits: 0
    return torch.logsumexp(logits, dim=-1) - weighted.sum(dim=-1)  # [...]
