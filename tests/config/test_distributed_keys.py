"""The keys of multi-process training: trainer.nnodes, trainer.n_gpus_per_node,
actor_rollout_ref.nccl_timeout and the fsdp_config sections (actor, ref, critic), in verl's places.

They load from verl command lines and YAML, are checked against the process count (check_world_size and
the per-process batch arithmetic of validate), and reach the trainer (the wiring tests at the end, which
test_key_coverage.py points at)."""

import types

import pytest
import torch

from sapo.config import derived_quantities, load_config, validate
from sapo.config.cli import add_arguments
from sapo.config.cli import run as config_run
from sapo.config.world_checks import check_world_size, configured_world_size
from sapo.errors import ConfigError

SECTIONS = (
    "actor_rollout_ref.actor.fsdp_config",
    "actor_rollout_ref.ref.fsdp_config",
    "critic.model.fsdp_config",
)


def cfg(*overrides):
    return load_config(None, list(overrides))


def fsdp(config, prefix):
    section = config
    for part in prefix.split("."):
        section = getattr(section, part)
    return section


# --------------------------------------------------------------------------------------------- loading
def test_defaults():
    config = cfg()
    assert (config.trainer.nnodes, config.trainer.n_gpus_per_node) == (1, 1)
    assert config.actor_rollout_ref.nccl_timeout == 600
    assert configured_world_size(config) == 1
    for prefix in SECTIONS:
        section = fsdp(config, prefix)
        assert section.param_offload is False and section.optimizer_offload is False
        assert section.reshard_after_forward is True and section.fsdp_size == -1
        assert section.mixed_precision == {}
        assert section.model_dtype == "float32"  # resolved: actor_rollout_ref.model.dtype


def test_model_dtype_inherits_the_model_dtype_unless_set():
    config = cfg(
        "actor_rollout_ref.model.dtype=bfloat16", "actor_rollout_ref.ref.fsdp_config.model_dtype=fp32"
    )
    assert config.actor_rollout_ref.actor.fsdp_config.model_dtype == "bfloat16"
    assert config.actor_rollout_ref.ref.fsdp_config.model_dtype == "fp32"
    assert config.critic.model.fsdp_config.model_dtype == "bfloat16"


def test_verl_dotted_overrides_load_into_fields_not_the_ignored_list():
    overrides = [
        "trainer.nnodes=2",
        "trainer.n_gpus_per_node=8",
        "actor_rollout_ref.nccl_timeout=1200",
        "+actor_rollout_ref.actor.fsdp_config.mixed_precision.param_dtype=bf16",
        "actor_rollout_ref.actor.fsdp_config.mixed_precision.reduce_dtype=fp32",
        "actor_rollout_ref.actor.fsdp_config.param_offload=True",
        "actor_rollout_ref.actor.fsdp_config.optimizer_offload=True",
        "actor_rollout_ref.actor.fsdp_config.reshard_after_forward=False",
        "actor_rollout_ref.actor.fsdp_config.fsdp_size=8",
        "actor_rollout_ref.ref.fsdp_config.param_offload=True",
        "actor_rollout_ref.ref.fsdp_config.model_dtype=bf16",
        "critic.model.fsdp_config.fsdp_size=8",
        # verl's other fsdp_config keys stay accepted and ignored
        "actor_rollout_ref.actor.fsdp_config.forward_prefetch=True",
        "actor_rollout_ref.actor.fsdp_config.wrap_policy.min_num_params=0",
        "actor_rollout_ref.actor.fsdp_config.offload_policy=False",
        "actor_rollout_ref.rollout.fsdp_config.fsdp_size=4",  # not a section of ours
        "critic.model.fsdp_config.forward_prefetch=True",
    ]
    config = cfg(*overrides)
    actor = config.actor_rollout_ref.actor.fsdp_config
    assert (config.trainer.nnodes, config.trainer.n_gpus_per_node) == (2, 8)
    assert configured_world_size(config) == 16
    assert config.actor_rollout_ref.nccl_timeout == 1200
    assert actor.mixed_precision == {"param_dtype": "bf16", "reduce_dtype": "fp32"}
    assert actor.param_offload and actor.optimizer_offload and not actor.reshard_after_forward
    assert actor.fsdp_size == 8 and config.critic.model.fsdp_config.fsdp_size == 8
    assert config.actor_rollout_ref.ref.fsdp_config.param_offload is True
    assert config.actor_rollout_ref.ref.fsdp_config.model_dtype == "bf16"
    assert sorted(key for key, _, _ in config.provenance.ignored) == [
        "actor_rollout_ref.actor.fsdp_config.forward_prefetch",
        "actor_rollout_ref.actor.fsdp_config.offload_policy",
        "actor_rollout_ref.actor.fsdp_config.wrap_policy.min_num_params",
        "actor_rollout_ref.rollout.fsdp_config.fsdp_size",
        "critic.model.fsdp_config.forward_prefetch",
    ]
    assert "trainer.nnodes" in config.provenance.explicit
    validate(config, world_size=16)


