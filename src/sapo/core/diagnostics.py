"""Diagnostics of the importance ratio and of SAPO's soft gate, as plain-float metric dicts.

Metric names (SAPO.md, verl where it has one):

- ``actor/ratio_mean``, ``actor/ratio_min``, ``actor/ratio_max``, ``actor/ratio_p01``, ``actor/ratio_p99``:
  the token ratio ``r = exp(log_prob - old_log_prob)`` over valid tokens;
- ``actor/ppo_kl``: mean of ``-log r`` (the k1 estimate of KL(old || new), verl's);
- ``actor/sapo/gate_weight_mean`` (and ``_pos`` / ``_neg`` over tokens with ``A > 0`` / ``A < 0``): mean of
  the SAPO gradient weight ``w = 4 s (1 - s)``, ``s = sigmoid(tau (r - 1))`` (1 on-policy, -> 0 far off);
- ``actor/sapo/soft_clip_frac``: fraction of valid tokens with ``w < 0.5`` (the soft analogue of clipfrac);
- ``rollout_corr/kl``, ``rollout_corr/k3_kl``, ``rollout_corr/mean_abs_diff``, ``rollout_corr/max_abs_diff``:
  mismatch between the rollout engine's and the trainer's log-probs of the same tokens.

Combining micro-batches: every function returns *this call's* statistics (means over its own valid tokens).
A subset mean with no tokens (e.g. ``_pos`` when no advantage is positive) is left out of the dict, not
reported as 0. The trainer collects one dict per micro-batch and calls :func:`reduce_metrics`, which takes
the min of ``*_min`` values, the max of ``*_max`` values and the mean of everything else over the
micro-batches that reported the key, weighted by their valid tokens. That is exact for min / max and for
means over all valid tokens (``ratio_mean``, ``ppo_kl``, ``gate_weight_mean``, ``soft_clip_frac``, clip
fractions, entropy), which therefore do not depend on the micro-batch size or the number of processes
(verl averages micro-batches unweighted, which does). Means over a subset (``_pos`` / ``_neg``) are
weighted by all valid tokens, not the subset's, and percentiles are weighted averages of per-micro-batch
percentiles: both approximations.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from sapo.core.masked import as_bool_mask

# Keys reduced by min / max across micro-batches; every other key is averaged.
MIN_REDUCED = ("actor/ratio_min",)
MAX_REDUCED = ("actor/ratio_max", "rollout_corr/max_abs_diff")


def sapo_gate_weight(ratio: torch.Tensor, advantages: torch.Tensor, tau_pos: float, tau_neg: float):
    """SAPO's gradient weight ``4 s (1 - s)`` (= ``sech^2(tau (r - 1) / 2)``), ``tau`` picked by sign of A."""
    tau = torch.where(advantages > 0, ratio.new_tensor(tau_pos), ratio.new_tensor(tau_neg))  # [B, T]
    s = torch.sigmoid(tau * (ratio - 1.0))  # [B, T]
    return 4.0 * s * (1.0 - s)  # [B, T]


