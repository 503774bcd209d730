"""verl's own SAPO example command lines load unchanged except for the launcher.

Sources (verl-project/verl, formerly volcengine/verl):
  examples/sapo_trainer/run_qwen3_8b_fsdp.sh      (commit 1c83864025066f332624687b35324f8e55bee7c6)
  examples/sapo_trainer/run_qwen3_8b_sapo_npu.sh  (commit 1426de2814d8159bd27fb27841ed77dcaf1562d4)
The variable block and the launch command of each are reproduced below; `python3 -m
verl.trainer.main_ppo` is replaced by a printf that hands the overrides to this test exactly as bash expands
them (quotes, arrays and ${VAR:-default} included), which is what `sapo train` would receive.
"""

import shutil
import subprocess

import pytest

from sapo.config import derived_quantities, find_ignored, is_supported_key, load_config, validate
from sapo.config.world_checks import check_world_size, configured_world_size
from sapo.errors import ConfigError

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash to expand the script")

LAUNCHER = "printf '%s\\0'"

FSDP_SCRIPT = r"""
MODEL_PATH=${MODEL_PATH:-Qwen/Qwen3-8B}
NNODES=${NNODES:-1}
NGPUS_PER_NODE=${NGPUS_PER_NODE:-8}
tau_pos=${TAU_POS:-1.0}
tau_neg=${TAU_NEG:-1.05}
train_batch_size=${TRAIN_BATCH_SIZE:-256}
ppo_mini_batch_size=${PPO_MINI_BATCH_SIZE:-64}
max_prompt_length=${MAX_PROMPT_LENGTH:-2048}
max_response_length=${MAX_RESPONSE_LENGTH:-8192}
ppo_max_token_len_per_gpu=${PPO_MAX_TOKEN_LEN_PER_GPU:-20480}
actor_lr=${ACTOR_LR:-1e-6}
entropy_coeff=${ENTROPY_COEFF:-0}
rollout_tp=${ROLLOUT_TP:-2}
rollout_gpu_mem_util=${ROLLOUT_GPU_MEM_UTIL:-0.7}
rollout_n=${ROLLOUT_N:-16}
total_epochs=${TOTAL_EPOCHS:-10}
save_freq=${SAVE_FREQ:-100}
test_freq=${TEST_FREQ:--1}
project_name=${PROJECT_NAME:-verl_sapo_gsm8k_math}
experiment_name=${EXPERIMENT_NAME:-qwen3_8b_vllm_fsdp}
gsm8k_train=$HOME/data/gsm8k/train.parquet
gsm8k_test=$HOME/data/gsm8k/test.parquet
math_train=$HOME/data/math/train.parquet
math_test=$HOME/data/math/test.parquet
train_files="['$gsm8k_train', '$math_train']"
val_files="['$gsm8k_test', '$math_test']"
DATA=(
    algorithm.adv_estimator=grpo
    algorithm.use_kl_in_reward=False
    data.train_files="$train_files"
    data.val_files="$val_files"
    data.train_batch_size=${train_batch_size}
    data.max_prompt_length=${max_prompt_length}
    data.max_response_length=${max_response_length}
    data.filter_overlong_prompts=True
    data.truncation='error'
)
MODEL=(
    actor_rollout_ref.model.path="$MODEL_PATH"
    actor_rollout_ref.model.use_remove_padding=True
    actor_rollout_ref.model.enable_gradient_checkpointing=True
)
ACTOR=(
    actor_rollout_ref.actor.policy_loss.loss_mode=sapo
    actor_rollout_ref.actor.tau_pos=${tau_pos}
    actor_rollout_ref.actor.tau_neg=${tau_neg}
    actor_rollout_ref.actor.strategy=fsdp2
    actor_rollout_ref.actor.optim.lr=${actor_lr}
    actor_rollout_ref.actor.ppo_mini_batch_size=${ppo_mini_batch_size}
    actor_rollout_ref.actor.use_dynamic_bsz=True
    actor_rollout_ref.actor.ppo_max_token_len_per_gpu=${ppo_max_token_len_per_gpu}
    actor_rollout_ref.actor.use_kl_loss=False
    actor_rollout_ref.actor.entropy_coeff=${entropy_coeff}
    actor_rollout_ref.actor.fsdp_config.param_offload=True
    actor_rollout_ref.actor.fsdp_config.optimizer_offload=True
)
ROLLOUT=(
    actor_rollout_ref.rollout.name=vllm
    actor_rollout_ref.rollout.tensor_model_parallel_size=${rollout_tp}
    actor_rollout_ref.rollout.gpu_memory_utilization=${rollout_gpu_mem_util}
    actor_rollout_ref.rollout.n=${rollout_n}
    actor_rollout_ref.rollout.log_prob_use_dynamic_bsz=True
    actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu=${ppo_max_token_len_per_gpu}
)
REF=(
    actor_rollout_ref.ref.strategy=fsdp2
    actor_rollout_ref.ref.log_prob_use_dynamic_bsz=True
    actor_rollout_ref.ref.log_prob_max_token_len_per_gpu=${ppo_max_token_len_per_gpu}
    actor_rollout_ref.ref.fsdp_config.param_offload=True
)
TRAINER=(
    trainer.balance_batch=True
    trainer.critic_warmup=0
    trainer.logger='["console","wandb"]'
    trainer.project_name=${project_name}
    trainer.experiment_name=${experiment_name}
    trainer.n_gpus_per_node=${NGPUS_PER_NODE}
    trainer.nnodes=${NNODES}
    trainer.val_before_train=False
    trainer.save_freq=${save_freq}
    trainer.test_freq=${test_freq}
    trainer.total_epochs=${total_epochs}
)
EXTRA=(
)
LAUNCHER \
    "${DATA[@]}" \
    "${MODEL[@]}" \
    "${ACTOR[@]}" \
    "${ROLLOUT[@]}" \
    "${REF[@]}" \
    "${TRAINER[@]}" \
    "${EXTRA[@]}"
"""