def test_yaml_sections_load(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "trainer:\n  nnodes: 1\n  n_gpus_per_node: 4\n"
        "actor_rollout_ref:\n  nccl_timeout: 60\n  actor:\n    fsdp_config:\n"
        "      param_offload: true\n      fsdp_size: 2\n      wrap_policy:\n        min_num_params: 0\n"
        "      mixed_precision:\n        param_dtype: bfloat16\n        reduce_dtype: float32\n"
        "        buffer_dtype: float32\n"
        "critic:\n  model:\n    fsdp_config:\n      model_dtype: bf16\n"
    )
    config = load_config(path)
    actor = config.actor_rollout_ref.actor.fsdp_config
    assert config.trainer.n_gpus_per_node == 4 and config.actor_rollout_ref.nccl_timeout == 60
    assert actor.param_offload is True and actor.fsdp_size == 2
    assert actor.mixed_precision == {
        "param_dtype": "bfloat16",
        "reduce_dtype": "float32",
        "buffer_dtype": "float32",
    }
    assert config.critic.model.fsdp_config.model_dtype == "bf16"
    assert [key for key, _, _ in config.provenance.ignored] == [
        "actor_rollout_ref.actor.fsdp_config.wrap_policy.min_num_params"
    ]
    validate(config, world_size=4)


def test_process_counts_must_be_integers():
    with pytest.raises(ConfigError, match="trainer.n_gpus_per_node: expected an integer"):
        cfg("trainer.n_gpus_per_node=eight")


# ------------------------------------------------------------------------------------ check_world_size
def test_check_world_size_accepts_matching_counts_and_both_keys_at_one():
    check_world_size(cfg(), 1)
    check_world_size(cfg(), 4)  # plain torchrun: both keys at 1 accept any process count
    check_world_size(cfg("trainer.n_gpus_per_node=4"), 4)
    check_world_size(cfg("trainer.nnodes=2", "trainer.n_gpus_per_node=2"), 4)
    check_world_size(cfg("trainer.nnodes=2"), 2)


def test_check_world_size_names_both_numbers_and_the_fix():
    with pytest.raises(ConfigError) as err:
        check_world_size(cfg("trainer.n_gpus_per_node=4"), 2)
    text = str(err.value)
    assert "2 processes were started but trainer.nnodes x trainer.n_gpus_per_node = 1 x 4 = 4" in text
    assert "torchrun --nnodes 1 --nproc_per_node 4" in text and "leave both keys at 1" in text
    with pytest.raises(ConfigError, match="= 2 x 4 = 8"):
        check_world_size(cfg("trainer.nnodes=2", "trainer.n_gpus_per_node=4"), 4)


@pytest.mark.parametrize("key", ["trainer.nnodes", "trainer.n_gpus_per_node"])
@pytest.mark.parametrize("value", [0, -2])
def test_check_world_size_rejects_counts_below_one(key, value):
    with pytest.raises(ConfigError, match=rf"{key} must be >= 1 \(got {value}\)"):
        check_world_size(cfg(f"{key}={value}"), 1)


@pytest.mark.parametrize("world_size", [0, -1])
def test_world_size_below_one_is_refused(world_size):
    with pytest.raises(ConfigError, match=rf"process count must be >= 1 \(got {world_size}\)"):
        check_world_size(cfg(), world_size)
    with pytest.raises(ConfigError, match="process count must be >= 1"):
        validate(cfg(), world_size=world_size)