def _valid_values(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The masked-in entries as a flat float64 tensor (one boolean gather; used where order matters)."""
    return values.detach()[as_bool_mask(mask)].to(torch.float64)  # [n_valid]


def _mean_over(values: torch.Tensor, selected: torch.Tensor) -> float | None:
    """Mean of ``values`` where ``selected`` (accumulated in float64), None when nothing is selected.

    A where + sum instead of a boolean gather: the gather (nonzero + index) costs several times more.
    """
    count = int(selected.sum())
    if count == 0:
        return None
    kept = torch.where(selected, values.detach(), torch.zeros((), dtype=values.dtype, device=values.device))
    return float(kept.sum(dtype=torch.float64)) / count


def quantile(values: torch.Tensor, q: float) -> float:
    """``torch.quantile(values, q)`` (linear interpolation) of a flat tensor, without a full sort.

    The two order statistics around position ``q (n - 1)`` are read from a ``topk`` of the smaller tail,
    which is cheap for the 1st / 99th percentiles.
    """
    n = values.numel()
    position = q * (n - 1)
    lower = int(position)
    upper = min(lower + 1, n - 1)
    if q <= 0.5:
        smallest = torch.topk(values, upper + 1, largest=False).values  # ascending
        low_value, high_value = float(smallest[lower]), float(smallest[upper])
    else:
        largest = torch.topk(values, n - lower, largest=True).values  # descending: j-th is rank n-1-j
        low_value, high_value = float(largest[n - 1 - lower]), float(largest[n - 1 - upper])
    return low_value + (position - lower) * (high_value - low_value)


def ratio_metrics(log_ratio: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Statistics of ``r = exp(log_ratio)`` over valid tokens, plus ``actor/ppo_kl`` = mean(-log_ratio).

    Returns ``{}`` when no token is valid.
    """
    log_r = _valid_values(log_ratio, mask)  # [n]
    if log_r.numel() == 0:
        return {}
    r = log_r.exp()
    return {
        "actor/ratio_mean": float(r.mean()),
        "actor/ratio_min": float(r.min()),
        "actor/ratio_max": float(r.max()),
        "actor/ratio_p01": quantile(r, 0.01),
        "actor/ratio_p99": quantile(r, 0.99),
        "actor/ppo_kl": float(-log_r.mean()),
    }


def sapo_gate_metrics(
    ratio: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *, tau_pos: float, tau_neg: float
) -> dict[str, float]:
    """``actor/sapo/*`` gate statistics over valid tokens (see module docstring)."""
    mask = as_bool_mask(mask)
    advantages = advantages.detach()
    weight = sapo_gate_weight(ratio.detach(), advantages, tau_pos, tau_neg)  # [B, T]
    mean_weight = _mean_over(weight, mask)
    if mean_weight is None:
        return {}
    metrics = {
        "actor/sapo/gate_weight_mean": mean_weight,
        "actor/sapo/soft_clip_frac": fraction(weight < 0.5, mask),
    }
    for suffix, selected in (("pos", advantages > 0), ("neg", advantages < 0)):
        mean_selected = _mean_over(weight, selected & mask)
        if mean_selected is not None:
            metrics[f"actor/sapo/gate_weight_mean_{suffix}"] = mean_selected
    return metrics


def fraction(flags: torch.Tensor, mask: torch.Tensor) -> float:
    """Fraction of valid tokens where ``flags`` is true (0.0 for no valid tokens)."""
    mask = as_bool_mask(mask)
    count = int(mask.sum())
    return int((flags & mask).sum()) / count if count else 0.0


def rollout_mismatch_metrics(
    rollout_log_prob: torch.Tensor, log_prob: torch.Tensor, mask: torch.Tensor
) -> dict[str, float]:
    """How far the rollout engine's log-probs are from the trainer's, for the same sampled tokens.

    With ``d = rollout_log_prob - log_prob`` over valid tokens (tokens were sampled from the rollout policy):

    - ``rollout_corr/kl``       = mean(d): the k1 estimate of KL(pi_rollout || pi_trainer);
    - ``rollout_corr/k3_kl``    = mean(exp(-d) - 1 + d): the non-negative, low-variance k3 estimate of the
      same KL (Schulman 2020, http://joschu.net/blog/kl-approx.html);
    - ``rollout_corr/mean_abs_diff`` and ``rollout_corr/max_abs_diff`` of ``|d|``.
    """
    d = _valid_values(rollout_log_prob, mask) - _valid_values(log_prob, mask)  # [n]
    if d.numel() == 0:
        return {}
    d = d.clamp(-20.0, 20.0)  # a -inf rollout log-prob must not turn the means into inf/nan
    return {
        "rollout_corr/kl": float(d.mean()),
        "rollout_corr/k3_kl": float((torch.exp(-d) - 1.0 + d).mean()),
        "rollout_corr/mean_abs_diff": float(d.abs().mean()),
        "rollout_corr/max_abs_diff": float(d.abs().max()),
    }


def reduce_metrics(
    per_micro_batch: Iterable[dict[str, float]], weights: Iterable[float] | None = None
) -> dict[str, float]:
    """Combine the metric dicts of the micro-batches of a mini-batch (min / max / mean, see module doc).

    ``weights`` (one per dict, e.g. its valid tokens) make the means weighted ones: with token counts, a
    mean over all valid tokens comes out the same however the rows were split into micro-batches and
    ranks. Without weights every dict counts once."""
    dicts = list(per_micro_batch)
    weights = [1.0] * len(dicts) if weights is None else [float(w) for w in weights]
    collected: dict[str, list[tuple[float, float]]] = {}
    for metrics, weight in zip(dicts, weights, strict=True):
        for key, value in metrics.items():
            collected.setdefault(key, []).append((float(value), weight))
    reduced = {}
    for key, pairs in collected.items():
        values = [value for value, _ in pairs]
        if key in MIN_REDUCED:
            reduced[key] = min(values)
        elif key in MAX_REDUCED:
            reduced[key] = max(values)
        else:
            total = sum(weight for _, weight in pairs)
            if total > 0:
                reduced[key] = sum(value * weight for value, weight in pairs) / total
            else:
                reduced[key] = sum(values) / len(values)
    return reduced