NPU_SCRIPT = r"""
project_name='SAPO-Qwen3'
exp_name='SAPO-Qwen3-8B-npu'
gen_tp=2
RAY_DATA_HOME=${RAY_DATA_HOME:-"${HOME}/verl"}
MODEL_PATH=${MODEL_PATH:-"${RAY_DATA_HOME}/Qwen3-8B"}
CKPTS_DIR=${CKPTS_DIR:-"${RAY_DATA_HOME}/ckpts/${project_name}/${exp_name}"}
TRAIN_FILE=${TRAIN_FILE:-"${RAY_DATA_HOME}/dataset/dapo_processed/train.parquet"}
TEST_FILE=${TEST_FILE:-"${RAY_DATA_HOME}/dataset/aime-24_processed/train.parquet"}
use_kl_in_reward=False
kl_coef=0.001
use_kl_loss=False
kl_loss_coef=0.001
loss_mode=sapo
tau_pos=1.0
tau_neg=1.05
gae_gamma=1.0
gae_lam=0.95
LAUNCHER \
    algorithm.adv_estimator=grpo \
    algorithm.use_kl_in_reward=$use_kl_in_reward \
    algorithm.kl_ctrl.kl_coef=$kl_coef \
    algorithm.gamma=$gae_gamma \
    algorithm.lam=$gae_lam \
    data.train_files="${TRAIN_FILE}" \
    data.val_files="${TEST_FILE}" \
    data.train_batch_size=256 \
    data.max_prompt_length=512 \
    data.max_response_length=1024 \
    data.filter_overlong_prompts=True \
    data.filter_overlong_prompts_workers=64 \
    data.truncation='error' \
    actor_rollout_ref.model.path=${MODEL_PATH} \
    actor_rollout_ref.actor.optim.lr=1e-6 \
    actor_rollout_ref.model.use_remove_padding=True \
    actor_rollout_ref.actor.ppo_mini_batch_size=64 \
    actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=10 \
    actor_rollout_ref.actor.tau_pos=$tau_pos \
    actor_rollout_ref.actor.tau_neg=$tau_neg \
    actor_rollout_ref.actor.use_kl_loss=$use_kl_loss \
    actor_rollout_ref.actor.kl_loss_coef=$kl_loss_coef \
    actor_rollout_ref.actor.policy_loss.loss_mode=${loss_mode} \
    actor_rollout_ref.actor.use_torch_compile=False \
    actor_rollout_ref.ref.use_torch_compile=False \
    actor_rollout_ref.model.enable_gradient_checkpointing=True \
    actor_rollout_ref.actor.fsdp_config.param_offload=False \
    actor_rollout_ref.actor.fsdp_config.optimizer_offload=False \
    actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=32 \
    actor_rollout_ref.rollout.tensor_model_parallel_size=${gen_tp} \
    actor_rollout_ref.rollout.name=vllm \
    actor_rollout_ref.rollout.enforce_eager=True \
    actor_rollout_ref.rollout.gpu_memory_utilization=0.6 \
    actor_rollout_ref.rollout.n=5 \
    actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=16 \
    actor_rollout_ref.ref.fsdp_config.param_offload=True \
    trainer.critic_warmup=0 \
    trainer.logger='["console"]' \
    trainer.project_name="${project_name}" \
    trainer.experiment_name="${exp_name}" \
    trainer.n_gpus_per_node=8 \
    trainer.nnodes=1 \
    trainer.default_local_dir=${CKPTS_DIR} \
    trainer.resume_mode=auto \
    actor_rollout_ref.actor.fsdp_config.forward_prefetch=True \
    actor_rollout_ref.ref.fsdp_config.forward_prefetch=True \
    actor_rollout_ref.actor.entropy_from_logits_with_chunking=True \
    actor_rollout_ref.ref.entropy_from_logits_with_chunking=True \
    trainer.val_before_train=True \
    trainer.save_freq=-1 \
    trainer.test_freq=5 \
    trainer.total_epochs=15
"""


