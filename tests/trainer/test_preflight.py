"""``sapo config`` refuses what ``sapo train`` would refuse on this machine, with the same message, before
any compute; length limits are checked against the model's context, with fixes that fit."""

import importlib.util
import json

import pytest
import torch

from sapo.cli import main
from sapo.config import load_config
from sapo.errors import ConfigError, UserError
from sapo.rollout.base import check_prompts
from sapo.trainer.run import start_run


def _refused_alike(capsys, overrides, expected):
    """Both commands exit 2 naming ``expected``; train never reaches the warm start or the data."""
    assert main(["config", *overrides]) == 2
    config_err = capsys.readouterr().err
    assert main(["train", *overrides]) == 2
    captured = capsys.readouterr()
    assert expected in config_err and expected in captured.err, (config_err, captured.err)
    assert "warm start" not in captured.out and "Traceback" not in captured.err


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_a_missing_engine_is_refused_by_both_commands(capsys, tmp_path):
    _refused_alike(
        capsys,
        ["actor_rollout_ref.rollout.name=vllm", f"trainer.default_local_dir={tmp_path}"],
        "the vllm package is not installed",
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible")
def test_cuda_without_a_device_is_refused_by_both_commands(capsys, tmp_path):
    _refused_alike(
        capsys, ["trainer.device=cuda", f"trainer.default_local_dir={tmp_path}"], "no CUDA device is visible"
    )


def test_a_run_directory_that_is_a_file_is_refused_by_both_commands(capsys, tmp_path):
    (tmp_path / "taken").write_text("a file")
    _refused_alike(
        capsys, [f"trainer.default_local_dir={tmp_path / 'taken' / 'run'}"], "is a file): set trainer.default"
    )


def test_a_model_directory_without_weights_is_refused_by_both_commands(capsys, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama", "max_position_embeddings": 64}))
    overrides = [f"actor_rollout_ref.model.path={model}", f"trainer.default_local_dir={tmp_path / 'run'}"]
    _refused_alike(capsys, overrides, "has a config.json but no weights")


def test_a_response_length_that_fills_the_context_is_refused_by_both_commands(capsys, tmp_path):
    # the built-in model's context is 128 tokens: 512 would leave a negative room for the prompt
    _refused_alike(
        capsys,
        ["data.max_response_length=512", f"trainer.default_local_dir={tmp_path}"],
        "data.max_response_length=512 leaves no room for a prompt in the model's context of 128 tokens",
    )
    assert main(["config", "data.max_response_length=64"]) == 0  # the suggested value is accepted


def test_the_longest_prompt_is_checked_when_the_data_is_loaded(overrides_for, tiny_qwen3, tmp_path):
    overrides = overrides_for(tiny_qwen3, tmp_path / "run")  # the tiny model's context: 256 tokens
    with pytest.raises(ConfigError) as err:
        start_run(load_config(None, [*overrides, "data.max_response_length=250"]), quiet=True)
    message = str(err.value)
    longest = int(message.split("has ")[1].split(" tokens")[0])
    assert f"with data.max_response_length=250 that is {longest + 250} tokens" in message
    assert "data.max_prompt_length=6 with data.filter_overlong_prompts=true" in message
    assert f"data.max_response_length={256 - longest}" in message
    run = start_run(load_config(None, [*overrides, f"data.max_response_length={256 - longest}"]), quiet=True)
    run.close()  # the suggested fix starts


def test_generation_time_length_errors_never_suggest_a_negative_length():
    with pytest.raises(UserError) as err:
        check_prompts([[1, 2, 3]], vocab_size=10, max_new_tokens=12, context_length=10)
    assert "lower the response length to <= 7" in str(err.value) and "<= -" not in str(err.value)
    with pytest.raises(
        UserError, match=r"data.max_prompt_length <= 4.* or lower the response length to <= 1"
    ):
        check_prompts([[1] * 9], vocab_size=10, max_new_tokens=6, context_length=10)