# ------------------------------------------------------------------------ per-process batch arithmetic
def test_prompts_per_step_must_split_over_the_processes():
    # 6 prompts over 4 processes: 1.5 each; mini 2 prompts x n 8 = 16 sequences split fine
    config = cfg("data.train_batch_size=6", "actor_rollout_ref.actor.ppo_mini_batch_size=2")
    validate(config, world_size=2)
    with pytest.raises(ConfigError) as err:
        validate(config, world_size=4)
    assert "data.train_batch_size=6 prompts cannot be split evenly over 4 processes" in str(err.value)
    assert "use a multiple of 4" in str(err.value)


def test_actor_mini_batch_sequences_must_split_over_the_processes():
    # mini 2 prompts x n 3 = 6 sequences: splits over 2, not over 4
    config = cfg(
        "data.train_batch_size=8",
        "actor_rollout_ref.actor.ppo_mini_batch_size=2",
        "actor_rollout_ref.rollout.n=3",
    )
    validate(config, world_size=2)
    with pytest.raises(ConfigError) as err:
        validate(config, world_size=4)
    text = str(err.value)
    assert (
        "a mini-batch of 2 prompts x rollout.n=3 = 6 sequences cannot be split evenly over 4 processes"
        in text
    )
    assert "actor_rollout_ref.actor.ppo_mini_batch_size x actor_rollout_ref.rollout.n a multiple of 4" in text


def test_micro_batch_counts_sequences_per_process():
    # 8 prompts x n 8 = 64 sequences; 32 per process at 2, 16 at 4: micro 32 fits 2 processes only
    config = cfg("actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=32")
    validate(config, world_size=2)
    with pytest.raises(ConfigError, match=r"ppo_mini_batch_size 8 x n 8 / 4 processes = 16 sequences"):
        validate(config, world_size=4)


def test_critic_batches_are_checked_per_process():
    gae = ("algorithm.adv_estimator=gae", "actor_rollout_ref.rollout.n=1")
    validate(cfg(*gae, "critic.ppo_mini_batch_size=4"), world_size=4)
    with pytest.raises(ConfigError) as err:
        validate(cfg(*gae, "critic.ppo_mini_batch_size=2"), world_size=4)
    assert "critic: a mini-batch of 2 prompts x rollout.n=1 = 2 sequences" in str(err.value)
    assert "critic.ppo_mini_batch_size x actor_rollout_ref.rollout.n a multiple of 4" in str(err.value)
    with pytest.raises(
        ConfigError, match=r"critic.ppo_micro_batch_size_per_gpu=3 does not divide.*= 2 sequences"
    ):
        validate(
            cfg(*gae, "critic.ppo_mini_batch_size=8", "critic.ppo_micro_batch_size_per_gpu=3"), world_size=4
        )
    with pytest.raises(ConfigError, match=r"critic.ppo_mini_batch_size=3 \(16 / 3 = 5.33\)"):
        validate(cfg(*gae, "critic.ppo_mini_batch_size=3"))


def test_derived_quantities_per_process():
    config = cfg("trainer.n_gpus_per_node=4")
    d = derived_quantities(config, world_size=4)
    assert (d["world_size"], d["nnodes"], d["processes_per_node"]) == (4, 1, 4)
    assert d["prompts_per_step"] == 16 and d["prompts_per_step_per_process"] == 4
    assert d["sequences_per_step"] == 128 and d["sequences_per_step_per_process"] == 32
    assert d["sequences_per_mini_batch"] == 64 and d["sequences_per_mini_batch_per_process"] == 16
    d = derived_quantities(cfg("trainer.nnodes=2", "trainer.n_gpus_per_node=2"), world_size=4)
    assert (d["nnodes"], d["processes_per_node"]) == (2, 2)


# ------------------------------------------------------------------------------------ fsdp_config checks
@pytest.mark.parametrize("prefix", SECTIONS)
def test_fsdp_size_must_be_minus_one_or_a_divisor_of_the_world_size(prefix):
    everything = [
        "algorithm.adv_estimator=gae",
        "actor_rollout_ref.actor.use_kl_loss=true",
    ]  # every model built
    sizes = [f"{p}.fsdp_size=2" for p in SECTIONS]
    validate(cfg(*everything, *sizes), world_size=4)
    validate(cfg(*everything, *(s.replace("=2", "=4") for s in sizes)), world_size=4)
    for bad in (3, 0, -2, 8):
        with pytest.raises(ConfigError) as err:
            validate(cfg(*everything, f"{prefix}.fsdp_size={bad}"), world_size=4)
        assert f"{prefix}.fsdp_size={bad} must be -1 (shard over all 4 processes) or a divisor" in str(
            err.value
        )
        assert "(1, 2, 4)" in str(err.value)


