"""OmegaConf interpolation in YAML files and overrides, resolved by :func:`sapo.config.load_config`.

Every expected value below is worked out by hand from the YAML written in the test."""

import subprocess
import sys

import pytest

from sapo.config import load_config
from sapo.errors import ConfigError


def write(tmp_path, text: str):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_whole_value_reference_keeps_the_int_type(tmp_path):
    path = write(
        tmp_path,
        "data:\n  train_batch_size: 24\n  val_batch_size: ${data.train_batch_size}\n"
        "trainer:\n  test_freq: 7\n  save_freq: ${trainer.test_freq}\n",
    )
    config = load_config(path)
    assert config.data.val_batch_size == 24 and type(config.data.val_batch_size) is int
    assert config.trainer.save_freq == 7 and type(config.trainer.save_freq) is int
    assert config.provenance.explicit["trainer.save_freq"] == f"file {path}"


def test_reference_inside_text_and_from_an_override(tmp_path):
    path = write(tmp_path, "trainer:\n  experiment_name: run-${data.max_prompt_length}\n")
    config = load_config(path, ["data.max_prompt_length=300"])
    assert config.trainer.experiment_name == "run-300"  # sees the override, applied after the file


def test_oc_env_with_and_without_default(tmp_path, monkeypatch):
    monkeypatch.setenv("SAPO_TEST_LR", "3e-6")
    monkeypatch.setenv("SAPO_TEST_ROOT", "/scratch/me")
    monkeypatch.delenv("SAPO_TEST_UNSET", raising=False)
    path = write(
        tmp_path,
        "actor_rollout_ref:\n  actor:\n    optim:\n      lr: ${oc.env:SAPO_TEST_LR}\n"
        "data:\n  train_files: ${oc.env:SAPO_TEST_ROOT}/train.parquet\n"
        "  max_prompt_length: ${oc.env:SAPO_TEST_UNSET,128}\n",
    )
    config = load_config(path)
    assert config.actor_rollout_ref.actor.optim.lr == 3e-6  # text from the environment, parsed as float
    assert config.data.train_files == "/scratch/me/train.parquet"
    assert config.data.max_prompt_length == 128
    unset = r"data.val_files: .*SAPO_TEST_UNSET is not set.*oc.env:SAPO_TEST_UNSET,DEFAULT"
    with pytest.raises(ConfigError, match=unset):
        load_config(None, ["data.val_files=${oc.env:SAPO_TEST_UNSET}"])


def test_oc_select_falls_back_only_when_the_key_is_missing(tmp_path):
    path = write(
        tmp_path,
        "trainer:\n  test_freq: 9\n"
        "  save_freq: ${oc.select:trainer.no_such_key,5}\n"
        "  total_epochs: ${oc.select:trainer.test_freq,5}\n"
        "  experiment_name: ${oc.select:trainer.missing,fallback}\n",
    )
    config = load_config(path)
    assert config.trainer.save_freq == 5
    assert config.trainer.total_epochs == 9
    assert config.trainer.experiment_name == "fallback"


def test_nested_reference_to_a_key_that_is_itself_an_interpolation(tmp_path):
    path = write(
        tmp_path,
        "trainer:\n  project_name: p-${trainer.experiment_name}\n  experiment_name: e${trainer.test_freq}\n"
        "  test_freq: 3\n  default_local_dir: /runs/${trainer.project_name}\n",
    )
    config = load_config(path)
    assert config.trainer.experiment_name == "e3"
    assert config.trainer.project_name == "p-e3"
    assert config.trainer.default_local_dir == "/runs/p-e3"


def test_verl_default_local_dir(tmp_path):
    path = write(
        tmp_path,
        "trainer:\n  project_name: verl_examples\n  experiment_name: gsm8k\n"
        "  default_local_dir: checkpoints/${trainer.project_name}/${trainer.experiment_name}\n",
    )
    assert load_config(path).trainer.default_local_dir == "checkpoints/verl_examples/gsm8k"


def test_unknown_reference_names_the_key_and_suggests_a_fix(tmp_path):
    path = write(tmp_path, "trainer:\n  save_freq: ${trainer.test_freqq}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert "trainer.save_freq: cannot resolve ${trainer.test_freqq}" in text
    assert "did you mean ${trainer.test_freq}?" in text
    assert f"(from file {path})" in text
    assert "Traceback" not in text and "full_key" not in text
    # a verl alias is not a node of the tree: the message gives the sapo key to refer to instead
    with pytest.raises(ConfigError, match=r"write \$\{reward_model.reward_manager\}"):
        load_config(None, ["trainer.experiment_name=${reward_model.reward_manager.name}"])


def test_reference_cycle_is_an_error_naming_both_keys(tmp_path):
    path = write(
        tmp_path,
        "trainer:\n  project_name: a/${trainer.experiment_name}\n"
        "  experiment_name: ${trainer.project_name}\n",
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert "trainer.project_name: 'a/${trainer.experiment_name}' is part of a reference cycle" in text
    assert "trainer.experiment_name: '${trainer.project_name}' is part of a reference cycle" in text


def test_resolved_value_of_the_wrong_type_and_bad_syntax_are_errors():
    with pytest.raises(ConfigError, match=r"data.train_batch_size: expected an integer, got 'sapo'"):
        load_config(None, ["data.train_batch_size=${trainer.project_name}"])
    bad_syntax = r"trainer.experiment_name: '\$\{trainer.seed' is not a valid interpolation"
    with pytest.raises(ConfigError, match=bad_syntax):
        load_config(None, ["trainer.experiment_name=${trainer.seed"])


def test_omegaconf_is_imported_only_for_configs_that_interpolate():
    code = (
        "import sys; from sapo.config import load_config; load_config(None, ['data.train_batch_size=4']); "
        "print('omegaconf' in sys.modules); load_config(None, ['trainer.save_freq=${trainer.test_freq}']); "
        "print('omegaconf' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True"]


def test_a_reference_in_text_to_a_key_still_null_is_an_error_not_the_text_none():
    # rollout.response_length is null until resolution fills it from data.max_response_length
    with pytest.raises(
        ConfigError, match="refers to actor_rollout_ref.rollout.response_length, which is null"
    ):
        load_config(None, ["trainer.experiment_name=run_${actor_rollout_ref.rollout.response_length}"])
    named = load_config(None, ["trainer.experiment_name=run_${data.max_response_length}"])
    assert named.trainer.experiment_name == "run_16"
    # a whole-value reference to an inherit null stays null, and resolution fills it as usual
    micro = "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu"
    config = load_config(
        None, ["actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4", f"{micro}=${{data.val_batch_size}}"]
    )
    assert config.actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu == 4
