"""The config tree: every supported key, its default and its help text, in one place.

The tree mirrors verl's ``ppo_trainer.yaml`` (key names and meanings), so a verl command line carries over.
Defaults are verl's except where marked with ``verl=`` in a field: those differ on purpose (SAPO as the
default loss, GRPO as the default estimator, and sizes small enough for the built-in task to finish on two
CPU cores). ``sapo train`` prints every such difference that the user did not set explicitly.

The ``sapo`` section is this project's own: the built-in task, tiny model and warm start that
``sapo train`` uses when no model or data is given.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sapo.config.builtin import SapoConfig
from sapo.config.fields import NO_VERL_DEFAULT, LoadReport, opt, section


# ----------------------------------------------------------------------------------------------- data
@dataclass
class DataConfig:
    train_files: str | list[str] | None = opt(
        None,
        "Training parquet/jsonl file(s) in verl's layout. null: the built-in task (sapo.task).",
        verl="~/data/rlhf/gsm8k/train.parquet",
        placeholder=True,
    )
    val_files: str | list[str] | None = opt(
        None,
        "Validation file(s). null: the built-in task's validation split when train_files is null, "
        "otherwise no validation.",
        verl="~/data/rlhf/gsm8k/test.parquet",
        placeholder=True,
    )
    tokenizer: str | None = opt(
        None,
        "Tokenizer directory. null: the model's own (model.path). One tokenizer renders prompts and drives "
        "generation, so it must agree with actor_rollout_ref.model.tokenizer_path when both are set.",
    )
    prompt_key: str = opt("prompt", "Column holding the chat messages (a list of {role, content}).")
    reward_fn_key: str = opt("data_source", "Column whose value selects the scoring function.")
    max_prompt_length: int = opt(512, "Longest prompt in tokens (after the chat template).")
    max_response_length: int = opt(16, "Most tokens generated per response.", verl=512)
    train_batch_size: int = opt(16, "Prompts per training step (each gets rollout.n responses).", verl=1024)
    val_batch_size: int | None = opt(None, "Prompts per validation generation batch. null: all at once.")
    train_max_samples: int = opt(-1, "Use at most this many training rows (-1: all).")
    val_max_samples: int = opt(-1, "Use at most this many validation rows (-1: all).")
    shuffle: bool = opt(True, "Shuffle training prompts each epoch (seeded, resumable).")
    seed: int | None = opt(None, "Seed of the prompt sampler. null: trainer.seed.")
    validation_shuffle: bool = opt(False, "Visit validation prompts in a seeded (data.seed) random order.")
    filter_overlong_prompts: bool = opt(
        False, "Drop prompts longer than max_prompt_length at load time instead of applying `truncation`."
    )
    truncation: str = opt("error", "Prompts over max_prompt_length: error | left | right.")
    on_bad_row: str = opt(
        "error",
        "A row with a missing field, wrong type or empty prompt: error (stop, naming file, row and field) | "
        "skip (drop it and log the count). (sapo key)",
        verl=NO_VERL_DEFAULT,
    )
    apply_chat_template_kwargs: dict = opt(
        {}, "Extra keyword arguments for tokenizer.apply_chat_template (e.g. enable_thinking: false)."
    )


# ------------------------------------------------------------------------------ actor_rollout_ref
@dataclass
class ModelConfig:
    path: str | None = opt(
        None,
        "Hugging Face model directory. null: build the tiny model (sapo.tiny_model).",
        verl="~/models/deepseek-llm-7b-chat",
        placeholder=True,
    )
    tokenizer_path: str | None = opt(None, "Tokenizer directory if not the model's (see data.tokenizer).")
    dtype: str = opt(
        "float32",
        "Parameter dtype for training: float32 | bfloat16 | float16. "
        "(sapo key; verl sets precision in fsdp_config.)",
        verl=NO_VERL_DEFAULT,
    )
    trust_remote_code: bool = opt(
        False, "Only false: models load with transformers' own classes (true is an error, not ignored)."
    )
    custom_chat_template: str | None = opt(None, "Jinja chat template replacing the tokenizer's.")
    override_config: dict = opt(
        {}, "Only {}: edit the model's config.json instead (a non-empty value is an error, not ignored)."
    )
    enable_gradient_checkpointing: bool = opt(
        False, "Recompute activations in backward to save memory.", verl=True
    )
    impl: str = opt(
        "auto",
        "Model implementation: native (sapo's pure-torch Llama/Qwen2/Qwen3, less memory, no transformers "
        "modeling import) | hf (transformers' AutoModelForCausalLM, any causal LM) | auto (native when it "
        "supports the checkpoint, else hf). (sapo key)",
        verl=NO_VERL_DEFAULT,
    )


@dataclass
class PolicyLossConfig:
    loss_mode: str = opt(
        "sapo",
        "Policy loss (verl names): sapo, vanilla (PPO clip), gspo, clip_cov, "
        "kl_cov, gpg, ... Checked against sapo.core's registry.",
        verl="vanilla",
    )
    clip_cov_ratio: float = opt(0.0002, "clip_cov: fraction of tokens whose gradient is clipped.")
    clip_cov_lb: float = opt(1.0, "clip_cov: lower bound of the covariance window.")
    clip_cov_ub: float = opt(5.0, "clip_cov: upper bound of the covariance window.")
    kl_cov_ratio: float = opt(0.0002, "kl_cov: fraction of tokens that get the KL penalty.")
    ppo_kl_coef: float = opt(0.1, "kl_cov: coefficient of that KL penalty.")


@dataclass
class OptimConfig:
    optimizer: str = opt("AdamW", "Optimizer. Only AdamW (torch's update, sapo.optim.adamw) is supported.")
    lr: float = opt(1.5e-4, "Peak learning rate.", verl=1e-6)
    lr_warmup_steps: int | None = opt(
        -1, "Linear warmup steps. -1/null: lr_warmup_steps_ratio x total steps."
    )
    lr_warmup_steps_ratio: float = opt(0.0, "Warmup as a fraction of total optimizer-schedule steps.")
    total_training_steps: int = opt(-1, "Schedule length. -1: filled in by the trainer (training steps).")
    weight_decay: float = opt(0.01, "AdamW decoupled weight decay.")
    betas: list[float] = opt([0.9, 0.999], "AdamW betas.")
    eps: float = opt(1e-8, "AdamW epsilon. (sapo key)", verl=NO_VERL_DEFAULT)
    clip_grad: float | None = opt(None, "verl's newer name for grad_clip; when set it wins.")
    lr_scheduler_type: str = opt("cosine", "constant | cosine (after warmup).", verl="constant")
    min_lr_ratio: float = opt(0.0, "cosine: final lr as a fraction of lr.")
    num_cycles: float = opt(0.5, "cosine: number of cosine cycles (0.5 = one half-wave down).")


@dataclass
class FsdpConfig:
    """verl's ``fsdp_config`` keys that FSDP2 honours when several processes train one model (see
    docs/distributed.md). verl's other ``fsdp_config`` keys (wrap_policy, forward_prefetch, offload_policy,
    ...) are accepted and ignored (sapo.config.verl_keys)."""

    param_offload: bool = opt(
        False,
        "Keep parameters, gradients and optimizer state in host memory between uses (FSDP2's "
        "CPUOffloadPolicy, which offloads all three together; GPU only).",
    )
    optimizer_offload: bool = opt(
        False,
        "Same switch as param_offload: FSDP2's CPUOffloadPolicy offloads parameters, gradients and optimizer "
        "state together, so either key turns it on.",
    )
    reshard_after_forward: bool = opt(
        True, "Free each layer's gathered parameters after its forward (false: keep them until the backward)."
    )
    fsdp_size: int = opt(
        -1,
        "Processes one copy of the model is sharded over. -1: all of them. k > 0: shard within groups of k "
        "processes and replicate across the groups (HSDP); k must divide the world size.",
    )
    model_dtype: str | None = opt(
        None,
        "dtype the sharded parameters are kept in: float32 | bfloat16 | float16 (fp32, bf16, fp16). "
        "null: actor_rollout_ref.model.dtype for the actor; the actor's model_dtype for ref and critic.",
    )
    mixed_precision: dict = opt(
        {},
        "FSDP2 MixedPrecisionPolicy: keys param_dtype (compute dtype of the gathered parameters), "
        "reduce_dtype (dtype gradients are reduced in), buffer_dtype (accepted; FSDP2 keeps buffers in "
        "model_dtype); values bf16 | bfloat16 | fp16 | float16 | fp32 | float32. "
        "E.g. {param_dtype: bf16, reduce_dtype: fp32}. {}: off (compute in model_dtype).",
    )


@dataclass
class ActorConfig:
    ppo_mini_batch_size: int = opt(
        8, "Prompts per mini-batch (x rollout.n sequences); one optimizer step each.", verl=256
    )
    ppo_micro_batch_size_per_gpu: int | None = opt(
        None, "Sequences per forward/backward pass per process. null: the whole per-process mini-batch."
    )
    use_dynamic_bsz: bool = opt(
        False,
        "Form micro-batches by token budget (ppo_max_token_len_per_gpu) "
        "instead of a sequence count. The gradient is the same either way.",
    )
    ppo_max_token_len_per_gpu: int = opt(16384, "Token budget of one micro-batch when use_dynamic_bsz.")
    ppo_epochs: int = opt(1, "Passes over each rollout batch.")
    shuffle: bool = opt(False, "Shuffle sequences before cutting mini-batches.")
    data_loader_seed: int | None = opt(None, "Seed of that shuffle. null: trainer.seed.", verl=42)
    policy_loss: PolicyLossConfig = section(PolicyLossConfig, "Policy-loss selection.")
    tau_pos: float = opt(1.0, "SAPO gate temperature for positive advantages (arXiv 2511.20347).")
    tau_neg: float = opt(1.05, "SAPO gate temperature for negative advantages (arXiv 2511.20347).")
    clip_ratio: float = opt(0.2, "PPO clip epsilon; set explicitly, also the default of _low and _high.")
    clip_ratio_low: float | None = opt(0.2, "Lower clip epsilon (null: clip_ratio).")
    clip_ratio_high: float | None = opt(0.2, "Upper clip epsilon (null: clip_ratio).")
    clip_ratio_c: float = opt(3.0, "Dual-clip constant for negative advantages (> 1).")
    loss_agg_mode: str | None = opt(
        None,
        "token-mean | seq-mean-token-sum | seq-mean-token-mean | seq-mean-token-sum-norm | token-sum. null: "
        "the loss's registered default (sapo, gspo, geo_mean: seq-mean-token-mean; others: token-mean).",
        verl="token-mean",
    )
    loss_scale_factor: float | None = opt(None, "seq-mean-token-sum-norm divisor. null: max_response_length.")
    entropy_coeff: float = opt(0.0, "Entropy bonus coefficient (loss -= coeff x entropy).")
    use_kl_loss: bool = opt(False, "Add a KL(policy || reference) term to the loss.")
    kl_loss_coef: float = opt(0.001, "Coefficient of that term.")
    kl_loss_type: str = opt("low_var_kl", "KL estimator: kl (k1) | abs | mse (k2) | low_var_kl (k3) | full.")
    grad_clip: float = opt(1.0, "Clip the global gradient norm to this (<= 0: no clipping).")
    optim: OptimConfig = section(OptimConfig, "Actor optimizer and schedule.")
    fsdp_config: FsdpConfig = section(FsdpConfig, "Sharding of the policy over several processes.")


@dataclass
class ValKwargsConfig:
    n: int = opt(1, "Responses per validation prompt (k of mean@k / pass@k).")
    temperature: float = opt(
        0.0, "Validation sampling temperature (used only when do_sample=true, as in verl)."
    )
    top_p: float = opt(1.0, "Validation nucleus sampling (do_sample=true only).")
    top_k: int = opt(-1, "Validation top-k, -1: off (do_sample=true only).")
    do_sample: bool = opt(False, "Sample at validation (false: greedy).")


@dataclass
class RolloutConfig:
    name: str = opt(
        "hf", "Generation engine: hf (transformers, default) | vllm (optional extra).", verl="??? (required)"
    )
    n: int = opt(8, "Responses per prompt (the GRPO group size).", verl=1)
    temperature: float = opt(1.0, "Sampling temperature.")
    top_p: float = opt(1.0, "Nucleus sampling.")
    top_k: int = opt(-1, "Top-k sampling (-1: off).")
    do_sample: bool = opt(True, "Sample (false: greedy).")
    prompt_length: int | None = opt(None, "null: data.max_prompt_length; any other value is an error.")
    response_length: int | None = opt(None, "null: data.max_response_length.")
    gpu_memory_utilization: float = opt(0.5, "vllm only: fraction of GPU memory for the engine.")
    enforce_eager: bool = opt(False, "vllm only: disable CUDA graphs.")
    max_model_len: int | None = opt(
        None, "vllm only: the engine's context length. null: the model's max_position_embeddings."
    )
    max_num_seqs: int | None = opt(None, "vllm only: sequences per engine step. null: vLLM's default.")
    max_num_batched_tokens: int | None = opt(
        None, "vllm only: tokens per engine step. null: vLLM's default.", verl=8192
    )
    enable_prefix_caching: bool = opt(True, "vllm only: reuse the KV of shared prompt prefixes.")
    tensor_model_parallel_size: int = opt(
        1,
        "vllm only: processes that share one engine, each holding 1/tp of its weights (consecutive "
        "ranks; must divide the process count). The group's prompts are generated together.",
        verl=2,
    )
    free_cache_engine: bool = opt(
        True,
        "vllm on GPU only: sleep mode, the engine frees its KV cache and offloads its weights while the "
        "trainer updates (no effect on CPU).",
    )
    log_prob_micro_batch_size_per_gpu: int | None = opt(
        None,
        "Sequences per forward pass when recomputing old_log_prob. null: ppo_micro_batch_size_per_gpu. "
        "With actor.use_dynamic_bsz the actor's token budget is used instead.",
    )
    calculate_log_probs: bool = opt(
        True,
        "Keep the rollout engine's log-probs of the sampled tokens (rollout_corr/* metrics; needed by "
        "algorithm.rollout_correction and max_logprob_gap).",
        verl=False,
    )
    max_logprob_gap: float | None = opt(
        None,
        "Stop the run when a step's mean |old_log_prob - rollout_log_prob| over valid tokens "
        "(rollout_corr/mean_abs_diff) exceeds this (stale engine weights, dtype mismatch). null: off. "
        "(sapo key)",
        verl=NO_VERL_DEFAULT,
    )
    val_kwargs: ValKwargsConfig = section(ValKwargsConfig, "Sampling for validation.")


@dataclass
class RefConfig:
    log_prob_micro_batch_size_per_gpu: int | None = opt(
        None,
        "Sequences per forward pass for ref_log_prob. null: ppo_micro_batch_size_per_gpu. With "
        "actor.use_dynamic_bsz the actor's token budget is used instead.",
    )
    fsdp_config: FsdpConfig = section(FsdpConfig, "Sharding of the reference model.")


@dataclass
class ActorRolloutRefConfig:
    model: ModelConfig = section(ModelConfig, "The policy model.")
    actor: ActorConfig = section(ActorConfig, "Policy update.")
    rollout: RolloutConfig = section(RolloutConfig, "Generation.")
    ref: RefConfig = section(RefConfig, "Reference policy (a frozen copy of the initial model).")
    nccl_timeout: int = opt(
        600,
        "Seconds: time-out of every collective (gloo and nccl); a rank that dies makes the others exit "
        "after at most this long.",
    )


# ------------------------------------------------------------------------------------------- critic
@dataclass
class CriticModelConfig:
    path: str | None = opt(
        None,
        "Value-model directory. null: actor_rollout_ref.model.path (a scalar head is added).",
        verl="~/models/deepseek-llm-7b-chat",
        placeholder=True,
    )
    tokenizer_path: str | None = opt(
        None, "null or the policy's tokenizer: the critic reads the policy's token ids (others are an error)."
    )
    trust_remote_code: bool = opt(False, "Only false (see actor_rollout_ref.model.trust_remote_code).")
    override_config: dict = opt({}, "Only {} (see actor_rollout_ref.model.override_config).")
    enable_gradient_checkpointing: bool = opt(False, "Recompute activations in backward.", verl=True)
    fsdp_config: FsdpConfig = section(FsdpConfig, "Sharding of the value model.")


@dataclass
class CriticOptimConfig(OptimConfig):
    lr: float = opt(1e-5, "Peak learning rate of the value model.")


@dataclass
class CriticConfig:
    enable: bool | None = opt(None, "Train a value model. null: on exactly when adv_estimator is gae.")
    model: CriticModelConfig = section(CriticModelConfig, "The value model.")
    optim: CriticOptimConfig = section(CriticOptimConfig, "Critic optimizer (as the actor's, lr 1e-5).")
    ppo_mini_batch_size: int | None = opt(None, "Prompts per critic mini-batch. null: the actor's.")
    ppo_micro_batch_size_per_gpu: int | None = opt(None, "Sequences per critic pass. null: the actor's.")
    use_dynamic_bsz: bool | None = opt(None, "null: the actor's.")
    ppo_max_token_len_per_gpu: int = opt(32768, "Token budget of one critic micro-batch (use_dynamic_bsz).")
    ppo_epochs: int | None = opt(None, "null: the actor's.")
    shuffle: bool | None = opt(None, "null: the actor's.")
    cliprange_value: float = opt(0.5, "Value clipping around the old values (PPO, arXiv 1707.06347).")
    loss_agg_mode: str | None = opt(None, "Value-loss aggregation. null: token-mean.")
    grad_clip: float = opt(1.0, "Gradient-norm clip for the critic.")


# -------------------------------------------------------------------------------------- algorithm
@dataclass
class KLControlConfig:
    type: str = opt("fixed", "fixed | adaptive (Ziegler et al., arXiv 1909.08593).")
    kl_coef: float = opt(0.001, "KL-in-reward coefficient (initial value when adaptive).")
    horizon: int = opt(10000, "adaptive: horizon of the proportional controller.")
    target_kl: float = opt(0.1, "adaptive: KL the controller steers towards.")


@dataclass
class RolloutCorrectionConfig:
    """verl's ``algorithm.rollout_correction`` (docs/rollout_correction.md)."""

    rollout_is: str | None = opt(
        None,
        "Truncated importance weights on the policy loss: null (off) | token (exp(old - rollout) per token, "
        "TIS) | sequence (exp of the sum over the sequence).",
    )
    rollout_is_threshold: float = opt(2.0, "Truncation C of the weights: min(w, C).")
    rollout_is_batch_normalize: bool = opt(
        False, "Divide the weights by their batch mean (over valid tokens, or sequences) so they average 1."
    )
    rollout_rs: str | None = opt(
        None,
        "Rejection (masks tokens / sequences out of the loss), comma-separated: token_k1/k2/k3, "
        "seq_sum_k1/k2/k3, seq_mean_k1/k2/k3, seq_max_k2/k3. null: off.",
    )
    rollout_rs_threshold: str | float | None = opt(
        None,
        "Bounds of rollout_rs, one or one per option (comma-separated): k2/k3 an upper bound; k1 ratio "
        "bounds lo_hi (one number hi: lo = 1/hi).",
    )
    bypass_mode: bool = opt(
        False,
        "old_log_prob := the rollout's log-probs (no old-policy forward). Unlike verl, the configured "
        "policy loss is kept (verl switches to its bypass PPO-clip / REINFORCE loss).",
    )