def test_models_that_are_built_share_the_actors_fsdp_size():
    with pytest.raises(ConfigError, match=r"critic.model.fsdp_config.fsdp_size=2 differs from"):
        validate(cfg("algorithm.adv_estimator=gae", "critic.model.fsdp_config.fsdp_size=2"), world_size=4)
    with pytest.raises(ConfigError, match=r"actor_rollout_ref.ref.fsdp_config.fsdp_size=2 differs from"):
        validate(
            cfg("actor_rollout_ref.actor.use_kl_loss=true", "actor_rollout_ref.ref.fsdp_config.fsdp_size=2"),
            world_size=4,
        )
    # a model that is not built (grpo: no critic; no KL: no reference) is not checked
    validate(
        cfg("critic.model.fsdp_config.fsdp_size=2", "actor_rollout_ref.ref.fsdp_config.fsdp_size=2"),
        world_size=4,
    )


@pytest.mark.parametrize("prefix", SECTIONS)
def test_mixed_precision_keys_and_dtypes_are_checked(prefix):
    everything = ["algorithm.adv_estimator=gae", "actor_rollout_ref.actor.use_kl_loss=true"]
    for value in ("{param_dtype: bf16, reduce_dtype: fp32, buffer_dtype: fp32}", "{param_dtype: BFloat16}",
                  "{param_dtype: float16, reduce_dtype: float32}", "{}"):  # fmt: skip
        validate(cfg(*everything, f"{prefix}.mixed_precision={value}"), world_size=2)
    with pytest.raises(ConfigError) as err:
        validate(cfg(*everything, f"{prefix}.mixed_precision={{param_dtype: fp8}}"), world_size=2)
    assert f"{prefix}.mixed_precision.param_dtype='fp8' is not a dtype: choose one of bf16, bfloat16" in str(
        err.value
    )
    with pytest.raises(ConfigError) as err:
        validate(cfg(*everything, f"{prefix}.mixed_precision.param_dtyp=bf16"), world_size=2)
    text = str(err.value)
    assert (
        f"{prefix}.mixed_precision.param_dtyp is not a mixed-precision key (did you mean param_dtype?)"
        in text
    )
    assert "use param_dtype, reduce_dtype, buffer_dtype" in text
    with pytest.raises(ConfigError, match=rf"{prefix}.model_dtype='int8' is not a dtype"):
        validate(cfg(f"{prefix}.model_dtype=int8"), world_size=2)


def test_mixed_precision_in_one_process_is_accepted_with_a_warning():
    # A run of one process is never wrapped with FSDP2; the key must not stop a multi-GPU run's command
    # line from resuming on one process, so the policy is dropped with a warning that says so.
    from sapo.distributed.fsdp import shard_model
    from sapo.distributed.world import World
    from sapo.trainer.settings import sharding

    config = cfg("actor_rollout_ref.actor.fsdp_config.mixed_precision={param_dtype: bf16}")
    validate(config)
    model = torch.nn.Linear(2, 2)
    with pytest.warns(UserWarning, match="mixed_precision is ignored in a run of one process"):
        wrapped = shard_model(
            model, World(), sharding(config.actor_rollout_ref.actor.fsdp_config), torch.device("cpu")
        )
    assert wrapped is model and model.weight.dtype == torch.float32


def test_nccl_timeout_must_be_positive():
    with pytest.raises(ConfigError, match=r"actor_rollout_ref.nccl_timeout must be > 0 \(seconds\)"):
        validate(cfg("actor_rollout_ref.nccl_timeout=0"))


# ------------------------------------------------------------------------------------------ sapo config
def config_cli(argv):
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return config_run(parser.parse_args(argv))


def test_sapo_config_world_size_two_prints_the_per_process_numbers(capsys):
    assert config_cli(["--world-size", "2"]) == 0
    out = capsys.readouterr().out
    derived = dict(
        line.split(None, 1)
        for line in out.split("== derived quantities ==")[1].split("\n\n")[0].splitlines()
        if line.strip()
    )
    assert derived["world_size"] == "2" and derived["nnodes"] == "1" and derived["processes_per_node"] == "2"
    assert derived["prompts_per_step_per_process"] == "8"  # 16 / 2
    assert derived["sequences_per_mini_batch_per_process"] == "32"  # 8 prompts x 8 / 2
    assert "trainer.n_gpus_per_node = 1 (verl: 8)" in out  # a default that differs from verl's
    with pytest.raises(ConfigError, match="cannot be split evenly over 3 processes"):
        config_cli(["--world-size", "3"])


