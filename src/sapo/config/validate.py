"""Reject impossible configurations before any compute, and derive the quantities a run prints at start-up.

Batch-size meanings are verl's: ``data.train_batch_size`` and ``ppo_mini_batch_size`` count prompts (each
with ``rollout.n`` responses); ``ppo_micro_batch_size_per_gpu`` counts sequences per process.

The names of losses, estimators, KL types and engines, and each one's own checks, come from their
registries (:mod:`sapo.config.components`), so ``sapo config`` and ``sapo train`` check the same things.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from sapo.config.resolve import resolve_config
from sapo.config.schema import Config
from sapo.config.value_checks import unsupported_value_problems
from sapo.config.world_checks import (
    divisors_hint,
    fsdp_problems,
    per_process_problems,
    tensor_parallel_problems,
    uses_reference,
)
from sapo.errors import ConfigError

LOGGERS = ("console", "tensorboard", "wandb")
TRUNCATIONS = ("error", "left", "right")
RESUME_MODES = ("auto", "disable", "resume_path")
DTYPES = ("float32", "bfloat16", "float16")
MODEL_IMPLS = ("auto", "native", "hf")  # sapo.models.loading.IMPLS (config does not import models)
KL_CONTROLLERS = ("fixed", "adaptive")
REWARD_MANAGERS = ("naive", "dapo")
DEVICES = ("auto", "cuda", "cpu")


def effective_loss_agg_mode(config: Config) -> str:
    """The aggregation the actor's loss uses: ``loss_agg_mode`` as resolved (the user's, else the loss's
    registered default: :func:`sapo.core.loss_registry.default_loss_agg_mode`, the one copy of that rule)."""
    from sapo.core.loss_registry import default_loss_agg_mode

    actor = config.actor_rollout_ref.actor
    return default_loss_agg_mode(actor.policy_loss.loss_mode, actor.loss_agg_mode)


def validate(config: Config, *, world_size: int = 1) -> None:
    """Raise one ConfigError listing every problem, each with the arithmetic and the fix. Checks the
    config as resolved (a copy is resolved here; ``load_config`` returns resolved configs already)."""
    from sapo.config.components import component_problems  # the registries import torch: load on use

    if world_size < 1:
        raise ConfigError(f"the process count must be >= 1 (got {world_size}): omit --world-size")
    config = resolve_config(copy.deepcopy(config))
    problems: list[str] = []
    problems += _batch_problems(config, world_size)
    problems += fsdp_problems(config, world_size)
    problems += tensor_parallel_problems(config, world_size)
    problems += component_problems(config)
    problems += _algorithm_problems(config)
    problems += rollout_correction_problems(config)
    problems += _choice_problems(config)
    problems += _range_problems(config)
    problems += unsupported_value_problems(config)
    if world_size > 1 and any(f"{world_size} processes" in problem for problem in problems):
        trainer = config.trainer  # say where the count comes from: a user who set nnodes=7 sees "7 processes"
        problems.append(
            f"(the {world_size} processes: trainer.nnodes x trainer.n_gpus_per_node = {trainer.nnodes} x "
            f"{trainer.n_gpus_per_node}, or the processes torchrun started / sapo config --world-size)"
        )
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))


def _batch_problems(config: Config, world_size: int) -> list[str]:
    data, actor, n = config.data, config.actor_rollout_ref.actor, config.actor_rollout_ref.rollout.n
    batch, mini, micro = data.train_batch_size, actor.ppo_mini_batch_size, actor.ppo_micro_batch_size_per_gpu
    out = []
    for key, value in (
        ("data.train_batch_size", batch),
        ("actor_rollout_ref.actor.ppo_mini_batch_size", mini),
        ("actor_rollout_ref.rollout.n", n),
        ("actor_rollout_ref.actor.ppo_epochs", actor.ppo_epochs),
    ):
        if value < 1:
            out.append(f"{key} must be >= 1 (got {value})")
    if out:
        return out
    if mini > batch:
        out.append(
            f"ppo_mini_batch_size={mini} prompts is larger than data.train_batch_size={batch} prompts; "
            f"set actor_rollout_ref.actor.ppo_mini_batch_size <= {batch}"
        )
    elif batch % mini:
        out.append(
            f"data.train_batch_size={batch} is not divisible by ppo_mini_batch_size={mini} "
            f"({batch} / {mini} = {batch / mini:.3g}); choose a divisor of {batch}, e.g. "
            f"{divisors_hint(batch, mini)}"
        )
    if batch % world_size:
        out.append(
            f"data.train_batch_size={batch} prompts cannot be split evenly over {world_size} processes (each "
            f"generates train_batch_size / {world_size}); use a multiple of {world_size}"
        )
    out += per_process_problems("actor_rollout_ref.actor", mini, n, micro, world_size)
    critic = config.critic
    if critic.enable and critic.ppo_mini_batch_size is not None:
        critic_mini = critic.ppo_mini_batch_size
        if critic_mini < 1:
            return out + [f"critic.ppo_mini_batch_size must be >= 1 or null (got {critic_mini})"]
        if batch % critic_mini:
            out.append(
                f"data.train_batch_size={batch} is not divisible by critic.ppo_mini_batch_size={critic_mini} "
                f"({batch} / {critic_mini} = {batch / critic_mini:.3g}); choose a divisor of {batch}, e.g. "
                f"{divisors_hint(batch, critic_mini)} (or null: the actor's)"
            )
        out += per_process_problems("critic", critic_mini, n, critic.ppo_micro_batch_size_per_gpu, world_size)
    return out


def _algorithm_problems(config: Config) -> list[str]:
    algo = config.algorithm
    out = []
    if algo.kl_ctrl.type == "adaptive" and not (algo.kl_ctrl.target_kl > 0 and algo.kl_ctrl.horizon > 0):
        out.append(
            "algorithm.kl_ctrl.type=adaptive needs kl_ctrl.target_kl > 0 and kl_ctrl.horizon > 0 "
            f"(got {algo.kl_ctrl.target_kl}, {algo.kl_ctrl.horizon})"
        )
    buffer = config.reward_model.overlong_buffer
    if buffer.enable and config.reward_model.reward_manager != "dapo":
        out.append(
            "reward_model.overlong_buffer.enable=true is applied by the dapo reward manager; set "
            "reward_model.reward_manager=dapo"
        )
    max_len = buffer.max_resp_len
    if buffer.enable and not 0 < buffer.len <= max_len:
        out.append(f"reward_model.overlong_buffer.len={buffer.len} must be in 1..{max_len} (max_resp_len)")
    return out


def rollout_correction_problems(config: Config) -> list[str]:
    """``algorithm.rollout_correction.*`` and ``rollout.max_logprob_gap``: values (the rules live in
    :mod:`sapo.core.rollout_correction`) and what they need (the rollout's log-probs, the trainer's
    forward)."""
    from sapo.core.rollout_correction import check_is_level, check_is_threshold, parse_rejection

    rc, rollout = config.algorithm.rollout_correction, config.actor_rollout_ref.rollout
    key = "algorithm.rollout_correction"
    out = []
    for check in (
        lambda: check_is_level(rc.rollout_is),
        lambda: check_is_threshold(rc.rollout_is_threshold),
        lambda: parse_rejection(rc.rollout_rs, rc.rollout_rs_threshold),
    ):
        try:
            check()
        except ConfigError as err:
            out.append(str(err))
    gap = rollout.max_logprob_gap
    if gap is not None and not gap >= 0:
        out.append(
            f"actor_rollout_ref.rollout.max_logprob_gap must be >= 0 or null (got {gap}): it bounds the mean "
            "|old_log_prob - rollout_log_prob| per token, e.g. 0.05"
        )
    users = [
        f"{name}={value}"
        for name, value, on in (
            (f"{key}.rollout_is", rc.rollout_is, rc.rollout_is is not None),
            (f"{key}.rollout_rs", rc.rollout_rs, rc.rollout_rs is not None),
            (f"{key}.bypass_mode", "true", rc.bypass_mode),
            ("actor_rollout_ref.rollout.max_logprob_gap", gap, gap is not None),
        )
        if on
    ]
    if users and not rollout.calculate_log_probs:
        out.append(
            f"{', '.join(users)} need(s) the rollout engine's log-probs: set "
            "actor_rollout_ref.rollout.calculate_log_probs=True"
        )
    if rc.bypass_mode:
        for name in ("rollout_is", "rollout_rs"):
            if getattr(rc, name) is not None:
                out.append(
                    f"{key}.bypass_mode=true with {key}.{name} set: in bypass mode old_log_prob is the "
                    "rollout's log-prob, so every weight would be 1 and nothing rejected (the policy "
                    f"loss's ratio pi_theta / pi_rollout is the correction); set {key}.{name}=null or "
                    "bypass_mode=false"
                )
        if gap is not None:
            out.append(
                f"actor_rollout_ref.rollout.max_logprob_gap needs the trainer's old_log_prob, which "
                f"{key}.bypass_mode=true skips; set max_logprob_gap=null or bypass_mode=false"
            )
    return out


def _choice(key: str, value: Any, choices: tuple) -> list[str]:
    return [] if value in choices else [f"{key}={value!r}: choose one of {', '.join(choices)}"]


def _choice_problems(config: Config) -> list[str]:
    arr, trainer, actor = config.actor_rollout_ref, config.trainer, config.actor_rollout_ref.actor
    out = []
    out += _choice("actor_rollout_ref.model.dtype", arr.model.dtype, DTYPES)
    out += _choice("actor_rollout_ref.model.impl", arr.model.impl, MODEL_IMPLS)
    out += _choice("data.truncation", config.data.truncation, TRUNCATIONS)
    out += _choice("trainer.resume_mode", trainer.resume_mode, RESUME_MODES)
    out += _choice("trainer.device", trainer.device, DEVICES)
    out += _choice("algorithm.kl_ctrl.type", config.algorithm.kl_ctrl.type, KL_CONTROLLERS)
    out += _choice("reward_model.reward_manager", config.reward_model.reward_manager, REWARD_MANAGERS)
    out += _choice("data.on_bad_row", config.data.on_bad_row, ("error", "skip"))
    out += _choice("reward_model.on_error", config.reward_model.on_error, ("raise", "zero"))
    for name, optim in (
        ("actor_rollout_ref.actor.optim", actor.optim),
        ("critic.optim", config.critic.optim),
    ):
        out += _choice(f"{name}.optimizer", optim.optimizer, ("AdamW",))
    for logger in trainer.logger:
        out += _choice("trainer.logger entry", logger, LOGGERS)
    if trainer.resume_mode == "resume_path" and not trainer.resume_from_path:
        out.append("trainer.resume_mode=resume_path needs trainer.resume_from_path=<run_dir>/global_step_N")
    return out


def _range_problems(config: Config) -> list[str]:
    arr, actor = config.actor_rollout_ref, config.actor_rollout_ref.actor
    out = []
    checks = [
        ("data.max_prompt_length", config.data.max_prompt_length > 0, "> 0"),
        ("data.max_response_length", config.data.max_response_length > 0, "> 0"),
        (
            "actor_rollout_ref.rollout.response_length",
            arr.rollout.response_length > 0,  # resolved: null (or 0) is data.max_response_length
            ">= 1 or null (null: data.max_response_length)",
        ),
        ("actor_rollout_ref.actor.kl_loss_coef", actor.kl_loss_coef >= 0, ">= 0"),
        ("actor_rollout_ref.rollout.top_p", 0 < arr.rollout.top_p <= 1, "in (0, 1]"),
        ("actor_rollout_ref.rollout.val_kwargs.n", arr.rollout.val_kwargs.n >= 1, ">= 1"),
        ("actor_rollout_ref.rollout.val_kwargs.top_p", 0 < arr.rollout.val_kwargs.top_p <= 1, "in (0, 1]"),
        ("algorithm.gamma", 0 <= config.algorithm.gamma <= 1, "in [0, 1]"),
        ("algorithm.lam", 0 <= config.algorithm.lam <= 1, "in [0, 1]"),
        ("trainer.total_epochs", config.trainer.total_epochs >= 1, ">= 1"),
        ("actor_rollout_ref.nccl_timeout", arr.nccl_timeout > 0, "> 0 (seconds)"),
        ("trainer.cpu_threads", _none_or_at_least(config.trainer.cpu_threads, 1), ">= 1 or null"),
        (
            "trainer.total_training_steps",
            _none_or_at_least(config.trainer.total_training_steps, 1),
            ">= 1 or null",
        ),
        (
            "trainer.max_actor_ckpt_to_keep",
            _none_or_at_least(config.trainer.max_actor_ckpt_to_keep, 1),
            ">= 1 or null",
        ),
        ("data.val_batch_size", _none_or_at_least(config.data.val_batch_size, 1), ">= 1 or null"),
        (
            "trainer.max_nonfinite_steps",
            _none_or_at_least(config.trainer.max_nonfinite_steps, 1),
            ">= 1 or null",
        ),
        ("algorithm.kl_ctrl.kl_coef", config.algorithm.kl_ctrl.kl_coef >= 0, ">= 0"),
        (
            "algorithm.filter_groups.max_num_gen_batches",
            config.algorithm.filter_groups.max_num_gen_batches >= 0,
            ">= 0 (0: no cap)",
        ),
        (
            "reward_model.max_error_fraction",
            0 <= config.reward_model.max_error_fraction <= 1,
            "in [0, 1] (1: never stop)",
        ),
        (
            "reward_model.timeout_s",
            config.reward_model.timeout_s is None or config.reward_model.timeout_s > 0,
            "> 0 seconds or null (no limit)",
        ),
        (
            "reward_model.overlong_buffer.penalty_factor",
            config.reward_model.overlong_buffer.penalty_factor >= 0,
            ">= 0",
        ),
    ]
    checks += _sampling_checks(config)
    checks += _optim_checks(config)
    out += [f"{key} must be {rule}" for key, ok, rule in checks if not ok]
    val = arr.rollout.val_kwargs
    if val.n > 1 and not val.do_sample:
        out.append(
            f"actor_rollout_ref.rollout.val_kwargs.n={val.n} with do_sample=false would give {val.n} "
            "identical greedy answers; set val_kwargs.do_sample=true (and a temperature > 0)"
        )
    out += _token_budget_problems(config)
    return out


def _sampling_checks(config: Config) -> list[tuple[str, bool, str]]:
    """The rules :class:`sapo.rollout.base.SamplingParams` enforces, checked here against the config keys
    so a bad value is reported by ``sapo config`` and before any model loads (a greedy section's temperature
    must still be a finite number >= 0: the engine checks it whatever do_sample says)."""
    rollout = config.actor_rollout_ref.rollout
    checks = []
    for prefix, section, flag in (
        ("actor_rollout_ref.rollout", rollout, "do_sample"),
        ("actor_rollout_ref.rollout.val_kwargs", rollout.val_kwargs, "val_kwargs.do_sample"),
    ):
        temperature = section.temperature
        finite = math.isfinite(temperature) and temperature >= 0
        checks += [
            (f"{prefix}.temperature", finite, "a finite number >= 0"),
            (f"{prefix}.top_k", section.top_k >= -1, ">= 1, or -1 / 0 for off"),
        ]
        if section.do_sample:
            checks.append((f"{prefix}.temperature", temperature > 0, f"> 0 when {flag}=true"))
    return checks


def _optim_checks(config: Config) -> list[tuple[str, bool, str]]:
    checks = []
    for name, optim in (
        ("actor_rollout_ref.actor.optim", config.actor_rollout_ref.actor.optim),
        ("critic.optim", config.critic.optim),
    ):
        checks += [
            (f"{name}.lr", optim.lr > 0, "> 0"),
            (f"{name}.lr_warmup_steps_ratio", 0 <= optim.lr_warmup_steps_ratio <= 1, "in [0, 1]"),
            (f"{name}.min_lr_ratio", 0 <= optim.min_lr_ratio <= 1, "in [0, 1]"),
            (
                f"{name}.betas",
                len(optim.betas) == 2 and all(0 <= b < 1 for b in optim.betas),
                "two numbers in [0, 1)",
            ),
        ]
    return checks


def _none_or_at_least(value: int | None, low: int) -> bool:
    return value is None or value >= low


def _token_budget_problems(config: Config) -> list[str]:
    """With use_dynamic_bsz one micro-batch must hold at least one whole sequence."""
    data, rollout = config.data, config.actor_rollout_ref.rollout
    longest = data.max_prompt_length + rollout.response_length
    out = []
    for prefix, section in (
        ("actor_rollout_ref.actor", config.actor_rollout_ref.actor),
        ("critic", config.critic),
    ):
        if section is config.critic and not config.critic.enable:
            continue
        if section.use_dynamic_bsz and section.ppo_max_token_len_per_gpu < longest:
            out.append(
                f"{prefix}.ppo_max_token_len_per_gpu={section.ppo_max_token_len_per_gpu} is shorter than the "
                f"longest sequence (max_prompt_length {data.max_prompt_length} + response length "
                f"{longest - data.max_prompt_length} = {longest}); raise it to at least {longest}"
            )
    return out


def derived_quantities(
    config: Config, *, world_size: int = 1, train_dataset_size: int | None = None
) -> dict[str, Any]:
    """The numbers a run is really using, computed from the config (verl's batch semantics)."""
    data, actor, rollout = config.data, config.actor_rollout_ref.actor, config.actor_rollout_ref.rollout
    n, mini = rollout.n, actor.ppo_mini_batch_size
    mini_batches = data.train_batch_size // mini
    per_rank = mini * n // world_size
    nnodes = config.trainer.nnodes
    out: dict[str, Any] = {
        "world_size": world_size,
        "nnodes": nnodes,
        "processes_per_node": world_size // nnodes if world_size % nnodes == 0 else "uneven",
        "prompts_per_step": data.train_batch_size,
        "prompts_per_step_per_process": data.train_batch_size // world_size,
        "sequences_per_step": data.train_batch_size * n,
        "sequences_per_step_per_process": data.train_batch_size * n // world_size,
        "sequences_per_mini_batch": mini * n,
        "sequences_per_mini_batch_per_process": per_rank,
        "mini_batches_per_step": mini_batches,
        "optimizer_steps_per_step": mini_batches * actor.ppo_epochs,
        "micro_batch_size_per_process": "token budget " + str(actor.ppo_max_token_len_per_gpu)
        if actor.use_dynamic_bsz
        else (actor.ppo_micro_batch_size_per_gpu or per_rank),
        "micro_batches_per_mini_batch": "dynamic"
        if actor.use_dynamic_bsz
        else per_rank // (actor.ppo_micro_batch_size_per_gpu or per_rank),
        "effective_loss_agg_mode": effective_loss_agg_mode(config),
        "loss_agg_mode_source": "user"
        if "actor_rollout_ref.actor.loss_agg_mode" in config.provenance.explicit
        else "loss default",
        "max_sequence_length": data.max_prompt_length + rollout.response_length,
        "uses_reference_policy": uses_reference(config),
        "uses_critic": bool(config.critic.enable),
        "validation_samples_per_prompt": rollout.val_kwargs.n,
    }
    if train_dataset_size is not None:
        out.update(training_schedule(config, train_dataset_size))
    return out


def training_schedule(config: Config, train_dataset_size: int) -> dict[str, int]:
    """Steps per epoch (the last partial batch is dropped, as verl's loader does), total steps, and the
    actor's warmup steps (lr_warmup_steps, or lr_warmup_steps_ratio x total optimizer-schedule steps)."""
    batch = config.data.train_batch_size
    steps_per_epoch = train_dataset_size // batch
    if steps_per_epoch == 0:
        raise ConfigError(
            f"the training set has {train_dataset_size} prompts, fewer than data.train_batch_size="
            f"{batch}; lower data.train_batch_size or add data"
        )
    total = config.trainer.total_training_steps or steps_per_epoch * config.trainer.total_epochs
    from sapo.optim.schedule import warmup_steps

    optim = config.actor_rollout_ref.actor.optim
    schedule_total = optim.total_training_steps if optim.total_training_steps > 0 else total
    warmup = warmup_steps(optim.lr_warmup_steps, optim.lr_warmup_steps_ratio, schedule_total)
    return {
        "steps_per_epoch": steps_per_epoch,
        "total_training_steps": total,
        "lr_warmup_steps": warmup,
        "epochs_covered": math.ceil(total / steps_per_epoch),
    }
