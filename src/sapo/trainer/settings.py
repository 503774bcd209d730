"""The trainer's settings objects, built from the resolved config and nothing else.

:func:`sapo.config.resolve.resolve_config` has already filled every inherited null (the critic's batch
sizes from the actor's, ``loss_agg_mode`` from the loss's registered default, ``grad_clip`` from
``optim.clip_grad``, ...), so each function here only reads keys; none supplies a default of its own.
What is derived rather than inherited is computed here and named: a mini-batch of ``ppo_mini_batch_size``
prompts is ``x rollout.n`` sequences, and a null micro-batch size means the whole mini-batch.
"""

from __future__ import annotations

from sapo.config import Config
from sapo.config.components import policy_loss_numbers
from sapo.distributed.fsdp import ShardingSettings
from sapo.rollout.base import SamplingParams
from sapo.trainer.actor import ActorUpdateSettings, PolicyLossSettings
from sapo.trainer.critic import CriticUpdateSettings
from sapo.trainer.ppo_update import UpdateSchedule


def _schedule(section, *, mini_batch_prompts: int, config: Config) -> UpdateSchedule:
    """The update schedule of ``actor_rollout_ref.actor`` or ``critic`` (same key names in both)."""
    mini = mini_batch_prompts * config.actor_rollout_ref.rollout.n
    return UpdateSchedule(
        ppo_epochs=section.ppo_epochs,
        mini_batch_size=mini,
        micro_batch_size=section.ppo_micro_batch_size_per_gpu or mini,
        max_token_len=section.ppo_max_token_len_per_gpu if section.use_dynamic_bsz else None,
        shuffle=section.shuffle,
        grad_clip=section.grad_clip,
        loss_scale_factor=config.actor_rollout_ref.actor.loss_scale_factor,
    )


def actor_settings(config: Config) -> ActorUpdateSettings:
    actor = config.actor_rollout_ref.actor
    return ActorUpdateSettings(
        schedule=_schedule(actor, mini_batch_prompts=actor.ppo_mini_batch_size, config=config),
        loss=PolicyLossSettings(
            loss_mode=actor.policy_loss.loss_mode,
            loss_agg_mode=actor.loss_agg_mode,
            loss_kwargs=policy_loss_numbers(config),
            use_kl_loss=actor.use_kl_loss,
            kl_loss_coef=actor.kl_loss_coef,
            kl_loss_type=actor.kl_loss_type,
            entropy_coeff=actor.entropy_coeff,
            temperature=config.actor_rollout_ref.rollout.temperature,
        ),
    )


def critic_settings(config: Config) -> CriticUpdateSettings:
    critic = config.critic
    return CriticUpdateSettings(
        schedule=_schedule(critic, mini_batch_prompts=critic.ppo_mini_batch_size, config=config),
        cliprange_value=critic.cliprange_value,
        loss_agg_mode=critic.loss_agg_mode,
    )


def log_prob_micro_batch_sizes(config: Config) -> tuple[int, int]:
    """Sequences per forward pass for ``old_log_prob`` and ``ref_log_prob`` (null: the whole mini-batch)."""
    arr = config.actor_rollout_ref
    whole = arr.actor.ppo_mini_batch_size * arr.rollout.n
    return (
        arr.rollout.log_prob_micro_batch_size_per_gpu or whole,
        arr.ref.log_prob_micro_batch_size_per_gpu or whole,
    )


def train_sampling(config: Config) -> SamplingParams:
    rollout = config.actor_rollout_ref.rollout
    return SamplingParams(
        n=rollout.n,
        temperature=rollout.temperature,
        top_p=rollout.top_p,
        top_k=rollout.top_k,
        max_new_tokens=rollout.response_length,
        do_sample=rollout.do_sample,
    )


def val_sampling(config: Config) -> SamplingParams:
    val = config.actor_rollout_ref.rollout.val_kwargs
    return SamplingParams(
        n=val.n,
        temperature=val.temperature,
        top_p=val.top_p,
        top_k=val.top_k,
        max_new_tokens=config.actor_rollout_ref.rollout.response_length,
        do_sample=val.do_sample,
    )


def sharding(fsdp_config) -> ShardingSettings:
    """FSDP2 settings from an ``fsdp_config`` section (actor, ref or critic). FSDP2 has one offload policy:
    parameters, gradients and the optimizer state (created beside its parameters) move to host memory
    together, so ``param_offload`` and ``optimizer_offload`` both turn it on."""
    precision = fsdp_config.mixed_precision or {}
    return ShardingSettings(
        reshard_after_forward=fsdp_config.reshard_after_forward,
        offload=fsdp_config.param_offload or fsdp_config.optimizer_offload,
        param_dtype=precision.get("param_dtype"),
        reduce_dtype=precision.get("reduce_dtype"),
    )