def test_sapo_config_defaults_to_the_configured_process_count(capsys):
    assert config_cli(["trainer.nnodes=2", "trainer.n_gpus_per_node=2"]) == 0
    assert "world_size                            4" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="2 processes were started but"):
        config_cli(["--world-size", "2", "trainer.nnodes=2", "trainer.n_gpus_per_node=2"])


# ------------------------------------------------------------- wiring: the trainer honours every key
def test_fsdp_config_keys_reach_the_sharding_settings():
    from sapo.trainer.settings import sharding

    for prefix in SECTIONS:
        config = cfg(
            f"{prefix}.reshard_after_forward=false",
            f"{prefix}.mixed_precision={{param_dtype: bf16, reduce_dtype: fp32}}",
        )
        settings = sharding(fsdp(config, prefix))
        assert settings.reshard_after_forward is False and settings.offload is False
        assert (settings.param_dtype, settings.reduce_dtype) == ("bf16", "fp32")
        # FSDP2 has one CPUOffloadPolicy: either verl key turns it on
        for key in ("param_offload", "optimizer_offload"):
            assert sharding(fsdp(cfg(f"{prefix}.{key}=true"), prefix)).offload is True
        assert sharding(fsdp(cfg(), prefix)).reshard_after_forward is True


def test_model_dtype_is_the_dtype_each_model_is_built_in(tmp_path):
    from sapo.distributed.world import World
    from sapo.models.tiny import TinyModelSpec, build_tiny_model
    from sapo.trainer import run as run_module
    from sapo.trainer.setup import build_models

    spec = TinyModelSpec(arch="qwen3", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, head_dim=16)  # fmt: skip
    path = build_tiny_model(tmp_path / "tiny", spec)
    config = cfg(
        f"actor_rollout_ref.model.path={path}",
        "actor_rollout_ref.actor.fsdp_config.model_dtype=bfloat16",
        "actor_rollout_ref.ref.fsdp_config.model_dtype=float16",
        "critic.model.fsdp_config.model_dtype=bf16",
        "algorithm.adv_estimator=gae",
    )
    models = build_models(config, torch.device("cpu"), needs_reference=True, world=World())
    assert next(models.policy.parameters()).dtype == torch.bfloat16
    assert next(models.reference.parameters()).dtype == torch.float16
    run = types.SimpleNamespace(config=config, device=torch.device("cpu"), world=World())
    run_module._attach_critic(run, models, total_steps=1)
    assert {p.dtype for p in run.critic.parameters()} == {torch.bfloat16}


class _Stop(Exception):
    pass


def test_nccl_timeout_and_fsdp_size_reach_the_process_group(monkeypatch):
    from sapo.trainer import run as run_module

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    calls = []

    def recording(device, timeout_s, fsdp_size=-1):
        calls.append((timeout_s, fsdp_size))
        raise _Stop

    monkeypatch.setattr(run_module, "init_world", recording)
    config = cfg("actor_rollout_ref.nccl_timeout=123", "actor_rollout_ref.actor.fsdp_config.fsdp_size=1",
                 "trainer.device=cpu")  # fmt: skip
    with pytest.raises(_Stop):
        run_module.start_run(config)
    assert calls == [(123, 1)]


def test_process_counts_start_the_processes_or_name_the_torchrun_command(monkeypatch, capsys):
    from sapo.cli import main
    from sapo.trainer import cli as train_cli

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    launched = []
    monkeypatch.setattr(train_cli, "launch_local", lambda n, worker, *args: launched.append((n, args)))
    assert main(["train", "trainer.n_gpus_per_node=2", "trainer.device=cpu"]) == 0
    assert launched == [(2, (None, ["trainer.n_gpus_per_node=2", "trainer.device=cpu"]))]
    assert main(["train", "trainer.nnodes=2", "trainer.n_gpus_per_node=2"]) == 2
    assert "torchrun --nnodes 2 --nproc_per_node 2" in capsys.readouterr().err
    assert len(launched) == 1
