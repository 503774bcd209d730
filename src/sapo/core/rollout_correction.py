"""Rollout correction: importance weights and rejection for the mismatch between the rollout engine's policy
and the trainer's, with verl's ``algorithm.rollout_correction.*`` semantics and metric names.

The rollout engine samples a response from ``pi_rollout``; the trainer recomputes the same tokens' log-probs
under ``pi_old`` (same weights, other kernels / dtype / batching). They differ (Yao et al., "Your Efficient
RL Framework Secretly Brings You Off-Policy RL Training", 2025, TIS; Liu et al., "When Speed Kills
Stability: Demystifying RL Collapse from the Training-Inference Mismatch", 2025, MIS). With the token
log-ratio ``delta_t = old_log_prob_t - rollout_log_prob_t`` = ``log pi_old(y_t) / pi_rollout(y_t)``:

- **importance weights** (``rollout_is``), truncated at ``C = rollout_is_threshold`` and detached:

  * ``token``:    ``w_t = min(exp(delta_t), C)``                         (TIS, biased, low variance)
  * ``sequence``: ``w_t = min(exp(sum_{s in seq} delta_s), C)`` on every token of the sequence (seq-TIS)

  each ``exp`` argument clamped to [-20, 20]; with ``rollout_is_batch_normalize`` the weights are divided
  by their mean over the batch's valid tokens (token) or valid sequences (sequence), so they average 1.
  The policy loss becomes ``sum_t w_t * loss_t`` before aggregation (for SAPO ``loss_t = -f(r_t) A_t``,
  ``f`` the soft gate, ``r_t = pi_theta / pi_old``): see docs/rollout_correction.md;

- **rejection** (``rollout_rs``, comma-separated options, each must pass; MIS): per token
  ``k1 = -delta``, ``k2 = delta^2 / 2``, ``k3 = exp(delta) - 1 - delta`` (clamped delta), and

  * ``token_kX``: the token is rejected when its statistic is out of bounds;
  * ``seq_sum_kX`` / ``seq_mean_kX`` / ``seq_max_kX``: the sum / mean / max over the sequence's valid
    tokens; out of bounds rejects the whole sequence.

  ``rollout_rs_threshold`` (verl's format): one entry, or one per option, comma-separated. k2 / k3 take an
  upper bound ``u > 0`` (keep ``stat <= u``). k1 takes ratio bounds ``"lo_hi"`` (keep
  ``log lo <= stat <= log hi``); a single number ``hi`` means ``lo = 1 / hi``.

Everything is computed once on the whole batch, before the update, so it does not depend on the micro-batch
size or the number of processes. Metrics are verl's, under ``rollout_corr/`` (definitions at each function).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sapo.core.masked import as_bool_mask
from sapo.errors import ConfigError, UserError

SAFETY_BOUND = 20.0  # exp arguments are clamped to [-20, 20] (verl's bound)
PREFIX = "rollout_corr/"
IS_LEVELS = ("token", "sequence")
RS_OPTIONS = (
    "token_k1", "token_k2", "token_k3",
    "seq_sum_k1", "seq_sum_k2", "seq_sum_k3",
    "seq_mean_k1", "seq_mean_k2", "seq_mean_k3",
    "seq_max_k2", "seq_max_k3",
)  # fmt: skip
_KEY = "algorithm.rollout_correction"


@dataclass(frozen=True)
class RejectionRule:
    """One ``rollout_rs`` option and its bounds on the statistic (k1: log-ratio bounds; others: upper)."""

    option: str
    upper: float
    lower: float | None = None  # k1 only

    @property
    def level(self) -> str:
        return "token" if self.option.startswith("token_") else "sequence"


@dataclass
class RolloutCorrection:
    """What :func:`rollout_correction` returns for one batch."""

    weights: torch.Tensor | None  # [N, R] detached IS weights (0 on padding), None when rollout_is is null
    keep_mask: torch.Tensor  # [N, R] the response mask with rejected tokens set to 0 (same dtype)
    metrics: dict[str, float]  # rollout_corr/* metrics


# ---------------------------------------------------------------------------------------------------------
# configuration


def check_is_level(rollout_is: str | None) -> None:
    if rollout_is is not None and rollout_is not in IS_LEVELS:
        raise ConfigError(
            f"{_KEY}.rollout_is must be null, token or sequence (got {rollout_is!r}): token weights each "
            "token by exp(old - rollout), sequence by exp of the sum over the sequence"
        )


def check_is_threshold(threshold: float) -> None:
    if not (isinstance(threshold, (int, float)) and threshold > 0 and math.isfinite(threshold)):
        raise ConfigError(
            f"{_KEY}.rollout_is_threshold must be a positive number (got {threshold!r}): it is the "
            "truncation C of the weights min(w, C), e.g. 2.0"
        )


def parse_rejection(rollout_rs: str | None, rollout_rs_threshold: str | float | None) -> list[RejectionRule]:
    """``rollout_rs`` and ``rollout_rs_threshold`` as rules (see module docstring); [] when ``rollout_rs`` is
    null. Duplicate options are dropped. A ConfigError names the key and the expected format."""
    if rollout_rs is None:
        return []
    options = list(dict.fromkeys(o.strip() for o in str(rollout_rs).split(",") if o.strip()))
    bad = [o for o in options if o not in RS_OPTIONS]
    if not options or bad:
        raise ConfigError(
            f"{_KEY}.rollout_rs={rollout_rs!r}: {', '.join(map(repr, bad)) or 'no option'} is not a "
            f"rejection mode; use one or more (comma-separated) of {', '.join(RS_OPTIONS)}"
        )
    if rollout_rs_threshold is None:
        raise ConfigError(
            f"{_KEY}.rollout_rs_threshold must be set when rollout_rs is ({rollout_rs!r}): an upper bound "
            "such as 0.01 for k2/k3 modes, ratio bounds such as 0.5_2.0 for k1 modes"
        )
    if isinstance(rollout_rs_threshold, bool):
        specs = []
    elif isinstance(rollout_rs_threshold, (int, float)):
        specs = [str(rollout_rs_threshold)]
    else:
        specs = [s.strip() for s in str(rollout_rs_threshold).split(",") if s.strip()]
    if len(specs) not in (1, len(options)):
        raise ConfigError(
            f"{_KEY}.rollout_rs_threshold={rollout_rs_threshold!r} gives {len(specs)} thresholds for "
            f"{len(options)} rollout_rs options: give one shared threshold or one per option, comma-separated"
        )
    specs = specs * len(options) if len(specs) == 1 else specs
    return [_rule(option, spec) for option, spec in zip(options, specs, strict=True)]


def _rule(option: str, spec: str) -> RejectionRule:
    where = f"{_KEY}.rollout_rs_threshold entry {spec!r} for {option}"
    if option.endswith("k1"):
        lower_text, upper_text = spec.split("_", 1) if "_" in spec else (None, spec)
        try:
            upper = float(upper_text)
            lower = 1.0 / upper if lower_text is None else float(lower_text)
        except (ValueError, ZeroDivisionError):
            raise ConfigError(f"{where}: expected ratio bounds lo_hi such as 0.5_2.0, or a number") from None
        if not (0 < lower <= upper and math.isfinite(upper)):
            raise ConfigError(f"{where}: the ratio bounds must satisfy 0 < lo <= hi (got {lower}, {upper})")
        return RejectionRule(option, upper=math.log(upper), lower=math.log(lower))
    try:
        upper = float(spec)
    except ValueError:
        raise ConfigError(f"{where}: expected one positive upper bound such as 0.01 (no '_')") from None
    if not (upper > 0 and math.isfinite(upper)):
        raise ConfigError(f"{where}: the upper bound must be a positive number (got {upper})")
    return RejectionRule(option, upper=upper)


# ---------------------------------------------------------------------------------------------------------
# the computations


def _masked_mean(values: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1.0)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def _check(old_log_prob, rollout_log_prob, response_mask):
    if rollout_log_prob is None:
        raise UserError(
            "rollout correction needs the rollout engine's log-probs: set "
            "actor_rollout_ref.rollout.calculate_log_probs=True"
        )
    if old_log_prob.shape != rollout_log_prob.shape or old_log_prob.shape != response_mask.shape:
        raise UserError(
            f"old_log_prob {tuple(old_log_prob.shape)}, rollout_log_prob {tuple(rollout_log_prob.shape)} and "
            f"response_mask {tuple(response_mask.shape)} must have the same [N, R] shape"
        )


def log_ratio(old_log_prob: torch.Tensor, rollout_log_prob: torch.Tensor, response_mask: torch.Tensor):
    """``delta = old - rollout`` in float64 with 0 at padding ([N, R]); NaN / inf at valid positions is an
    error (a -inf log-prob from one side means the other sampled an impossible token)."""
    _check(old_log_prob, rollout_log_prob, response_mask)
    mask = as_bool_mask(response_mask)
    delta = old_log_prob.detach().double() - rollout_log_prob.detach().double()  # [N, R]
    bad = int((~torch.isfinite(delta) & mask).sum())
    if bad:
        raise UserError(
            f"old_log_prob - rollout_log_prob has {bad} non-finite value(s) at valid response positions: one "
            "policy gives a sampled token zero probability (check the engine's sampling and log-probs)"
        )
    return torch.where(mask, delta, torch.zeros((), dtype=delta.dtype, device=delta.device))  # [N, R]


def importance_weights(
    delta: torch.Tensor, response_mask: torch.Tensor, *, level: str, threshold: float, batch_normalize: bool
) -> tuple[torch.Tensor, dict[str, float]]:
    """Truncated IS weights ([N, R] float64, 0 on padding, detached) and their metrics.

    Metrics (verl's ``compute_is_metrics``; ``w`` before truncation, ``C`` the threshold):

    - ``rollout_is_mean``: mean of ``w`` over valid tokens (sequence: each sequence's weight counts once per
      token); ``rollout_is_max`` / ``_min``: over valid tokens (sequence: over valid sequences, from the
      unclamped log-sum, max capped at exp(20));
    - ``rollout_is_std``: std over valid tokens of ``clamp(w, 1/C, C)``;
    - ``rollout_is_eff_sample_size``: ``1 / mean((v / mean v)^2)``, ``v = clamp(w, 1/C, C)`` over valid
      tokens: the effective sample size as a fraction of the tokens (1: all weights equal);
    - ``rollout_is_ratio_fraction_high`` / ``_low``: fraction of valid tokens (sequence: sequences) with
      ``w > C`` (truncated) / ``w < 1/C``;
    - ``rollout_is_batch_norm_factor``: the divisor, with ``batch_normalize``.
    """
    check_is_level(level)
    check_is_threshold(threshold)
    mask = as_bool_mask(response_mask)  # [N, R]
    mask_f = mask.to(delta.dtype)
    seq_valid = mask.any(-1)  # [N]
    if level == "token":
        w = torch.exp(delta.clamp(-SAFETY_BOUND, SAFETY_BOUND)) * mask_f  # [N, R]
        valid_w = w[mask]  # [n]
        w_max, w_min = valid_w.max(), valid_w.min()
        high, low = (valid_w > threshold), (valid_w < 1.0 / threshold)
    else:
        seq_log = delta.sum(-1)  # [N]
        w = torch.exp(seq_log.clamp(-SAFETY_BOUND, SAFETY_BOUND)).unsqueeze(-1) * mask_f  # [N, R]
        valid_log = seq_log[seq_valid]  # [n_seq]
        w_max, w_min = valid_log.max().clamp(max=SAFETY_BOUND).exp(), valid_log.min().exp()
        high, low = valid_log > math.log(threshold), valid_log < -math.log(threshold)
    v = w.clamp(1.0 / threshold, threshold)  # [N, R]
    v_mean = _masked_mean(v, mask)
    metrics = {
        "rollout_is_mean": float(_masked_mean(w, mask)),
        "rollout_is_max": float(w_max),
        "rollout_is_min": float(w_min),
        "rollout_is_std": float((_masked_mean(v.square(), mask) - v_mean.square()).clamp(min=0).sqrt()),
        "rollout_is_eff_sample_size": float(1.0 / _masked_mean((v / v_mean).square(), mask)),
        "rollout_is_ratio_fraction_high": float(high.double().mean()),
        "rollout_is_ratio_fraction_low": float(low.double().mean()),
    }
    weights = w.clamp(max=threshold)  # [N, R] truncation (TIS)
    if batch_normalize:
        if level == "token":
            factor = _masked_mean(weights, mask)
        else:
            factor = weights.amax(-1)[seq_valid].mean()  # one weight per valid sequence
        factor = float(factor)
        if factor > 1e-8:
            weights = weights / factor
        metrics["rollout_is_batch_norm_factor"] = factor if factor > 1e-8 else 1.0
    return weights * mask_f, metrics


def _token_statistics(delta: torch.Tensor) -> dict[str, torch.Tensor]:
    d = delta.clamp(-SAFETY_BOUND, SAFETY_BOUND)  # [N, R]
    return {"k1": -d, "k2": 0.5 * d.square(), "k3": torch.exp(d) - 1.0 - d}


def rejection_mask(
    delta: torch.Tensor, response_mask: torch.Tensor, rules: list[RejectionRule]
) -> tuple[torch.Tensor, dict[str, float]]:
    """Keep-mask ``[N, R]`` (bool, False on padding and rejected tokens) and metrics:
    ``rollout_rs_<option>_masked_fraction`` (valid tokens it rejects),
    ``rollout_rs_<option>_seq_masked_fraction`` (valid sequences with a token it rejects), and the
    same for all options together as ``rollout_rs_masked_fraction`` / ``rollout_rs_seq_masked_fraction``
    (verl's names)."""
    mask = as_bool_mask(response_mask)  # [N, R]
    seq_valid = mask.any(-1)  # [N]
    n_tok, n_seq = max(int(mask.sum()), 1), max(int(seq_valid.sum()), 1)
    stats = _token_statistics(delta)
    keep = mask.clone()  # [N, R]
    metrics: dict[str, float] = {}
    for rule in rules:
        stat = stats[rule.option[-2:]]  # [N, R]
        if rule.level == "sequence":
            how = rule.option.split("_")[1]  # sum | mean | max
            if how == "sum":
                stat = (stat * mask).sum(-1)  # [N]
            elif how == "mean":
                stat = _masked_mean(stat, mask, dim=-1)  # [N]
            else:
                stat = stat.masked_fill(~mask, -math.inf).amax(-1)  # [N]
            stat = stat.unsqueeze(-1).expand_as(delta)  # [N, R]
        passes = stat <= rule.upper
        if rule.lower is not None:
            passes = passes & (stat >= rule.lower)
        rejected = ~passes & mask  # [N, R]
        metrics[f"rollout_rs_{rule.option}_masked_fraction"] = int(rejected.sum()) / n_tok
        metrics[f"rollout_rs_{rule.option}_seq_masked_fraction"] = int(rejected.any(-1).sum()) / n_seq
        keep &= passes
    rejected = mask & ~keep
    metrics["rollout_rs_masked_fraction"] = int(rejected.sum()) / n_tok
    metrics["rollout_rs_seq_masked_fraction"] = int(rejected.any(-1).sum()) / n_seq
    return keep, metrics


def offpolicy_metrics(
    old_log_prob: torch.Tensor, rollout_log_prob: torch.Tensor, response_mask: torch.Tensor
) -> dict[str, float]:
    """verl's off-policy diagnostics (``compute_offpolicy_metrics``), under ``rollout_corr/``; with
    ``lbar_i(x)`` the mean log-prob of sequence i's valid tokens under x, means over valid sequences:

    - ``training_ppl`` = mean_i exp(-lbar_i(old)), ``training_log_ppl`` = mean_i -lbar_i(old);
    - ``rollout_ppl`` = mean_i exp(-lbar_i(rollout)), ``rollout_log_ppl`` = mean_i -lbar_i(rollout);
    - ``log_ppl_diff`` = mean_i (lbar_i(rollout) - lbar_i(old)) (log of the per-sequence ppl ratio),
      ``log_ppl_abs_diff`` its mean absolute value, ``ppl_ratio`` = mean_i exp(lbar_i(rollout) - lbar_i(old))
      (training ppl / rollout ppl, per sequence);
    - ``chi2_token`` = mean_t exp(2 delta_t) - 1, ``chi2_seq`` = mean_i exp(2 sum_t delta_it) - 1
      (chi-square divergence estimates, exponents clamped at 20).

    (``rollout_corr/kl`` and ``k3_kl`` are :func:`sapo.core.diagnostics.rollout_mismatch_metrics`.)
    Returns {} when no token is valid.
    """
    delta = log_ratio(old_log_prob, rollout_log_prob, response_mask)  # [N, R]
    mask = as_bool_mask(response_mask)
    seq_valid = mask.any(-1)  # [N]
    if not bool(seq_valid.any()):
        return {}
    old, rollout = old_log_prob.detach().double(), rollout_log_prob.detach().double()
    zero = torch.zeros((), dtype=old.dtype, device=old.device)
    lbar_old = _masked_mean(torch.where(mask, old, zero), mask, dim=-1)[seq_valid]  # [n_seq]
    lbar_rollout = _masked_mean(torch.where(mask, rollout, zero), mask, dim=-1)[seq_valid]  # [n_seq]
    diff = lbar_rollout - lbar_old  # [n_seq]
    bound = SAFETY_BOUND
    metrics = {
        "training_ppl": float(torch.exp(-lbar_old).mean()),
        "training_log_ppl": float((-lbar_old).mean()),
        "rollout_ppl": float(torch.exp(-lbar_rollout).mean()),
        "rollout_log_ppl": float((-lbar_rollout).mean()),
        "log_ppl_diff": float(diff.mean()),
        "log_ppl_abs_diff": float(diff.abs().mean()),
        "ppl_ratio": float(torch.exp(diff).mean()),
        "chi2_token": float(torch.exp(2.0 * delta.clamp(-bound, bound))[mask].mean() - 1.0),
        "chi2_seq": float(torch.exp(2.0 * delta.sum(-1)[seq_valid].clamp(-bound, bound)).mean() - 1.0),
    }
    return {PREFIX + key: value for key, value in metrics.items()}


def rollout_correction(
    old_log_prob: torch.Tensor,  # [N, R] trainer's log-probs before the update
    rollout_log_prob: torch.Tensor,  # [N, R] rollout engine's log-probs of the same tokens
    response_mask: torch.Tensor,  # [N, R]
    *,
    rollout_is: str | None,
    rollout_is_threshold: float = 2.0,
    rollout_is_batch_normalize: bool = False,
    rollout_rs: str | None = None,
    rollout_rs_threshold: str | float | None = None,
) -> RolloutCorrection:
    """IS weights (``rollout_is``), the rejection keep-mask (``rollout_rs``) and every ``rollout_corr/*``
    metric of this module for one whole batch. Weights and their batch normalisation use the response mask
    before rejection (as verl); rejected positions are dropped by the loss through ``keep_mask``."""
    check_is_level(rollout_is)
    rules = parse_rejection(rollout_rs, rollout_rs_threshold)
    delta = log_ratio(old_log_prob, rollout_log_prob, response_mask)  # [N, R]
    mask = as_bool_mask(response_mask)
    metrics = offpolicy_metrics(old_log_prob, rollout_log_prob, response_mask)
    weights = None
    if not bool(mask.any()):
        return RolloutCorrection(None, response_mask.clone(), metrics)
    if rollout_is is not None:
        weights, is_metrics = importance_weights(
            delta, mask, level=rollout_is, threshold=rollout_is_threshold,
            batch_normalize=rollout_is_batch_normalize,
        )  # fmt: skip
        weights = weights.to(old_log_prob.dtype)
        metrics.update({PREFIX + k: v for k, v in is_metrics.items()})
    keep = mask
    if rules:
        keep, rs_metrics = rejection_mask(delta, mask, rules)
        metrics.update({PREFIX + k: v for k, v in rs_metrics.items()})
    return RolloutCorrection(weights, keep.to(response_mask.dtype), metrics)


def logprob_gap(
    old_log_prob: torch.Tensor, rollout_log_prob: torch.Tensor, response_mask: torch.Tensor
) -> float:
    """Mean over valid tokens of ``|old_log_prob - rollout_log_prob|`` (``rollout_corr/mean_abs_diff``,
    without its [-20, 20] clamp; a non-finite difference is an error); 0.0 with no valid token."""
    delta = log_ratio(old_log_prob, rollout_log_prob, response_mask)  # [N, R]
    mask = as_bool_mask(response_mask)
    return float(delta.abs()[mask].mean()) if bool(mask.any()) else 0.0