def expand(script: str) -> list[str]:
    env = {"HOME": "/home/user", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        ["bash", "-c", script.replace("LAUNCHER", LAUNCHER)], capture_output=True, env=env, check=True
    ).stdout
    return [arg.decode() for arg in out.split(b"\0") if arg]


def classify(args: list[str]) -> tuple[list[str], list[str]]:
    supported, ignored = [], []
    for arg in args:
        key = arg.split("=", 1)[0].lstrip("+")
        (supported if is_supported_key(key) else ignored).append(key)
    return supported, ignored


def test_multi_gpu_example_keeps_its_process_counts_and_rollout_tensor_parallelism():
    config = load_config(None, expand(FSDP_SCRIPT))
    assert (config.trainer.nnodes, config.trainer.n_gpus_per_node) == (1, 8)
    assert configured_world_size(config) == 8
    assert config.actor_rollout_ref.rollout.tensor_model_parallel_size == 2  # 4 engines of 2 ranks each
    validate(config, world_size=8)
    with pytest.raises(ConfigError, match="tensor_model_parallel_size=2 must divide the 3 processes"):
        validate(config, world_size=3)


def test_fsdp_example_loads_with_every_key_supported_or_ignored():
    args = expand(FSDP_SCRIPT)
    assert len(args) == 9 + 3 + 12 + 6 + 4 + 11  # DATA, MODEL, ACTOR, ROLLOUT, REF, TRAINER arrays
    config = load_config(None, args)
    actor = config.actor_rollout_ref.actor
    assert actor.policy_loss.loss_mode == "sapo"
    assert (actor.tau_pos, actor.tau_neg) == (1.0, 1.05)
    assert actor.optim.lr == 1e-6  # "1e-6" is not a YAML float; parsed by the field's type
    assert config.data.train_files == [
        "/home/user/data/gsm8k/train.parquet",
        "/home/user/data/math/train.parquet",
    ]
    assert config.trainer.logger == ["console", "wandb"]
    assert config.trainer.test_freq == -1 and config.actor_rollout_ref.rollout.n == 16
    assert actor.use_dynamic_bsz is True and actor.ppo_max_token_len_per_gpu == 20480
    # every key is either a field or on the documented ignored list, and the ignored ones are reported
    supported, ignored = classify(args)
    assert all(find_ignored(key) is not None for key in ignored)
    assert sorted(k for k, _, _ in config.provenance.ignored) == sorted(ignored)
    assert "actor_rollout_ref.rollout.tensor_model_parallel_size" in supported
    assert "actor_rollout_ref.actor.tau_pos" in supported
    # the per-process arithmetic for 8 GPUs, as the script's trainer.n_gpus_per_node says (what the
    # distributed trainer will check): 64 prompts x 16 = 1024 sequences / 8 = 128
    assert (config.trainer.nnodes, config.trainer.n_gpus_per_node) == (1, 8)
    # verl's fsdp_config keys that FSDP2 honours are fields
    assert actor.fsdp_config.param_offload is True and actor.fsdp_config.optimizer_offload is True
    assert config.actor_rollout_ref.ref.fsdp_config.param_offload is True
    assert "actor_rollout_ref.actor.fsdp_config.optimizer_offload" in supported
    check_world_size(config, 8)
    validate(config, world_size=8)
    derived = derived_quantities(config, world_size=8)
    assert derived["mini_batches_per_step"] == 256 // 64 == 4
    assert derived["sequences_per_mini_batch_per_process"] == 128
    assert derived["effective_loss_agg_mode"] == "seq-mean-token-mean"


def test_npu_example_loads_and_validates():
    args = expand(NPU_SCRIPT)
    config = load_config(None, args)
    assert config.trainer.default_local_dir == "/home/user/verl/ckpts/SAPO-Qwen3/SAPO-Qwen3-8B-npu"
    assert config.actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu == 32
    assert config.actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu == 16
    assert config.algorithm.lam == 0.95 and config.data.truncation == "error"
    # fsdp_config: offload keys are fields, forward_prefetch (FSDP1 tuning) is accepted and ignored
    assert config.actor_rollout_ref.actor.fsdp_config.param_offload is False
    assert config.actor_rollout_ref.ref.fsdp_config.param_offload is True
    ignored = {key for key, _, _ in config.provenance.ignored}
    assert {"actor_rollout_ref.actor.fsdp_config.forward_prefetch"} <= ignored
    assert not any(key.endswith("param_offload") for key in ignored)
    # 64 prompts x n 5 = 320 sequences per mini-batch / 8 GPUs = 40 per GPU; micro-batch 10 divides 40.
    validate(config, world_size=8)
    assert derived_quantities(config, world_size=8)["micro_batches_per_mini_batch"] == 40 // 10
    # on 3 processes the same mini-batch cannot be split: 320 / 3 is not whole
    with pytest.raises(Exception, match="320 sequences cannot be split evenly over 3 processes"):
        validate(config, world_size=3)
