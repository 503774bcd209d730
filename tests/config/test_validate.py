import pytest

from sapo.config import derived_quantities, effective_loss_agg_mode, load_config, training_schedule, validate
from sapo.errors import ConfigError


def cfg(*overrides):
    return load_config(None, list(overrides))


def test_default_config_is_valid():
    validate(cfg())


def test_mini_batch_larger_than_batch():
    config = cfg("data.train_batch_size=8", "actor_rollout_ref.actor.ppo_mini_batch_size=16")
    with pytest.raises(
        ConfigError, match="ppo_mini_batch_size=16 prompts is larger than data.train_batch_size=8 prompts"
    ):
        validate(config)


def test_batch_not_divisible_by_mini_batch_shows_the_division():
    config = cfg("data.train_batch_size=12", "actor_rollout_ref.actor.ppo_mini_batch_size=5")
    with pytest.raises(ConfigError, match=r"12 / 5 = 2.4.*e.g. 4 or 6"):
        validate(config)


def test_micro_batch_must_divide_mini_batch_times_n_per_process():
    # mini 4 prompts x n 6 = 24 sequences; over 2 processes 12 each; 5 does not divide 12
    config = cfg(
        "actor_rollout_ref.actor.ppo_mini_batch_size=4",
        "actor_rollout_ref.rollout.n=6",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=5",
    )
    with pytest.raises(ConfigError, match=r"ppo_mini_batch_size 4 x n 6 / 2 processes = 12 sequences"):
        validate(config, world_size=2)
    validate(
        cfg(
            "actor_rollout_ref.actor.ppo_mini_batch_size=4",
            "actor_rollout_ref.rollout.n=6",
            "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=6",
        ),
        world_size=2,
    )


@pytest.mark.parametrize("key", ["tau_pos", "tau_neg"])
@pytest.mark.parametrize("value", ["0", "-1.0"])
def test_non_positive_tau_rejected_for_sapo(key, value):
    with pytest.raises(ConfigError, match=f"actor_rollout_ref.actor.{key} must be > 0"):
        validate(cfg(f"actor_rollout_ref.actor.{key}={value}"))
    # a tau that SAPO never reads does not block another loss
    validate(
        cfg(f"actor_rollout_ref.actor.{key}={value}", "actor_rollout_ref.actor.policy_loss.loss_mode=vanilla")
    )


def test_gae_needs_critic_and_critic_needs_gae():
    validate(cfg("algorithm.adv_estimator=gae"))  # critic.enable null -> on for gae
    with pytest.raises(ConfigError, match="gae needs a value model"):
        validate(cfg("algorithm.adv_estimator=gae", "critic.enable=false"))
    with pytest.raises(ConfigError, match="does not use values"):
        validate(cfg("critic.enable=true"))


def test_group_estimator_needs_more_than_one_response():
    with pytest.raises(ConfigError, match="needs actor_rollout_ref.rollout.n >= 2"):
        validate(cfg("actor_rollout_ref.rollout.n=1"))


def test_unknown_registry_names_are_rejected_with_a_suggestion():
    config = cfg("actor_rollout_ref.actor.policy_loss.loss_mode=sapoo", "algorithm.adv_estimator=grpoo")
    with pytest.raises(ConfigError) as err:
        validate(config)  # the names come from the registries themselves
    assert "loss_mode='sapoo' is not a known name (did you mean 'sapo'?)" in str(err.value)
    assert "adv_estimator='grpoo' is not a known name (did you mean 'grpo'?)" in str(err.value)


def test_all_problems_reported_together():
    config = cfg(
        "actor_rollout_ref.rollout.name=sglang",
        "trainer.logger=[console,mlflow]",
        "trainer.resume_mode=resume_path",
        "actor_rollout_ref.actor.optim.lr=0",
    )
    with pytest.raises(ConfigError) as err:
        validate(config)
    text = str(err.value)
    for fragment in (
        "rollout.name='sglang' is not a known name; choose one of: hf, vllm",
        "'mlflow'",
        "resume_from_path",
        "optim.lr must be > 0",
    ):
        assert fragment in text


def test_greedy_validation_with_several_samples_rejected():
    with pytest.raises(ConfigError, match="4 identical greedy answers"):
        validate(cfg("actor_rollout_ref.rollout.val_kwargs.n=4"))
    validate(
        cfg(
            "actor_rollout_ref.rollout.val_kwargs.n=4",
            "actor_rollout_ref.rollout.val_kwargs.do_sample=true",
            "actor_rollout_ref.rollout.val_kwargs.temperature=1.0",
        )
    )


