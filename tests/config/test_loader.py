import pytest

from sapo.config import Config, all_keys, config_to_dict, dump_config, load_config
from sapo.errors import ConfigError


def test_defaults_are_the_documented_ones():
    config = load_config()
    actor = config.actor_rollout_ref.actor
    assert actor.policy_loss.loss_mode == "sapo"
    assert (actor.tau_pos, actor.tau_neg) == (1.0, 1.05)
    assert actor.loss_agg_mode == "seq-mean-token-mean"  # resolved: sapo's registered default
    assert config.algorithm.adv_estimator == "grpo"
    assert config.critic.optim.lr == 1e-5 and actor.optim.lr == 1.5e-4
    # resolution fills "inherit" nulls
    assert config.data.seed == config.trainer.seed == 1
    assert config.actor_rollout_ref.rollout.response_length == config.data.max_response_length
    assert config.trainer.default_local_dir == "checkpoints/sapo/default"
    assert config.critic.enable is False  # grpo: no value model


def test_typed_parsing_of_overrides():
    config = load_config(
        None,
        [
            "actor_rollout_ref.actor.optim.lr=3e-6",  # YAML 1.1 reads "3e-6" as text; the field says float
            "data.train_batch_size=16",
            "trainer.val_before_train=false",
            "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=null",
            "trainer.logger=[console,tensorboard]",
            "trainer.experiment_name=007",  # a str field keeps the text, leading zeros included
            "data.train_files=/tmp/a.parquet",
            "actor_rollout_ref.actor.optim.betas=[0.9,0.95]",
            "+data.apply_chat_template_kwargs.enable_thinking=false",
        ],
    )
    assert config.actor_rollout_ref.actor.optim.lr == 3e-6
    assert config.data.train_batch_size == 16
    assert config.trainer.val_before_train is False
    assert config.actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu is None
    assert config.trainer.logger == ["console", "tensorboard"]
    assert config.trainer.experiment_name == "007"
    assert config.data.train_files == "/tmp/a.parquet"
    assert config.actor_rollout_ref.actor.optim.betas == [0.9, 0.95]
    assert config.data.apply_chat_template_kwargs == {"enable_thinking": False}
    assert config.provenance.explicit["data.train_batch_size"] == "override 'data.train_batch_size=16'"


def test_yaml_file_then_overrides_win(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "data:\n  train_batch_size: 32\n  max_response_length: 64\n"
        "actor_rollout_ref:\n  actor:\n    tau_neg: 1.2\n    optim:\n      lr: 2.0e-5\n"
    )
    config = load_config(path, ["data.train_batch_size=64"])
    assert config.data.train_batch_size == 64  # override beats file
    assert config.data.max_response_length == 64  # from the file
    assert config.actor_rollout_ref.actor.tau_neg == 1.2
    assert config.actor_rollout_ref.actor.optim.lr == 2e-5


def test_unknown_keys_all_reported_with_close_matches():
    with pytest.raises(ConfigError) as err:
        load_config(
            None, ["actor_rollout_ref.actor.tau_poss=1", "algoritm.gamma=1", "trainer.loger=[console]"]
        )
    text = str(err.value)
    assert (
        "unknown key 'actor_rollout_ref.actor.tau_poss'" in text and "actor_rollout_ref.actor.tau_pos" in text
    )
    assert "unknown section 'algoritm' (did you mean 'algorithm'?)" in text
    assert "trainer.logger" in text


def test_unknown_key_in_yaml_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("trainer:\n  totl_epochs: 3\n")
    with pytest.raises(
        ConfigError,
        match=r"unknown key 'trainer.totl_epochs' \(from file .*bad.yaml\).*"
        r"trainer.total_epochs",
    ):
        load_config(path)


def test_bad_values_and_syntax_are_errors():
    with pytest.raises(ConfigError, match="data.train_batch_size: expected an integer, got 'many'"):
        load_config(None, ["data.train_batch_size=many"])
    with pytest.raises(ConfigError, match="expected true or false"):
        load_config(None, ["trainer.val_before_train=maybe"])
    with pytest.raises(ConfigError, match="must look like key=value"):
        load_config(None, ["data.train_batch_size"])
    with pytest.raises(ConfigError, match="is a section, not a key"):
        load_config(None, ["trainer=3"])
    with pytest.raises(ConfigError, match="null is not allowed"):
        load_config(None, ["actor_rollout_ref.actor.tau_pos=null"])


def test_ignored_keys_are_reported_and_algorithm_changing_values_are_not_ignored():
    config = load_config(
        None,
        [
            "actor_rollout_ref.rollout.pipeline_model_parallel_size=1",
            "+ray_init.num_cpus=8",
            "trainer.critic_warmup=0",
        ],
    )
    ignored = {key for key, _, _ in config.provenance.ignored}
    assert ignored == {
        "actor_rollout_ref.rollout.pipeline_model_parallel_size",
        "ray_init.num_cpus",
        "trainer.critic_warmup",
    }
    # the same key with a value that would change training is an error, not a silent no-op
    with pytest.raises(ConfigError, match="pipeline_model_parallel_size='4'.*accepts it only as 1"):
        load_config(None, ["actor_rollout_ref.rollout.pipeline_model_parallel_size=4"])
    with pytest.raises(ConfigError, match="trainer.critic_warmup=.*accepts it only as 0"):
        load_config(None, ["trainer.critic_warmup=5"])
    with pytest.raises(ConfigError, match="lora_rank.*accepts it only as 0"):
        load_config(None, ["actor_rollout_ref.model.lora_rank=8"])
    with pytest.raises(ConfigError, match="use_pf_ppo.*accepts it only as False"):
        load_config(None, ["algorithm.use_pf_ppo=True"])