@dataclass
class FilterGroupsConfig:
    enable: bool = opt(
        False,
        "DAPO dynamic sampling (arXiv 2503.14476): drop prompt groups whose metric has zero variance and "
        "generate more until data.train_batch_size informative groups are collected.",
    )
    metric: str | None = opt(
        None,
        "Per-response value whose variance decides: acc (the reward's 'acc', else its score) | score | "
        "seq_reward | seq_final_reward | any key the reward function returns. null: acc.",
    )
    max_num_gen_batches: int = opt(
        0,
        "Generation rounds per step at most (0: no cap). At the cap the step trains on the informative "
        "groups it has (whole mini-batches), warns and counts it.",
    )


@dataclass
class AlgorithmConfig:
    adv_estimator: str = opt(
        "grpo",
        "Advantage estimator (verl names): grpo, gae, rloo, reinforce_plus_plus, "
        "remax, opo, grpo_passk, ... Checked against sapo.core's registry.",
        verl="gae",
    )
    norm_adv_by_std_in_grpo: bool = opt(
        True, "GRPO: divide by the group's std (false: Dr. GRPO, arXiv 2503.20783)."
    )
    gamma: float = opt(1.0, "Discount factor (gae, reinforce_plus_plus).")
    lam: float = opt(1.0, "GAE lambda.")
    use_kl_in_reward: bool = opt(False, "Subtract kl_coef x KL(policy || reference) from token rewards.")
    kl_penalty: str = opt("kl", "KL estimator for the reward penalty: kl | abs | mse | low_var_kl | full.")
    kl_ctrl: KLControlConfig = section(KLControlConfig, "KL-in-reward coefficient controller.")
    rollout_correction: RolloutCorrectionConfig = section(
        RolloutCorrectionConfig, "Correction for the rollout engine / trainer mismatch (TIS, MIS)."
    )
    filter_groups: FilterGroupsConfig = section(
        FilterGroupsConfig, "DAPO dynamic sampling: only prompt groups with differing rewards are trained on."
    )