def test_effective_aggregation():
    assert effective_loss_agg_mode(cfg()) == "seq-mean-token-mean"  # sapo's default (the paper's)
    assert (
        effective_loss_agg_mode(cfg("actor_rollout_ref.actor.policy_loss.loss_mode=vanilla")) == "token-mean"
    )
    user = cfg("actor_rollout_ref.actor.loss_agg_mode=token-mean")
    assert effective_loss_agg_mode(user) == "token-mean"  # an explicit choice is honoured
    assert derived_quantities(user)["loss_agg_mode_source"] == "user"


def test_derived_quantities_by_hand():
    config = cfg(
        "data.train_batch_size=32",
        "actor_rollout_ref.rollout.n=4",
        "actor_rollout_ref.actor.ppo_mini_batch_size=8",
        "actor_rollout_ref.actor.ppo_epochs=2",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4",
        "data.max_prompt_length=100",
        "data.max_response_length=50",
    )
    d = derived_quantities(config, world_size=2)
    assert d["sequences_per_step"] == 32 * 4 == 128
    assert d["sequences_per_mini_batch"] == 8 * 4 == 32
    assert d["sequences_per_mini_batch_per_process"] == 32 // 2 == 16
    assert d["mini_batches_per_step"] == 32 // 8 == 4
    assert d["optimizer_steps_per_step"] == 4 * 2 == 8
    assert d["micro_batches_per_mini_batch"] == 16 // 4 == 4
    assert d["max_sequence_length"] == 150
    assert d["uses_reference_policy"] is False


def test_training_schedule_drops_last_partial_batch_and_sets_warmup():
    config = cfg(
        "data.train_batch_size=8",
        "trainer.total_epochs=3",
        "actor_rollout_ref.actor.optim.lr_warmup_steps_ratio=0.1",
    )
    s = training_schedule(config, train_dataset_size=100)
    assert s["steps_per_epoch"] == 100 // 8 == 12
    assert s["total_training_steps"] == 12 * 3 == 36
    assert s["lr_warmup_steps"] == int(0.1 * 36) == 3
    explicit = cfg("trainer.total_training_steps=5", "actor_rollout_ref.actor.optim.lr_warmup_steps=2")
    assert training_schedule(explicit, 100)["total_training_steps"] == 5
    assert training_schedule(explicit, 100)["lr_warmup_steps"] == 2
    with pytest.raises(ConfigError, match="fewer than data.train_batch_size"):
        training_schedule(config, train_dataset_size=7)


def test_startup_report_and_record(tmp_path):
    import json

    from sapo.config import record_startup

    config = cfg(
        "actor_rollout_ref.rollout.pipeline_model_parallel_size=1",
        "reward_model.reward_manager.name=naive",
        "data.train_batch_size=16",
    )
    text = record_startup(config, derived_quantities(config), tmp_path)
    assert "effective_loss_agg_mode" in text and "seq-mean-token-mean" in text
    assert "actor_rollout_ref.rollout.pipeline_model_parallel_size=1" in text.replace("'", "")
    assert "reward_model.reward_manager.name -> reward_model.reward_manager" in text
    # a default that differs from verl's and was not set is listed; one the user set is not
    assert "actor_rollout_ref.rollout.n = 8 (verl: 1)" in text
    assert "data.train_batch_size = " not in text
    assert load_config(tmp_path / "config.yaml").data.train_batch_size == 16
    assert json.loads((tmp_path / "derived.json").read_text())["sequences_per_step"] == 16 * 8
    assert (tmp_path / "startup.txt").read_text() == text


def test_dynamic_batch_token_budget_must_hold_one_sequence():
    config = cfg(
        "actor_rollout_ref.actor.use_dynamic_bsz=true",
        "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=600",
        "data.max_prompt_length=512",
        "data.max_response_length=128",
    )
    with pytest.raises(ConfigError, match=r"512 \+ response length 128 = 640\); raise it to at least 640"):
        validate(config)
    assert derived_quantities(config)["micro_batches_per_mini_batch"] == "dynamic"