def test_verl_aliases_map_to_sapo_keys():
    config = load_config(
        None,
        [
            "reward_model.reward_manager.name=dapo",
            "+reward_model.reward_kwargs.overlong_buffer_cfg.enable=True",
            "+reward_model.reward_kwargs.overlong_buffer_cfg.len=4",
            "actor_rollout_ref.actor.optim.warmup_style=cosine",
        ],
    )
    assert config.reward_model.reward_manager == "dapo"
    assert config.reward_model.overlong_buffer.enable is True and config.reward_model.overlong_buffer.len == 4
    assert config.actor_rollout_ref.actor.optim.lr_scheduler_type == "cosine"
    assert ("reward_model.reward_manager.name", "reward_model.reward_manager") in config.provenance.aliases


def test_dump_then_load_round_trips(tmp_path):
    config = load_config(
        None,
        [
            "data.train_batch_size=32",
            "actor_rollout_ref.actor.optim.lr=5e-6",
            "data.train_files=[a.parquet,b.parquet]",
            "trainer.total_training_steps=7",
        ],
    )
    path = dump_config(config, tmp_path / "config.yaml")
    again = load_config(path)
    assert config_to_dict(again) == config_to_dict(config)
    assert config_to_dict(load_config()) != config_to_dict(config)


def test_every_key_has_help_text():
    import dataclasses
    import typing

    seen = []

    def walk(cls):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.metadata.get("internal"):
                continue
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"
            seen.append(f.name)
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name])

    walk(Config)
    assert len(all_keys()) > 120
    assert len(seen) > len(all_keys())  # sections were visited too


def test_interpolation_of_plain_references():
    config = load_config(
        None,
        [
            "trainer.project_name=p",
            "trainer.experiment_name=e",
            "trainer.default_local_dir=/runs/${trainer.project_name}/${trainer.experiment_name}",
        ],
    )
    assert config.trainer.default_local_dir == "/runs/p/e"
    # resolvers are supported since interpolation goes through OmegaConf; an unknown one is an error
    with pytest.raises(ConfigError, match=r"cannot resolve '\$\{nope:HOME\}/x'.*no resolver 'nope'"):
        load_config(None, ["trainer.default_local_dir=${nope:HOME}/x"])
    with pytest.raises(ConfigError, match=r"cannot resolve \$\{trainer.nope\}"):
        load_config(None, ["trainer.default_local_dir=${trainer.nope}"])


def test_yaml_nested_ignored_keys_and_empty_sections(tmp_path):
    path = tmp_path / "verl_style.yaml"
    path.write_text(
        "actor_rollout_ref:\n  actor:\n    fsdp_config:\n      param_offload: true\n"
        "      wrap_policy: {min_num_params: 0}\n  rollout:\n    engine_kwargs: {}\n"
        "ray_kwargs:\n  ray_init:\n    num_cpus: null\n"
    )
    config = load_config(path)
    assert config.actor_rollout_ref.actor.fsdp_config.param_offload is True  # a field now
    assert sorted(k for k, _, _ in config.provenance.ignored) == [
        "actor_rollout_ref.actor.fsdp_config.wrap_policy.min_num_params",
        "ray_kwargs.ray_init.num_cpus",
    ]


def test_close_matches_are_specific():
    from sapo.config.loader import close_matches

    assert close_matches("actor_rollout_ref.actor.tau_poss") == ["actor_rollout_ref.actor.tau_pos"]
    assert close_matches("actor_rolout_ref.actor.tau_pos") == ["actor_rollout_ref.actor.tau_pos"]
    assert close_matches("actor_rollout_ref.rollout.val_kwargs.temp") == [
        "actor_rollout_ref.rollout.val_kwargs.temperature"
    ]
    assert close_matches("actor_rollout_ref.actor.lora") == []  # nothing close: no noise


# Found by tests/fuzz (bad-input fuzzing).
def test_nan_is_refused_for_a_float_key():
    # clip_ratio=nan was accepted: NaN fails no `x > 0` style check
    with pytest.raises(
        ConfigError, match=r"actor_rollout_ref.actor.clip_ratio: expected a number, got 'nan'"
    ):
        load_config(None, ["actor_rollout_ref.actor.clip_ratio=nan"])


def test_an_integer_beyond_float_range_is_infinite_for_a_float_key():
    config = load_config(None, [f"actor_rollout_ref.actor.clip_ratio={10**400}"])
    assert config.actor_rollout_ref.actor.clip_ratio == float("inf")


def test_unparsable_yaml_inside_a_mapping_key_stays_text():
    # raised yaml's ParserError (a traceback from `sapo config`)
    config = load_config(None, ["data.apply_chat_template_kwargs.note=[unclosed"])
    assert config.data.apply_chat_template_kwargs["note"] == "[unclosed"
