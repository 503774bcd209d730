"""Resolution: every null that means "inherit" replaced by the value it inherits, once, in the config.

After :func:`resolve_config` the :class:`~sapo.config.schema.Config` is the only place a run's numbers come
from: the trainer builds its settings from it and fills in nothing of its own.
"""

from __future__ import annotations

from sapo.config.schema import Config


def resolve_config(config: Config) -> Config:
    """Fill every null that means "inherit" with the value it inherits, in place, and return the config.
    Idempotent: a dumped resolved config loads back to the same values."""
    # The registries import torch: loaded here, not with the package, so `sapo --help` stays light.
    from sapo.core.advantages import ADVANTAGE_ESTIMATOR_ENTRIES
    from sapo.core.losses import POLICY_LOSS_ENTRIES, default_loss_agg_mode

    data, arr, trainer = config.data, config.actor_rollout_ref, config.trainer
    actor, rollout, critic = arr.actor, arr.rollout, config.critic
    if data.seed is None:
        data.seed = trainer.seed
    if data.tokenizer is None:  # one tokenizer for data and policy (validation rejects two different ones)
        data.tokenizer = arr.model.tokenizer_path
    if config.sapo.task.seed is None:
        config.sapo.task.seed = trainer.seed
    if actor.data_loader_seed is None:
        actor.data_loader_seed = trainer.seed
    # An explicit clip_ratio sets both sides unless they are given too (in verl it silently does nothing
    # next to the 0.2 defaults of clip_ratio_low / clip_ratio_high).
    explicit = config.provenance.explicit
    for side in ("clip_ratio_low", "clip_ratio_high"):
        if (
            "actor_rollout_ref.actor.clip_ratio" in explicit
            and f"actor_rollout_ref.actor.{side}" not in explicit
        ):
            setattr(actor, side, actor.clip_ratio)
    actor.clip_ratio_low = actor.clip_ratio if actor.clip_ratio_low is None else actor.clip_ratio_low
    actor.clip_ratio_high = actor.clip_ratio if actor.clip_ratio_high is None else actor.clip_ratio_high
    if actor.optim.clip_grad is not None:
        actor.grad_clip = actor.optim.clip_grad
    if critic.optim.clip_grad is not None:
        critic.grad_clip = critic.optim.clip_grad
    if actor.loss_agg_mode is None and actor.policy_loss.loss_mode in POLICY_LOSS_ENTRIES:
        actor.loss_agg_mode = default_loss_agg_mode(actor.policy_loss.loss_mode, None)
    if actor.loss_scale_factor is None:
        actor.loss_scale_factor = data.max_response_length
    if rollout.log_prob_micro_batch_size_per_gpu is None:
        rollout.log_prob_micro_batch_size_per_gpu = actor.ppo_micro_batch_size_per_gpu
    if arr.ref.log_prob_micro_batch_size_per_gpu is None:
        arr.ref.log_prob_micro_batch_size_per_gpu = actor.ppo_micro_batch_size_per_gpu
    rollout.prompt_length = rollout.prompt_length or data.max_prompt_length
    rollout.response_length = rollout.response_length or data.max_response_length
    if trainer.default_local_dir is None:
        trainer.default_local_dir = f"checkpoints/{trainer.project_name}/{trainer.experiment_name}"
    if critic.enable is None:
        estimator = ADVANTAGE_ESTIMATOR_ENTRIES.get(config.algorithm.adv_estimator)
        critic.enable = estimator is not None and estimator.needs_values  # gae
    for name in (
        "ppo_mini_batch_size",
        "ppo_micro_batch_size_per_gpu",
        "use_dynamic_bsz",
        "ppo_epochs",
        "shuffle",
    ):
        if getattr(critic, name) is None:
            setattr(critic, name, getattr(actor, name))
    if critic.model.path is None:
        critic.model.path = arr.model.path
    buffer = config.reward_model.overlong_buffer
    if buffer.max_resp_len is None:
        buffer.max_resp_len = data.max_response_length
    if critic.loss_agg_mode is None:
        critic.loss_agg_mode = "token-mean"
    if actor.fsdp_config.model_dtype is None:
        actor.fsdp_config.model_dtype = arr.model.dtype
    for fsdp in (arr.ref.fsdp_config, critic.model.fsdp_config):  # copies of the policy: its dtype
        if fsdp.model_dtype is None:
            fsdp.model_dtype = actor.fsdp_config.model_dtype
    return config
