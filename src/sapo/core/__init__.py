"""The algorithm as pure functions on tensors (imports torch only).

- :mod:`sapo.core.losses`: policy losses by verl ``loss_mode`` name (sapo, vanilla, gspo, cispo, gpg,
  geo_mean, clip_cov, kl_cov);
- :mod:`sapo.core.aggregation`: ``loss_agg_mode`` with mini-batch-global normalisation;
- :mod:`sapo.core.advantages`: advantage estimators by verl ``adv_estimator`` name;
- :mod:`sapo.core.kl`: KL estimators, KL controllers, entropy;
- :mod:`sapo.core.masked`: masked mean / var / whiten;
- :mod:`sapo.core.diagnostics`: ratio and SAPO gate statistics, rollout mismatch, micro-batch reduction.

See docs/algorithms.md for formulas, papers and config keys.
"""

from sapo.core.advantages import (
    ADVANTAGE_ESTIMATORS,
    compute_advantages,
    get_advantage_estimator,
    register_advantage_estimator,
)
from sapo.core.aggregation import LOSS_AGG_MODES, aggregate_loss, num_valid_seqs
from sapo.core.diagnostics import (
    ratio_metrics,
    reduce_metrics,
    rollout_mismatch_metrics,
    sapo_gate_metrics,
    sapo_gate_weight,
)
from sapo.core.kl import (
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    entropy_from_logits,
    kl_penalty,
)
from sapo.core.losses import (
    POLICY_LOSSES,
    default_loss_agg_mode,
    get_policy_loss,
    policy_loss_kwargs,
    policy_loss_numbers,
    register_policy_loss,
)
from sapo.core.masked import masked_mean, masked_sum, masked_var, masked_whiten

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "KL_ESTIMATORS",
    "LOSS_AGG_MODES",
    "POLICY_LOSSES",
    "AdaptiveKLController",
    "FixedKLController",
    "aggregate_loss",
    "compute_advantages",
    "default_loss_agg_mode",
    "entropy_from_logits",
    "get_advantage_estimator",
    "get_policy_loss",
    "kl_penalty",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "num_valid_seqs",
    "policy_loss_kwargs",
    "policy_loss_numbers",
    "ratio_metrics",
    "reduce_metrics",
    "register_advantage_estimator",
    "register_policy_loss",
    "rollout_mismatch_metrics",
    "sapo_gate_metrics",
    "sapo_gate_weight",
]