# ----------------------------------------------------------------------------------------- rewards
@dataclass
class OverlongBufferConfig:
    enable: bool = opt(
        False,
        "DAPO overlong shaping (arXiv 2503.14476): penalise responses that enter the "
        "last `len` tokens before max_resp_len.",
    )
    len: int = opt(0, "Buffer length in tokens.")
    penalty_factor: float = opt(1.0, "Penalty at the very end of the buffer (linear ramp from 0).")
    log: bool = opt(False, "Log reward/overlong_reward/mean and reward/overlong/mean.")
    max_resp_len: int | None = opt(None, "Length the buffer ends at. null: data.max_response_length.")


@dataclass
class RewardModelConfig:
    reward_manager: str = opt("naive", "naive (score each response) | dapo (adds the overlong buffer).")
    on_error: str = opt(
        "raise",
        "A scoring function that raises, returns a non-number or NaN, or times out: raise (stop, naming the "
        "sample) | zero (score it 0, counted in reward/failures). (sapo key)",
        verl=NO_VERL_DEFAULT,
    )
    timeout_s: float | None = opt(
        30.0,
        "Seconds one call of a custom reward function may take (a hung call is killed and counts as a "
        "failure); enforced by running it in worker processes, about 0.03 ms per sample. The built-in "
        "scorers run in-process (bounded; math-verify has its own parsing timeout). null: no limit, "
        "in-process. (sapo key)",
        verl=NO_VERL_DEFAULT,
    )
    max_error_fraction: float = opt(
        0.5,
        "Stop the run when more than this fraction of a batch's reward calls fail, even with "
        "on_error=zero: a function that fails that often is broken for the data. 1: never. (sapo key)",
        verl=NO_VERL_DEFAULT,
    )
    overlong_buffer: OverlongBufferConfig = section(OverlongBufferConfig, "DAPO overlong buffer.")


