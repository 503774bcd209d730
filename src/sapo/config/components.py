"""What each registered component takes from the config, and its checks: the seam between the registries
(policy losses and advantage estimators in ``sapo.core``, engines in ``sapo.rollout``) and the config.

- a policy loss's numbers are read from the config key of the same name, first under
  ``actor_rollout_ref.actor.policy_loss``, then under ``actor_rollout_ref.actor`` (``tau_pos``,
  ``clip_ratio_low``, ``kl_cov_ratio``, ...); a number with no key keeps the loss's own default;
- an estimator's numbers are read from ``algorithm.<name>`` (``gamma``, ``lam``,
  ``norm_adv_by_std_in_grpo``); its flags say whether it needs a group (rollout.n >= 2) or a critic;
- an engine's settings are the config keys its registry entry names.

So a new loss, estimator or engine is its own file (plus its tests and, for a new number, its config
field); nothing here or in the trainer lists them.
"""

from __future__ import annotations

import difflib

from sapo.config.keys import value_at
from sapo.config.schema import Config
from sapo.core.advantages import ADVANTAGE_ESTIMATOR_ENTRIES, advantage_estimator_entry
from sapo.core.aggregation import LOSS_AGG_MODES
from sapo.core.kl import KL_ESTIMATORS
from sapo.core.loss_registry import POLICY_LOSS_ENTRIES, check_policy_loss_numbers, policy_loss_entry
from sapo.core.losses import POLICY_LOSSES  # noqa: F401  (importing the losses registers them)
from sapo.optim.schedule import SCHEDULES
from sapo.rollout import ROLLOUT_ENGINES, rollout_engine_entry
from sapo.rollout.registry import engine_setting_problems

_MISSING = object()


def policy_loss_numbers(config: Config) -> dict[str, object]:
    """The configured loss's numbers, e.g. ``{'tau_pos': 1.0, 'tau_neg': 1.05}`` for sapo."""
    actor = config.actor_rollout_ref.actor
    entry = policy_loss_entry(actor.policy_loss.loss_mode)
    numbers = {}
    for name in entry.numbers:
        for section in (actor.policy_loss, actor):
            value = getattr(section, name, _MISSING)
            if value is not _MISSING:
                numbers[name] = value
                break
    return numbers


def estimator_numbers(config: Config) -> dict[str, object]:
    """The configured estimator's numbers found under ``algorithm`` (e.g. ``gamma``, ``lam``)."""
    algorithm = config.algorithm
    entry = advantage_estimator_entry(algorithm.adv_estimator)
    return {name: getattr(algorithm, name) for name in entry.numbers if hasattr(algorithm, name)}


def engine_settings(config: Config) -> dict[str, object]:
    """The configured engine's own keyword arguments, read from the keys its entry names."""
    entry = rollout_engine_entry(config.actor_rollout_ref.rollout.name)
    return {argument: value_at(config, key) for argument, key in entry.settings.items()}


def component_problems(config: Config) -> list[str]:
    """Unknown names (with a close match), then each chosen component's own complaints."""
    actor, algo = config.actor_rollout_ref.actor, config.algorithm
    rollout = config.actor_rollout_ref.rollout
    names = (
        ("actor_rollout_ref.actor.policy_loss.loss_mode", actor.policy_loss.loss_mode, POLICY_LOSS_ENTRIES),
        ("algorithm.adv_estimator", algo.adv_estimator, ADVANTAGE_ESTIMATOR_ENTRIES),
        ("actor_rollout_ref.rollout.name", rollout.name, ROLLOUT_ENGINES),
        ("actor_rollout_ref.actor.kl_loss_type", actor.kl_loss_type, KL_ESTIMATORS),
        ("algorithm.kl_penalty", algo.kl_penalty, KL_ESTIMATORS),
    )
    out = []
    for key, value, valid in names:
        out += name_problem(key, value, valid)
    if actor.policy_loss.loss_mode in POLICY_LOSS_ENTRIES:
        out += check_policy_loss_numbers(actor.policy_loss.loss_mode, policy_loss_numbers(config))
    if algo.adv_estimator in ADVANTAGE_ESTIMATOR_ENTRIES:
        out += _estimator_problems(config)
    if rollout.name in ROLLOUT_ENGINES:
        out += engine_setting_problems(rollout.name, engine_settings(config))
    return out + _mode_problems(config)


def _mode_problems(config: Config) -> list[str]:
    """Aggregation modes and lr schedules, against the lists of the code that implements them."""
    out = []
    for key, mode in (
        ("actor_rollout_ref.actor.loss_agg_mode", config.actor_rollout_ref.actor.loss_agg_mode),
        ("critic.loss_agg_mode", config.critic.loss_agg_mode),
    ):
        if mode is not None and mode not in LOSS_AGG_MODES:
            out.append(f"{key}={mode!r}: choose one of {', '.join(LOSS_AGG_MODES)}")
    for key, optim in (
        ("actor_rollout_ref.actor.optim", config.actor_rollout_ref.actor.optim),
        ("critic.optim", config.critic.optim),
    ):
        if optim.lr_scheduler_type not in SCHEDULES:
            out.append(
                f"{key}.lr_scheduler_type={optim.lr_scheduler_type!r}: choose one of {', '.join(SCHEDULES)}"
            )
    return out


def _estimator_problems(config: Config) -> list[str]:
    algo, n = config.algorithm, config.actor_rollout_ref.rollout.n
    entry = advantage_estimator_entry(algo.adv_estimator)
    out = []
    if entry.needs_group and n < 2:
        out.append(
            f"algorithm.adv_estimator={algo.adv_estimator} compares responses within a prompt's group, "
            f"so it needs actor_rollout_ref.rollout.n >= 2 (got {n}): every advantage would be 0"
        )
    if entry.needs_values and not config.critic.enable:
        out.append(
            f"algorithm.adv_estimator={algo.adv_estimator} needs a value model, but critic.enable=false; "
            "set critic.enable=true (or null) or choose adv_estimator=grpo"
        )
    if config.critic.enable and not entry.needs_values:
        out.append(
            f"critic.enable=true but adv_estimator={algo.adv_estimator} does not use values; "
            "set critic.enable=null or adv_estimator=gae"
        )
    return out


def name_problem(key: str, value: str, valid) -> list[str]:
    valid = sorted(valid)
    if value in valid:
        return []
    near = difflib.get_close_matches(value, valid, n=1)
    return [
        f"{key}={value!r} is not a known name"
        + (f" (did you mean {near[0]!r}?)" if near else "")
        + f"; choose one of: {', '.join(valid)}"
    ]
