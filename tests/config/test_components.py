"""The registries carry what the config and the trainer need: a new loss, estimator or engine is one
definition (here, in the test), with no list to edit elsewhere; and each rule lives once."""

import re
from pathlib import Path

import pytest
import torch

from sapo.config import load_config, validate
from sapo.config.components import engine_settings, estimator_numbers, policy_loss_numbers
from sapo.core.advantages import (
    ADVANTAGE_ESTIMATOR_ENTRIES,
    ADVANTAGE_ESTIMATORS,
    register_advantage_estimator,
)
from sapo.core.loss_registry import (
    POLICY_LOSS_ENTRIES,
    POLICY_LOSSES,
    default_loss_agg_mode,
    finish_loss,
    prepare_inputs,
    register_policy_loss,
)
from sapo.errors import ConfigError
from sapo.rollout import ROLLOUT_ENGINES, make_rollout_engine, register_rollout_engine
from sapo.trainer.settings import actor_settings

DOCS = Path(__file__).resolve().parents[2] / "docs" / "algorithms.md"
LOSS = "actor_rollout_ref.actor.policy_loss.loss_mode"


def _docs_default_agg_modes() -> dict[str, str]:
    """loss_mode -> the last column of the policy-loss table in docs/algorithms.md."""
    rows = re.findall(r"^\| `(\w+)` \|.*\| `([a-z-]+)` \|$", DOCS.read_text(), flags=re.M)
    return dict(rows)


@pytest.mark.parametrize("loss_mode", sorted(POLICY_LOSS_ENTRIES))
def test_resolved_config_loss_and_docs_agree_on_the_default_aggregation(loss_mode):
    config = load_config(None, [f"{LOSS}={loss_mode}"])
    resolved = config.actor_rollout_ref.actor.loss_agg_mode
    assert resolved == POLICY_LOSS_ENTRIES[loss_mode].default_agg_mode
    assert resolved == default_loss_agg_mode(loss_mode, None)
    assert resolved == _docs_default_agg_modes()[loss_mode]
    assert actor_settings(config).loss.loss_agg_mode == resolved  # what the trainer aggregates with
    paper_sequence_mean = {"sapo", "gspo", "geo_mean"}  # SAPO, GSPO and GMPO papers: per-sequence means
    assert (resolved == "seq-mean-token-mean") == (loss_mode in paper_sequence_mean)


def test_an_explicit_aggregation_wins_over_the_loss_default():
    config = load_config(None, [f"{LOSS}=gspo", "actor_rollout_ref.actor.loss_agg_mode=token-mean"])
    assert actor_settings(config).loss.loss_agg_mode == "token-mean"


@pytest.fixture
def scaled_pg_loss():
    """A new loss, defined as a user would: its number `clip_ratio_c` is an existing actor key."""

    @register_policy_loss("test_scaled_pg", default_agg_mode="seq-mean-token-sum")
    def scaled_pg(old_log_prob, log_prob, advantages, response_mask, *, loss_agg_mode, clip_ratio_c=3.0,
                  not_a_config_key=0.5, rollout_is_weights=None, global_num_tokens=None,
                  global_num_seqs=None, loss_scale_factor=None):  # fmt: skip
        if not clip_ratio_c > 2:
            raise ConfigError(
                f"actor_rollout_ref.actor.clip_ratio_c must be > 2 for this loss (got {clip_ratio_c})"
            )
        old, new, adv, mask, is_w = prepare_inputs(old_log_prob, log_prob, advantages, response_mask)
        loss = finish_loss(-clip_ratio_c * adv * new, mask, is_w, loss_agg_mode)
        return loss, {}

    yield "test_scaled_pg"
    del POLICY_LOSSES["test_scaled_pg"], POLICY_LOSS_ENTRIES["test_scaled_pg"]