@dataclass
class CustomRewardFunctionConfig:
    path: str | None = opt(None, "Python file defining the scoring function. null: built-in by data_source.")
    name: str = opt(
        "compute_score",
        "Function name in that file: f(data_source, solution_str, ground_truth, extra_info) -> float | dict.",
    )


# ------------------------------------------------------------------------------------------ trainer
@dataclass
class TrainerConfig:
    total_epochs: int = opt(
        2,
        "Passes over the training prompts (2: the built-in task's 9,600 prompts twice, 1200 steps).",
        verl=30,
    )
    total_training_steps: int | None = opt(None, "Stop after this many steps (null: total_epochs).")
    project_name: str = opt("sapo", "Project name (wandb project; run directory).", verl="verl_examples")
    experiment_name: str = opt("default", "Experiment name (wandb run name; run directory).", verl="gsm8k")
    logger: list[str] = opt(
        ["console"],
        "Metric sinks: console, tensorboard, wandb. metrics.jsonl is always written.",
        verl=["console", "wandb"],
    )
    log_val_generations: int = opt(
        0, "Validation samples to print per validation (also in <run_dir>/val_generations.jsonl)."
    )
    rollout_data_dir: str | None = opt(None, "Write each step's generations to <dir>/<step>.jsonl.")
    validation_data_dir: str | None = opt(None, "Write each validation's generations to <dir>/<step>.jsonl.")
    test_freq: int = opt(200, "Validate every N steps (<= 0: only at the end).", verl=-1)
    save_freq: int = opt(-1, "Checkpoint every N steps (<= 0: only at the end).")
    save_every_minutes: float | None = opt(
        30.0,
        "Also checkpoint when this many minutes have passed since the last save (null or <= 0: never), so a "
        "run killed without warning loses at most that much work. SIGTERM / SIGINT always save and stop.",
        verl=NO_VERL_DEFAULT,
    )
    max_nonfinite_steps: int | None = opt(
        5,
        "Stop the run, after saving a checkpoint, when this many steps in a row had a NaN / Inf (rewards, "
        "advantages, values, log-probs, loss or gradients; each such update is skipped). null: never stop. "
        "(sapo key)",
        verl=NO_VERL_DEFAULT,
    )
    val_before_train: bool = opt(True, "Validate once before the first step.")
    val_only: bool = opt(False, "Validate the current policy and exit (whatever val_before_train says).")
    resume_mode: str = opt("auto", "auto (latest checkpoint if any) | disable | resume_path.")
    resume_from_path: str | None = opt(None, "Checkpoint directory (global_step_N) for resume_path.")
    default_local_dir: str | None = opt(
        None, "Run directory. null: checkpoints/<project_name>/<experiment_name> (as verl)."
    )
    max_actor_ckpt_to_keep: int | None = opt(None, "Keep only the newest N checkpoints (null: all).")
    max_critic_ckpt_to_keep: int | None = opt(
        None, "null or max_actor_ckpt_to_keep: the critic shares the actor's checkpoint (others: error)."
    )
    seed: int = opt(
        1, "Seed of everything not seeded otherwise (model init, sampling, shuffles).", verl=NO_VERL_DEFAULT
    )
    device: str = opt("auto", "auto (cuda if available) | cuda | cpu.", verl="cuda")
    nnodes: int = opt(1, "Nodes. > 1: run torchrun on each node, see docs/distributed.md.")
    n_gpus_per_node: int = opt(
        1,
        "Processes per node, one per device (gloo processes on CPU). > 1 without torchrun: sapo train "
        "starts them itself. nnodes x n_gpus_per_node must equal torchrun's process count unless both are 1.",
        verl=8,
    )
    cpu_threads: int | None = opt(
        None,
        "torch intra-op threads (torch.set_num_threads). null: torch's default, one per core. Set 1 when "
        "other processes share the cores: with 2 threads and one core busy, each op waits for the "
        "descheduled thread and a step was measured 30x slower. (sapo key)",
        verl=NO_VERL_DEFAULT,
    )
    export_hf: bool = opt(
        True,
        "Export the final policy as a Hugging Face directory (run_dir/hf_model). (sapo key)",
        verl=NO_VERL_DEFAULT,
    )


# ------------------------------------------------------------------------------------------- root
@dataclass
class Config:
    data: DataConfig = section(DataConfig, "Datasets and prompt/response lengths.")
    actor_rollout_ref: ActorRolloutRefConfig = section(
        ActorRolloutRefConfig, "Policy, generation, reference."
    )
    critic: CriticConfig = section(CriticConfig, "Value model (gae only).")
    algorithm: AlgorithmConfig = section(AlgorithmConfig, "Advantages and KL in reward.")
    reward_model: RewardModelConfig = section(RewardModelConfig, "Reward manager.")
    custom_reward_function: CustomRewardFunctionConfig = section(
        CustomRewardFunctionConfig, "User scoring function."
    )
    trainer: TrainerConfig = section(TrainerConfig, "Loop, logging, checkpoints.")
    sapo: SapoConfig = section(SapoConfig, "This project's own keys: the built-in default run.")
    # Not a config key: what load_config saw (explicit keys, ignored keys, aliases). Never dumped.
    provenance: LoadReport = field(
        default_factory=lambda: LoadReport(), repr=False, compare=False, metadata={"internal": True}
    )
