"""verl keys that are accepted without being config fields: renamed keys (aliases) and keys that only tune
verl's own infrastructure (ignored, and reported as such at start-up).

A key that changes what is optimised is never ignored. Where a verl key is harmless only at one value
(``lora_rank=0``, ``critic_warmup=0``), it is listed with that value: any
other value is an error naming the key.

Patterns use ``fnmatch`` syntax on the dotted key: ``*`` matches anything, dots included.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

# verl key -> sapo key with the same meaning.
ALIASES: dict[str, str] = {
    "actor_rollout_ref.actor.optim.warmup_style": "actor_rollout_ref.actor.optim.lr_scheduler_type",
    "critic.optim.warmup_style": "critic.optim.lr_scheduler_type",
    "reward_model.reward_manager.name": "reward_model.reward_manager",
    "reward.reward_manager.name": "reward_model.reward_manager",
    "reward.custom_reward_function.path": "custom_reward_function.path",
    "reward.custom_reward_function.name": "custom_reward_function.name",
    "reward_model.reward_kwargs.overlong_buffer_cfg.enable": "reward_model.overlong_buffer.enable",
    "reward_model.reward_kwargs.overlong_buffer_cfg.len": "reward_model.overlong_buffer.len",
    "reward_model.reward_kwargs.overlong_buffer_cfg.penalty_factor": (
        "reward_model.overlong_buffer.penalty_factor"
    ),
    "reward_model.reward_kwargs.overlong_buffer_cfg.log": "reward_model.overlong_buffer.log",
    "reward_model.reward_kwargs.max_resp_len": "reward_model.overlong_buffer.max_resp_len",
}

_ANY = object()


@dataclass(frozen=True)
class IgnoredKey:
    pattern: str
    reason: str
    allowed: tuple = (_ANY,)  # values accepted; anything else is an error

    def matches(self, key: str) -> bool:
        return fnmatch.fnmatchcase(key, self.pattern)

    def accepts(self, value: Any) -> bool:
        return _ANY in self.allowed or _normalise(value) in {_normalise(v) for v in self.allowed}

    def allowed_text(self) -> str:
        return "any value" if _ANY in self.allowed else " or ".join(repr(v) for v in self.allowed)


def _normalise(value: Any) -> Any:
    if isinstance(value, str) and value.lower() in {"null", "none", "~"}:
        return None
    if isinstance(value, str) and value.lower() in {"true", "false"}:
        return value.lower() == "true"
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


# sapo's only parallelism is data-parallel FSDP2 over the processes (trainer.nnodes x n_gpus_per_node): a
# tensor, pipeline, sequence or expert parallel size other than 1 would be silently ignored, so only 1 is
# accepted.
_PARALLEL = (
    "parallelism of verl's engines; sapo shards with FSDP2 over trainer.nnodes x trainer.n_gpus_per_node "
    "processes, each with one rollout engine, so only 1 is accepted"
)
_ENGINE = "tunes the inference engine's memory/scheduling, not what is generated"
_MICRO = "forward-only batching; sapo uses ppo_micro_batch_size_per_gpu / ppo_max_token_len_per_gpu"
_KERNEL = "kernel/compile choice; the computed values are the same"
_RAY = "Ray/cluster set-up; sapo runs without Ray"

IGNORED_KEYS: tuple[IgnoredKey, ...] = (
    # --- actor / ref / critic engines
    IgnoredKey(
        "actor_rollout_ref.*.fsdp_config.*",
        "FSDP engine tuning that FSDP2 does not need (prefetch, wrap policy, ...); the keys sapo honours "
        "(param_offload, optimizer_offload, reshard_after_forward, fsdp_size, model_dtype, mixed_precision) "
        "are config fields",
    ),
    IgnoredKey("critic.model.fsdp_config.*", "FSDP engine tuning that FSDP2 does not need"),
    IgnoredKey("critic.fsdp.*", "FSDP engine tuning"),
    IgnoredKey("actor_rollout_ref.*.megatron.*", _PARALLEL),
    IgnoredKey("critic.megatron.*", _PARALLEL),
    IgnoredKey("actor_rollout_ref.*.strategy", _PARALLEL),
    IgnoredKey("critic.strategy", _PARALLEL),
    IgnoredKey("actor_rollout_ref.*.ulysses_sequence_parallel_size", _PARALLEL, (1,)),
    IgnoredKey("critic.ulysses_sequence_parallel_size", _PARALLEL, (1,)),
    IgnoredKey("actor_rollout_ref.*.use_torch_compile", _KERNEL),
    IgnoredKey("actor_rollout_ref.*.entropy_from_logits_with_chunking", _KERNEL),
    IgnoredKey("actor_rollout_ref.*.entropy_from_logits_chunk_size", _KERNEL),
    IgnoredKey("actor_rollout_ref.*.entropy_checkpointing", "memory/compute trade-off; same values"),
    IgnoredKey("actor_rollout_ref.*.pad_to_length*", "padding layout only"),
    IgnoredKey("actor_rollout_ref.model.use_remove_padding", "padding layout only"),
    IgnoredKey("critic.model.use_remove_padding", "padding layout only"),
    IgnoredKey("actor_rollout_ref.model.use_fused_kernels", _KERNEL),
    IgnoredKey("actor_rollout_ref.model.fused_kernel_options.*", _KERNEL),
    IgnoredKey("actor_rollout_ref.model.use_liger", _KERNEL),
    IgnoredKey("actor_rollout_ref.model.use_shm", "model loading via shared memory"),
    IgnoredKey("actor_rollout_ref.model.enable_activation_offload", "memory only"),
    IgnoredKey("critic.model.enable_activation_offload", "memory only"),
    IgnoredKey("actor_rollout_ref.model.external_lib", "extra import path", (None,)),
    IgnoredKey("actor_rollout_ref.model.lora_rank", "LoRA is not supported; only full fine-tuning", (0,)),
    IgnoredKey(
        "actor_rollout_ref.*.checkpoint.*",
        "verl's checkpoint contents; sapo always saves model, optimizer and extra state",
    ),
    IgnoredKey("critic.checkpoint.*", "verl's checkpoint contents"),
    IgnoredKey("actor_rollout_ref.*.profiler.*", "profiling"),
    IgnoredKey("critic.profiler.*", "profiling"),
    IgnoredKey("actor_rollout_ref.*.rollout_n", "derived from actor_rollout_ref.rollout.n"),
    IgnoredKey("critic.rollout_n", "derived from actor_rollout_ref.rollout.n"),
    IgnoredKey(
        "actor_rollout_ref.hybrid_engine", "training and generation always share the process", (True,)
    ),
    IgnoredKey(
        "actor_rollout_ref.actor.optim.optimizer_impl",
        "sapo's AdamW computes torch.optim.AdamW's update",
        ("torch.optim",),
    ),
    IgnoredKey("actor_rollout_ref.actor.optim.zero_indexed_step", "sapo's schedule is zero-indexed", (True,)),
    IgnoredKey("actor_rollout_ref.*.router_replay.mode", "MoE router replay is not supported", ("disabled",)),
    IgnoredKey("actor_rollout_ref.*.router_replay.*_file", "MoE router replay is not supported", (None,)),
    IgnoredKey("actor_rollout_ref.*.use_remove_padding", "padding layout only"),
    IgnoredKey("actor_rollout_ref.actor.calculate_entropy", "entropy is always logged"),
    IgnoredKey("actor_rollout_ref.actor.calculate_sum_pi_squared", "diagnostic only"),
    IgnoredKey("actor_rollout_ref.actor.use_prefix_grouper", "shared-prefix batching; same values"),
    IgnoredKey("actor_rollout_ref.actor.freeze_vision_tower", "text-only models", (False,)),
    IgnoredKey("actor_rollout_ref.ref.log_prob_use_dynamic_bsz", _MICRO),
    IgnoredKey("actor_rollout_ref.ref.log_prob_max_token_len_per_gpu", _MICRO),
    IgnoredKey("actor_rollout_ref.rollout.log_prob_use_dynamic_bsz", _MICRO),
    IgnoredKey("actor_rollout_ref.rollout.log_prob_micro_batch_size", _MICRO),
    IgnoredKey("actor_rollout_ref.ref.log_prob_micro_batch_size", _MICRO),
    IgnoredKey("actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu", _MICRO),
    IgnoredKey("critic.forward_micro_batch_size*", _MICRO),
    IgnoredKey("critic.forward_max_token_len_per_gpu", _MICRO),
    IgnoredKey("actor_rollout_ref.actor.use_fused_kernels", _KERNEL),
    # --- rollout engine
    IgnoredKey("actor_rollout_ref.rollout.mode", "sync/async engine driving; same samples"),
    IgnoredKey("actor_rollout_ref.rollout.data_parallel_size", _PARALLEL, (1,)),
    IgnoredKey("actor_rollout_ref.rollout.expert_parallel_size", _PARALLEL, (1,)),
    IgnoredKey("actor_rollout_ref.rollout.pipeline_model_parallel_size", _PARALLEL, (1,)),
    IgnoredKey("actor_rollout_ref.rollout.nnodes", _PARALLEL, (1,)),
    IgnoredKey("actor_rollout_ref.rollout.n_gpus_per_node", _PARALLEL, (1,)),
    IgnoredKey("actor_rollout_ref.rollout.dtype", "generation runs in model.dtype"),
    IgnoredKey("actor_rollout_ref.rollout.enable_chunked_prefill", _ENGINE),
    IgnoredKey("actor_rollout_ref.rollout.cudagraph_capture_sizes", _ENGINE),
    IgnoredKey("actor_rollout_ref.rollout.load_format", _ENGINE),
    IgnoredKey("actor_rollout_ref.rollout.layered_summon", _ENGINE),
    IgnoredKey("actor_rollout_ref.rollout.disable_log_stats", _ENGINE),
    IgnoredKey("actor_rollout_ref.rollout.scheduling_policy", _ENGINE),
    IgnoredKey("actor_rollout_ref.rollout.multi_stage_wake_up", _ENGINE),
    IgnoredKey("actor_rollout_ref.rollout.skip_tokenizer_init", _ENGINE),
    IgnoredKey("actor_rollout_ref.rollout.engine_kwargs.*", _ENGINE),
    IgnoredKey("actor_rollout_ref.rollout.checkpoint_engine.*", "weight-sync transport"),
    IgnoredKey("actor_rollout_ref.rollout.prometheus.*", "monitoring"),
    IgnoredKey("actor_rollout_ref.rollout.trace.*", "tracing"),
    IgnoredKey("actor_rollout_ref.rollout.agent.*", "agent-loop workers; single-turn generation"),
    IgnoredKey(
        "algorithm.rollout_correction.loss_type",
        "verl's bypass-mode loss; bypass_mode here keeps actor_rollout_ref.actor.policy_loss.loss_mode",
        ("ppo_clip",),
    ),
    IgnoredKey("actor_rollout_ref.rollout.logprobs_mode", "engine log-prob flavour"),
    IgnoredKey("actor_rollout_ref.rollout.seed", "generation is seeded from trainer.seed"),
    IgnoredKey("actor_rollout_ref.rollout.full_determinism", _ENGINE),
    IgnoredKey(
        "actor_rollout_ref.rollout.multi_turn.enable", "multi-turn rollouts are not supported", (False,)
    ),
    IgnoredKey("actor_rollout_ref.rollout.over_sample_rate", "no over-sampling", (0,)),
    IgnoredKey("actor_rollout_ref.rollout.ignore_eos", "generation stops at EOS", (False,)),
    IgnoredKey("actor_rollout_ref.rollout.quantization", "no quantized rollout", (None,)),
    # --- data loading
    IgnoredKey("data.filter_overlong_prompts_workers", "worker count of the filter"),
    IgnoredKey("data.dataloader_num_workers", "loader processes"),
    IgnoredKey("data.return_raw_chat", "prompts are always rendered from the raw chat"),
    IgnoredKey("data.return_raw_input_ids", "internal data layout"),
    IgnoredKey("data.return_full_prompt", "internal data layout"),
    IgnoredKey("data.use_shm", "shared-memory loading"),
    IgnoredKey("data.trust_remote_code", "tokenizer loading; see actor_rollout_ref.model.trust_remote_code"),
    IgnoredKey("data.return_multi_modal_inputs", "text only"),
    IgnoredKey(
        "data.gen_batch_size", "no DAPO group filtering, so prompts generated = train_batch_size", (None,)
    ),
    # --- algorithm switches that are harmless only when off
    IgnoredKey("algorithm.use_pf_ppo", "PF-PPO is not supported", (False,)),
    IgnoredKey(
        "reward_model.enable", "model-based reward is not supported; rewards are functions", (False, None)
    ),
    IgnoredKey("reward_model.launch_reward_fn_async", "scoring runs in the trainer process"),
    IgnoredKey("trainer.critic_warmup", "actor updates start at step 1", (0,)),
    # --- trainer infrastructure
    IgnoredKey(
        "trainer.balance_batch",
        "reorders sequences across ranks for load balance; the mini-batch gradient is unchanged",
    ),
    IgnoredKey("trainer.use_legacy_worker_impl", "verl worker implementation"),
    IgnoredKey("trainer.use_v1", "verl trainer implementation"),
    IgnoredKey("trainer.v1.*", "verl trainer implementation"),
    IgnoredKey("trainer.esi_redundant_time", "cluster preemption handling"),
    IgnoredKey("trainer.ray_wait_register_center_timeout", _RAY),
    IgnoredKey("trainer.del_local_ckpt_after_load", "checkpoint housekeeping", (False,)),
    IgnoredKey("trainer.default_hdfs_dir", "HDFS upload", (None,)),
    IgnoredKey("ray_init.*", _RAY),
    IgnoredKey("ray_kwargs.*", _RAY),
    IgnoredKey("global_profiler.*", "profiling"),
    IgnoredKey("transfer_queue.*", "verl data transport"),
)


def find_ignored(key: str) -> IgnoredKey | None:
    """The ignored-key rule for ``key``, or None when the key is not on the list."""
    for rule in IGNORED_KEYS:
        if rule.matches(key):
            return rule
    return None
