"""Every config key is accounted for: honoured by the trainer (with the test that checks it) or rejected
when set to a value the trainer cannot honour. A new key in sapo.config.schema fails
``test_every_key_is_classified`` until it is added here with its test, so no key is ever silently ignored.
(Infrastructure-only verl keys are not schema keys: they are on sapo.config.verl_keys.IGNORED_KEYS.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sapo.config import all_keys, load_config, validate
from sapo.errors import ConfigError

TESTS = Path(__file__).resolve().parents[1]

_WIRING = "trainer/test_config_wiring.py::"
ACTOR = _WIRING + "test_actor_side_keys_reach_their_components"
CRITIC = _WIRING + "test_critic_keys_reach_the_critic"
REWARD = _WIRING + "test_reward_keys_reach_the_reward_manager"
BUILTIN = _WIRING + "test_builtin_run_keys_reach_the_warm_start_and_task"
INHERIT = _WIRING + "test_inherited_keys_resolve_from_the_trainer_section"
LOSS = _WIRING + "test_sapo_and_covariance_loss_numbers_reach_the_loss"
_KEYS = "trainer/test_config_keys.py::"
DUMPS = _KEYS + "test_generation_dumps_overlong_log_and_data_tokenizer"
VAL_ONLY = _KEYS + "test_val_only_validates_with_the_custom_chat_template_and_stops"
MICRO = _KEYS + "test_micro_batch_keys_reach_every_pass"
KL = _KEYS + "test_adaptive_kl_controller_counts_sequences"
VLLM = _KEYS + "test_vllm_engine_settings_reach_the_engine"
_DYNAMIC = "trainer/test_dynamic_sampling.py::"
DYNAMIC_SAMPLING = _DYNAMIC + "test_the_sampler_moves_on_by_every_round_and_a_resume_continues_exactly"
END_TO_END = "trainer/test_train_end_to_end.py::test_sapo_train_runs_a_real_model_and_writes_every_output"
_DIST = "config/test_distributed_keys.py::"
SHARDING = _DIST + "test_fsdp_config_keys_reach_the_sharding_settings"
MODEL_DTYPE = _DIST + "test_model_dtype_is_the_dtype_each_model_is_built_in"
PROCESS_GROUP = _DIST + "test_nccl_timeout_and_fsdp_size_reach_the_process_group"
LAUNCH = _DIST + "test_process_counts_start_the_processes_or_name_the_torchrun_command"
_RC = "trainer/test_rollout_correction_runs.py::"
RC_METRICS = _RC + "test_train_with_rollout_correction_logs_the_metrics"
RC_REJECT = _RC + "test_rejecting_every_token_leaves_the_policy_unchanged"
RC_WEIGHTS = _RC + "test_is_weights_of_an_off_policy_engine_are_truncated_and_change_the_update"
RC_BYPASS = _RC + "test_bypass_uses_the_rollout_log_probs_and_keeps_the_sapo_loss"
GAP_GUARD = _RC + "test_gap_guard_stops_the_run_before_the_update_and_keeps_the_checkpoint"
ROLLOUT_LOG_PROBS = _RC + "test_without_rollout_log_probs_no_mismatch_is_logged"
_FSDP_SECTIONS = ("actor_rollout_ref.actor", "actor_rollout_ref.ref", "critic.model")

# key -> the test that checks the trainer honours it ("file::function", relative to tests/).
HONOURED: dict[str, str] = {
    "data.train_files": END_TO_END,
    "data.val_files": END_TO_END,
    "data.tokenizer": DUMPS,
    "data.prompt_key": "data/test_rows.py::test_a_custom_prompt_key_is_validated",
    "data.reward_fn_key": "data/test_dataset.py::test_reward_fn_key_selects_the_column_that_names_the_scorer",
    "data.max_prompt_length": ACTOR,
    "data.max_response_length": DUMPS,
    "data.train_batch_size": ACTOR,
    "data.val_batch_size": ACTOR,
    "data.train_max_samples": ACTOR,
    "data.val_max_samples": ACTOR,
    "data.shuffle": ACTOR,
    "data.seed": ACTOR,
    "data.validation_shuffle": DUMPS,
    "data.filter_overlong_prompts": "data/test_dataset.py::"
    "test_filtering_drops_overlong_prompts_and_keeps_original_indices",
    "data.truncation": ACTOR,
    "data.on_bad_row": "data/test_dataset.py::test_from_files_reads_parquet_and_skips_bad_rows_on_request",
    "data.apply_chat_template_kwargs": DUMPS,
    "actor_rollout_ref.model.path": END_TO_END,
    "actor_rollout_ref.model.tokenizer_path": _KEYS
    + "test_custom_chat_template_and_tokenizer_path_replace_the_models_tokenizer",
    "actor_rollout_ref.model.dtype": ACTOR,
    "actor_rollout_ref.model.impl": "trainer/test_train_end_to_end.py::"
    + "test_model_impl_picks_the_policy_implementation",
    "actor_rollout_ref.model.custom_chat_template": VAL_ONLY,
    "actor_rollout_ref.model.enable_gradient_checkpointing": ACTOR,
    "actor_rollout_ref.actor.ppo_mini_batch_size": END_TO_END,
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": "trainer/test_actor.py::"
    "test_on_policy_sapo_update_is_the_policy_gradient_for_any_micro_batching",
    "actor_rollout_ref.actor.use_dynamic_bsz": MICRO,
    "actor_rollout_ref.actor.ppo_max_token_len_per_gpu": MICRO,
    "actor_rollout_ref.actor.ppo_epochs": ACTOR,
    "actor_rollout_ref.actor.shuffle": ACTOR,
    "actor_rollout_ref.actor.data_loader_seed": ACTOR,
    "actor_rollout_ref.actor.policy_loss.loss_mode": ACTOR,
    "actor_rollout_ref.actor.policy_loss.clip_cov_ratio": LOSS,
    "actor_rollout_ref.actor.policy_loss.clip_cov_lb": LOSS,
    "actor_rollout_ref.actor.policy_loss.clip_cov_ub": LOSS,
    "actor_rollout_ref.actor.policy_loss.kl_cov_ratio": LOSS,
    "actor_rollout_ref.actor.policy_loss.ppo_kl_coef": LOSS,
    "actor_rollout_ref.actor.tau_pos": LOSS,
    "actor_rollout_ref.actor.tau_neg": LOSS,
    "actor_rollout_ref.actor.clip_ratio": ACTOR,
    "actor_rollout_ref.actor.clip_ratio_low": ACTOR,
    "actor_rollout_ref.actor.clip_ratio_high": ACTOR,
    "actor_rollout_ref.actor.clip_ratio_c": ACTOR,
    "actor_rollout_ref.actor.loss_agg_mode": ACTOR,
    "actor_rollout_ref.actor.loss_scale_factor": ACTOR,
    "actor_rollout_ref.actor.entropy_coeff": ACTOR,
    "actor_rollout_ref.actor.use_kl_loss": ACTOR,
    "actor_rollout_ref.actor.kl_loss_coef": ACTOR,
    "actor_rollout_ref.actor.kl_loss_type": ACTOR,
    "actor_rollout_ref.actor.grad_clip": ACTOR,
    "actor_rollout_ref.actor.optim.lr": ACTOR,
    "actor_rollout_ref.actor.optim.lr_warmup_steps": ACTOR,
    "actor_rollout_ref.actor.optim.lr_warmup_steps_ratio": ACTOR,
    "actor_rollout_ref.actor.optim.total_training_steps": ACTOR,
    "actor_rollout_ref.actor.optim.weight_decay": ACTOR,
    "actor_rollout_ref.actor.optim.betas": ACTOR,
    "actor_rollout_ref.actor.optim.eps": ACTOR,
    "actor_rollout_ref.actor.optim.clip_grad": ACTOR,
    "actor_rollout_ref.actor.optim.lr_scheduler_type": ACTOR,
    "actor_rollout_ref.actor.optim.min_lr_ratio": ACTOR,
    "actor_rollout_ref.actor.optim.num_cycles": ACTOR,
    "actor_rollout_ref.rollout.name": VLLM,
    "actor_rollout_ref.rollout.n": END_TO_END,
    "actor_rollout_ref.rollout.temperature": ACTOR,
    "actor_rollout_ref.rollout.top_p": ACTOR,
    "actor_rollout_ref.rollout.top_k": ACTOR,
    "actor_rollout_ref.rollout.do_sample": ACTOR,
    "actor_rollout_ref.rollout.response_length": ACTOR,
    "actor_rollout_ref.rollout.gpu_memory_utilization": VLLM,
    "actor_rollout_ref.rollout.enforce_eager": VLLM,
    "actor_rollout_ref.rollout.max_model_len": VLLM,
    "actor_rollout_ref.rollout.max_num_seqs": VLLM,
    "actor_rollout_ref.rollout.max_num_batched_tokens": VLLM,
    "actor_rollout_ref.rollout.enable_prefix_caching": VLLM,
    "actor_rollout_ref.rollout.free_cache_engine": VLLM,
    "actor_rollout_ref.rollout.tensor_model_parallel_size": (
        "rollout/test_vllm_tensor_parallel.py::test_two_ranks_share_one_tensor_parallel_engine"
    ),
    "actor_rollout_ref.rollout.calculate_log_probs": ROLLOUT_LOG_PROBS,
    "actor_rollout_ref.rollout.max_logprob_gap": GAP_GUARD,
    "algorithm.rollout_correction.rollout_is": RC_WEIGHTS,
    "algorithm.rollout_correction.rollout_is_threshold": RC_WEIGHTS,
    "algorithm.rollout_correction.rollout_is_batch_normalize": RC_METRICS,
    "algorithm.rollout_correction.rollout_rs": RC_REJECT,
    "algorithm.rollout_correction.rollout_rs_threshold": RC_REJECT,
    "algorithm.rollout_correction.bypass_mode": RC_BYPASS,
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu": MICRO,
    "actor_rollout_ref.rollout.val_kwargs.n": ACTOR,
    "actor_rollout_ref.rollout.val_kwargs.temperature": ACTOR,
    "actor_rollout_ref.rollout.val_kwargs.top_p": ACTOR,
    "actor_rollout_ref.rollout.val_kwargs.top_k": ACTOR,
    "actor_rollout_ref.rollout.val_kwargs.do_sample": ACTOR,
    "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu": MICRO,
    "critic.enable": "config/test_validate.py::test_gae_needs_critic_and_critic_needs_gae",
    "critic.model.path": CRITIC,
    "critic.model.enable_gradient_checkpointing": MICRO,
    "critic.optim.lr": CRITIC,
    "critic.optim.lr_warmup_steps": CRITIC,
    "critic.optim.lr_warmup_steps_ratio": CRITIC,
    "critic.optim.total_training_steps": CRITIC,
    "critic.optim.weight_decay": CRITIC,
    "critic.optim.betas": CRITIC,
    "critic.optim.eps": CRITIC,
    "critic.optim.clip_grad": CRITIC,
    "critic.optim.lr_scheduler_type": CRITIC,
    "critic.optim.min_lr_ratio": CRITIC,
    "critic.optim.num_cycles": CRITIC,
    "critic.ppo_mini_batch_size": CRITIC,
    "critic.ppo_micro_batch_size_per_gpu": CRITIC,
    "critic.use_dynamic_bsz": MICRO,
    "critic.ppo_max_token_len_per_gpu": MICRO,
    "critic.ppo_epochs": CRITIC,
    "critic.shuffle": CRITIC,
    "critic.cliprange_value": CRITIC,
    "critic.loss_agg_mode": CRITIC,
    "critic.grad_clip": CRITIC,
    "algorithm.adv_estimator": CRITIC,
    "algorithm.norm_adv_by_std_in_grpo": ACTOR,
    "algorithm.gamma": CRITIC,
    "algorithm.lam": CRITIC,
    "algorithm.use_kl_in_reward": ACTOR,
    "algorithm.kl_penalty": KL,
    "algorithm.kl_ctrl.type": KL,
    "algorithm.kl_ctrl.kl_coef": KL,
    "algorithm.kl_ctrl.horizon": KL,
    "algorithm.kl_ctrl.target_kl": KL,
    "reward_model.reward_manager": REWARD,
    "reward_model.on_error": REWARD,
    "reward_model.timeout_s": _WIRING + "test_reward_timeout_reaches_the_manager",
    "reward_model.max_error_fraction": _WIRING + "test_reward_timeout_reaches_the_manager",
    "reward_model.overlong_buffer.enable": _KEYS
    + "test_dapo_manager_applies_the_overlong_penalty_only_when_enabled",
    "reward_model.overlong_buffer.len": REWARD,
    "reward_model.overlong_buffer.penalty_factor": REWARD,
    "reward_model.overlong_buffer.log": DUMPS,
    "reward_model.overlong_buffer.max_resp_len": REWARD,
    "custom_reward_function.path": REWARD,
    "custom_reward_function.name": REWARD,
    "trainer.total_epochs": ACTOR,
    "trainer.total_training_steps": END_TO_END,
    "trainer.project_name": INHERIT,
    "trainer.experiment_name": INHERIT,
    "trainer.logger": ACTOR,
    "trainer.log_val_generations": DUMPS,
    "trainer.rollout_data_dir": DUMPS,
    "trainer.validation_data_dir": DUMPS,
    "trainer.test_freq": "trainer/test_resume.py::test_resume_reproduces_the_uninterrupted_run_bit_for_bit",
    "trainer.save_freq": DUMPS,
    "algorithm.filter_groups.enable": DYNAMIC_SAMPLING,
    "algorithm.filter_groups.metric": DYNAMIC_SAMPLING,
    "algorithm.filter_groups.max_num_gen_batches": DYNAMIC_SAMPLING,
    "trainer.max_nonfinite_steps": (
        "trainer/test_nonfinite.py::test_max_nonfinite_steps_in_a_row_stop_the_run_with_a_checkpoint"
    ),
    "trainer.save_every_minutes": (
        "trainer/test_stopping.py::test_save_every_minutes_saves_after_every_step_once_due"
    ),
    "trainer.val_before_train": VAL_ONLY,
    "trainer.val_only": VAL_ONLY,
    "trainer.resume_mode": "trainer/test_checkpoint.py::test_resume_modes",
    "trainer.resume_from_path": "trainer/test_checkpoint.py::test_resume_modes",
    "trainer.default_local_dir": END_TO_END,
    "trainer.max_actor_ckpt_to_keep": DUMPS,
    "trainer.seed": INHERIT,
    "trainer.device": ACTOR,
    "trainer.cpu_threads": ACTOR,
    "trainer.export_hf": "trainer/test_checkpoint.py::test_export_hf_loads_with_from_pretrained",
    "sapo.task.name": BUILTIN,
    "sapo.task.knobs": "data/test_tasks.py::test_arithmetic_knobs_change_the_problems",
    "sapo.task.num_train": BUILTIN,
    "sapo.task.num_val": BUILTIN,
    "sapo.task.seed": BUILTIN,
    "sapo.tiny_model.arch": BUILTIN,
    "sapo.tiny_model.hidden_size": BUILTIN,
    "sapo.tiny_model.intermediate_size": BUILTIN,
    "sapo.tiny_model.num_hidden_layers": BUILTIN,
    "sapo.tiny_model.num_attention_heads": BUILTIN,
    "sapo.warm_start.lr": BUILTIN,
    "sapo.warm_start.batch_size": BUILTIN,
    "sapo.warm_start.max_steps": BUILTIN,
    "sapo.warm_start.max_seconds": BUILTIN,
    "sapo.warm_start.eval_every": BUILTIN,
    "sapo.warm_start.target_accuracy": BUILTIN,
    "actor_rollout_ref.nccl_timeout": PROCESS_GROUP,
    "trainer.nnodes": LAUNCH,
    "trainer.n_gpus_per_node": LAUNCH,
    # the ref's and critic's fsdp_size must equal the actor's (validate), which builds the one device mesh
    **{f"{s}.fsdp_config.fsdp_size": PROCESS_GROUP for s in _FSDP_SECTIONS},
    **{f"{s}.fsdp_config.model_dtype": MODEL_DTYPE for s in _FSDP_SECTIONS},
    **{
        f"{s}.fsdp_config.{key}": SHARDING
        for s in _FSDP_SECTIONS
        for key in ("param_offload", "optimizer_offload", "reshard_after_forward", "mixed_precision")
    },
}

# key -> a value the trainer cannot honour; validate() must reject it with an error naming the key.
REJECTED_WHEN_CHANGED: dict[str, str] = {
    "actor_rollout_ref.model.trust_remote_code": "true",
    "actor_rollout_ref.model.override_config": "{attention_dropout: 0.1}",
    "actor_rollout_ref.actor.optim.optimizer": "SGD",
    "actor_rollout_ref.rollout.prompt_length": "100",
    "critic.model.tokenizer_path": "/some/other/tokenizer",
    "critic.model.trust_remote_code": "true",
    "critic.model.override_config": "{attention_dropout: 0.1}",
    "critic.optim.optimizer": "SGD",
    "trainer.max_critic_ckpt_to_keep": "3",
}


def test_every_key_is_classified_exactly_once():
    keys = set(all_keys())
    both = set(HONOURED) & set(REJECTED_WHEN_CHANGED)
    assert not both, f"classified twice: {sorted(both)}"
    missing = keys - set(HONOURED) - set(REJECTED_WHEN_CHANGED)
    assert not missing, (
        f"keys neither honoured nor rejected: {sorted(missing)}; make the trainer honour each (and add the "
        "test to HONOURED) or reject non-default values in sapo.config.value_checks"
    )
    stale = (set(HONOURED) | set(REJECTED_WHEN_CHANGED)) - keys
    assert not stale, f"not config keys (renamed or removed?): {sorted(stale)}"


@pytest.mark.parametrize("key", sorted(HONOURED))
def test_each_honoured_key_points_at_a_test_that_sets_it(key):
    path, _, name = HONOURED[key].partition("::")
    text = (TESTS / path).read_text()
    assert re.search(rf"^def {name}\(", text, re.MULTILINE), f"{HONOURED[key]} does not exist"
    conftest = TESTS / path.split("/")[0] / "conftest.py"
    context = text + (conftest.read_text() if conftest.exists() else "")
    leaf = key.rsplit(".", 1)[-1]
    assert key in context or leaf in context, f"{HONOURED[key]} never mentions {key}"


def test_the_default_config_has_no_rejected_value():
    validate(load_config(None, []))


@pytest.mark.parametrize("key", sorted(REJECTED_WHEN_CHANGED))
def test_each_rejected_key_names_itself_when_changed(key):
    config = load_config(None, [f"{key}={REJECTED_WHEN_CHANGED[key]}"])
    with pytest.raises(ConfigError) as error:
        validate(config)
    assert key in str(error.value)


def test_accepted_values_of_rejected_keys():
    # The critic may name the policy's own tokenizer (verl's default for critic.model.tokenizer_path), and
    # rollout.prompt_length may repeat data.max_prompt_length (a resolved config does).
    validate(load_config(None, ["actor_rollout_ref.model.path=/m", "critic.model.tokenizer_path=/m"]))
    validate(load_config(None, ["data.max_prompt_length=64", "actor_rollout_ref.rollout.prompt_length=64"]))
    validate(load_config(None, ["trainer.max_actor_ckpt_to_keep=2", "trainer.max_critic_ckpt_to_keep=2"]))


def test_tokenizer_directories_must_agree_and_overlong_log_needs_the_buffer():
    with pytest.raises(ConfigError, match="data.tokenizer"):
        validate(load_config(None, ["data.tokenizer=/a", "actor_rollout_ref.model.tokenizer_path=/b"]))
    with pytest.raises(ConfigError, match="overlong_buffer.log"):
        validate(load_config(None, ["reward_model.overlong_buffer.log=true"]))