def test_more_ranges():
    with pytest.raises(ConfigError) as err:
        validate(
            cfg(
                "trainer.total_training_steps=0",
                "trainer.max_actor_ckpt_to_keep=0",
                "actor_rollout_ref.rollout.val_kwargs.do_sample=true",
            )
        )
    text = str(err.value)
    assert "trainer.total_training_steps must be >= 1 or null" in text
    assert "trainer.max_actor_ckpt_to_keep must be >= 1 or null" in text
    assert (
        "val_kwargs.temperature must be > 0 when val_kwargs.do_sample=true" in text
    )  # default temperature 0


# Found by tests/fuzz (bad-input fuzzing); each once escaped as a hang, a crash or a late error.
def test_a_huge_batch_size_is_reported_at_once():
    # divisors_hint looped over every number up to the batch size: this override hung `sapo config`
    batch = 2**100
    overrides = [f"data.train_batch_size={batch}", "actor_rollout_ref.actor.ppo_mini_batch_size=12"]
    with pytest.raises(ConfigError) as err:
        validate(load_config(None, overrides))
    assert f"data.train_batch_size={batch} is not divisible by ppo_mini_batch_size=12" in str(err.value)
    # 2**100's divisors are the powers of two: 8 and 16 are the nearest to 12
    assert str(err.value).endswith("e.g. 8 or 16")


def test_the_divisor_hint_is_unchanged_for_ordinary_sizes():
    from sapo.config.world_checks import divisors_hint

    assert divisors_hint(12, 5) == "4 or 6"  # 12's divisors 1 2 3 4 6 12; 4 and 6 are 1 away from 5
    assert divisors_hint(7, 3) == "1 or 7"


@pytest.mark.parametrize(
    "override, named",
    [
        (
            "actor_rollout_ref.rollout.top_k=-5",
            "actor_rollout_ref.rollout.top_k must be >= 1, or -1 / 0 for off",
        ),
        (
            "actor_rollout_ref.rollout.val_kwargs.top_k=-2",
            "actor_rollout_ref.rollout.val_kwargs.top_k must be",
        ),
        # val_kwargs.do_sample is false by default: the temperature was not checked, but SamplingParams is
        (
            "actor_rollout_ref.rollout.val_kwargs.temperature=-1",
            "val_kwargs.temperature must be a finite number",
        ),
        (
            "actor_rollout_ref.rollout.temperature=inf",
            "actor_rollout_ref.rollout.temperature must be a finite",
        ),
        (  # -1 stayed -1 through resolve and reached SamplingParams as max_new_tokens
            "actor_rollout_ref.rollout.response_length=-1",
            "actor_rollout_ref.rollout.response_length must be >= 1 or null",
        ),
    ],
)
def test_sampling_keys_are_checked_as_the_rollout_checks_them(override, named):
    # these passed `sapo config` and failed only when the first SamplingParams was built
    with pytest.raises(ConfigError, match=named.replace("(", r"\(").replace(")", r"\)")):
        validate(load_config(None, [override]))


def test_a_huge_process_count_is_reported_at_once():
    # fsdp_problems listed the divisors of the world size by looping up to it: this hung `sapo config`
    size = 2**40
    overrides = [f"trainer.n_gpus_per_node={size}", "actor_rollout_ref.actor.fsdp_config.fsdp_size=3"]
    with pytest.raises(ConfigError) as err:
        validate(load_config(None, overrides), world_size=size)
    message = str(err.value)
    assert f"fsdp_size=3 must be -1 (shard over all {size} processes)" in message
    # trial division up to 10,000 finds 1, 2, 4, ..., 8192 and their partners 2**40 / d; the rest is "..."
    assert f"({', '.join(str(2**k) for k in [*range(14), *range(27, 41)])}, ...)" in message


def test_the_divisor_list_is_complete_for_ordinary_sizes():
    from sapo.config.world_checks import divisors_text

    assert divisors_text(12) == "1, 2, 3, 4, 6, 12"
    assert divisors_text(1) == "1"


def test_a_per_process_problem_says_where_the_process_count_comes_from():
    # found by tests/fuzz: trainer.nnodes=007 gave "cannot be split evenly over 7 processes", naming no key
    with pytest.raises(ConfigError) as err:
        validate(load_config(None, ["trainer.nnodes=7"]), world_size=7)
    assert str(err.value).endswith(
        "(the 7 processes: trainer.nnodes x trainer.n_gpus_per_node = 7 x 1, or the processes torchrun "
        "started / sapo config --world-size)"
    )