def test_a_new_loss_is_one_definition(scaled_pg_loss):
    config = load_config(None, [f"{LOSS}={scaled_pg_loss}", "actor_rollout_ref.actor.clip_ratio_c=4.0"])
    validate(config)
    assert config.actor_rollout_ref.actor.loss_agg_mode == "seq-mean-token-sum"  # its registered default
    # its number comes from the key of the same name; one without a key keeps the loss's own default
    assert policy_loss_numbers(config) == {"clip_ratio_c": 4.0}
    assert actor_settings(config).loss.loss_kwargs == {"clip_ratio_c": 4.0}
    # its own check runs at validation, before any compute, with the loss's message
    bad = load_config(None, [f"{LOSS}={scaled_pg_loss}", "actor_rollout_ref.actor.clip_ratio_c=1.5"])
    with pytest.raises(ConfigError, match=r"clip_ratio_c must be > 2 for this loss \(got 1.5\)"):
        validate(bad)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["actor_rollout_ref.actor.tau_neg=0"],
            r"actor_rollout_ref\.actor\.tau_neg must be > 0 \(got 0\.0\)",
        ),
        ([f"{LOSS}=vanilla", "actor_rollout_ref.actor.clip_ratio_c=1"], r"clip_ratio_c must be > 1"),
        ([f"{LOSS}=vanilla", "actor_rollout_ref.actor.clip_ratio_low=-0.1"], r"clip_ratio_low must be >= 0"),
        (
            [f"{LOSS}=clip_cov", "actor_rollout_ref.actor.policy_loss.clip_cov_ratio=0"],
            r"clip_cov_ratio must",
        ),
        ([f"{LOSS}=kl_cov", "actor_rollout_ref.actor.policy_loss.kl_cov_ratio=0"], r"kl_cov_ratio must"),
    ],
)
def test_each_loss_checks_its_own_numbers_at_validation(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(load_config(None, overrides))


def test_a_number_another_loss_uses_is_not_checked_for_this_one():
    # clip_ratio_c is vanilla's; sapo never reads it, so it cannot make a sapo run invalid
    validate(load_config(None, ["actor_rollout_ref.actor.clip_ratio_c=0.5"]))


@pytest.fixture
def group_estimator():
    @register_advantage_estimator("test_discounted_group", needs_group=True)
    def discounted_group(*, token_level_rewards, response_mask, index, gamma=1.0, epsilon=0.1):
        scores = token_level_rewards.sum(-1) * gamma  # [B]
        return scores[:, None] * response_mask, scores[:, None] * response_mask

    yield "test_discounted_group"
    del ADVANTAGE_ESTIMATORS["test_discounted_group"], ADVANTAGE_ESTIMATOR_ENTRIES["test_discounted_group"]


def test_a_new_estimator_is_one_definition(group_estimator):
    config = load_config(None, [f"algorithm.adv_estimator={group_estimator}", "algorithm.gamma=0.9"])
    validate(config)
    assert estimator_numbers(config) == {"gamma": 0.9}  # epsilon has no algorithm key: its own default
    with pytest.raises(ConfigError, match="needs actor_rollout_ref.rollout.n >= 2"):
        validate(
            load_config(None, [f"algorithm.adv_estimator={group_estimator}", "actor_rollout_ref.rollout.n=1"])
        )


class _RecordingEngine:
    def __init__(self, model, tokenizer, *, seed, enforce_eager):
        self.seed, self.enforce_eager = seed, enforce_eager


@pytest.fixture
def recording_engine():
    def check(settings):
        return (
            [] if settings["seed"] >= 0 else [f"trainer.seed={settings['seed']} must be >= 0 for this engine"]
        )

    register_rollout_engine(
        "test_recording",
        lambda: _RecordingEngine,
        settings={"seed": "trainer.seed", "enforce_eager": "actor_rollout_ref.rollout.enforce_eager"},
        check=check,
    )
    yield "test_recording"
    del ROLLOUT_ENGINES["test_recording"]


def test_a_new_engine_is_one_registration(recording_engine):
    overrides = [f"actor_rollout_ref.rollout.name={recording_engine}", "trainer.seed=7"]
    config = load_config(None, [*overrides, "actor_rollout_ref.rollout.enforce_eager=true"])
    validate(config)
    settings = engine_settings(config)
    assert settings == {"seed": 7, "enforce_eager": True}
    engine = make_rollout_engine(recording_engine, torch.nn.Linear(1, 1), None, **settings)
    assert (engine.seed, engine.enforce_eager) == (7, True)
    with pytest.raises(ConfigError, match="trainer.seed=-1 must be >= 0 for this engine"):
        validate(load_config(None, [f"actor_rollout_ref.rollout.name={recording_engine}", "trainer.seed=-1"]))


def test_the_vllm_engine_validates_its_own_keys():
    ok = load_config(None, ["actor_rollout_ref.rollout.name=vllm"])
    validate(ok)  # vLLM is imported only when the engine is built
    assert engine_settings(ok) == {
        "gpu_memory_utilization": 0.5,
        "max_model_len": None,
        "max_num_seqs": None,
        "max_num_batched_tokens": None,
        "enforce_eager": False,
        "enable_prefix_caching": True,
        "free_cache_engine": True,
        "tensor_model_parallel_size": 1,
        "seed": 1,
    }
    bad_len = load_config(
        None, ["actor_rollout_ref.rollout.name=vllm", "actor_rollout_ref.rollout.max_num_seqs=0"]
    )
    with pytest.raises(ConfigError, match="max_num_seqs=0 must be a positive integer"):
        validate(bad_len)
    bad = load_config(
        None, ["actor_rollout_ref.rollout.name=vllm", "actor_rollout_ref.rollout.gpu_memory_utilization=1.5"]
    )
    with pytest.raises(ConfigError, match=r"gpu_memory_utilization=1.5 must be in \(0, 1\]"):
        validate(bad)
    # the hf engine takes no config keys, so the same value does not concern it
    validate(load_config(None, ["actor_rollout_ref.rollout.gpu_memory_utilization=1.5"]))


@pytest.fixture
def value_estimator():
    @register_advantage_estimator("test_value_baseline", needs_values=True)
    def value_baseline(*, token_level_rewards, response_mask, values=None):
        advantages = (token_level_rewards - values) * response_mask  # [B, T]
        return advantages, token_level_rewards

    yield "test_value_baseline"
    del ADVANTAGE_ESTIMATORS["test_value_baseline"], ADVANTAGE_ESTIMATOR_ENTRIES["test_value_baseline"]


def test_an_estimator_that_needs_values_turns_the_critic_on(value_estimator):
    # critic.enable null: on exactly when the estimator reads values (gae, or this one), by its entry
    assert load_config(None, [f"algorithm.adv_estimator={value_estimator}"]).critic.enable is True
    assert load_config(None, ["algorithm.adv_estimator=gae"]).critic.enable is True
    assert load_config(None, ["algorithm.adv_estimator=rloo"]).critic.enable is False


@pytest.fixture
def fragile_loss():
    @register_policy_loss("test_fragile")
    def fragile(old_log_prob, log_prob, advantages, response_mask, *, loss_agg_mode, rollout_is_weights=None,
                global_num_tokens=None, global_num_seqs=None, loss_scale_factor=None):  # fmt: skip
        top_two = torch.topk(log_prob.flatten(), 2)  # a bug: needs two tokens
        return top_two.values.sum(), {}

    yield "test_fragile"
    del POLICY_LOSSES["test_fragile"], POLICY_LOSS_ENTRIES["test_fragile"]


def test_a_loss_that_crashes_on_the_probe_is_named_not_a_traceback(fragile_loss):
    with pytest.raises(
        ConfigError, match="policy loss 'test_fragile' failed on a one-token validation probe"
    ):
        validate(load_config(None, [f"{LOSS}={fragile_loss}"]))


def test_config_accepts_every_aggregation_mode_core_implements():
    from sapo.core.aggregation import LOSS_AGG_MODES

    for mode in LOSS_AGG_MODES:  # token-sum included
        validate(load_config(None, [f"actor_rollout_ref.actor.loss_agg_mode={mode}"]))
    with pytest.raises(ConfigError, match="loss_agg_mode='token_mean': choose one of token-mean"):
        validate(load_config(None, ["actor_rollout_ref.actor.loss_agg_mode=token_mean"]))


def test_importing_the_config_package_does_not_import_torch():
    # `sapo --help` and `sapo config --help` stay fast: the registries load when a config is resolved
    import subprocess
    import sys

    code = "import sys, sapo.cli, sapo.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
