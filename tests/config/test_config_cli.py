import argparse

import pytest

from sapo.config import cli, load_config
from sapo.errors import ConfigError


def run(argv):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli.run(parser.parse_args(argv))


def test_prints_report_and_dumps(tmp_path, capsys):
    out = tmp_path / "resolved.yaml"
    assert (
        run(
            [
                "--dump",
                str(out),
                "data.train_batch_size=16",
                "actor_rollout_ref.rollout.gpu_memory_utilization=0.7",
                "actor_rollout_ref.actor.fsdp_config.forward_prefetch=true",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "sequences_per_step" in text and "128" in text  # 16 prompts x n 8
    assert "fsdp_config.forward_prefetch" in text  # reported as ignored
    assert load_config(out).data.train_batch_size == 16


def test_world_size_is_checked_against_the_config_and_the_batch(capsys):
    with pytest.raises(ConfigError, match=r"process count must be >= 1 \(got 0\)"):
        run(["--world-size", "0"])
    assert run(["--world-size", "2"]) == 0
    assert "prompts_per_step_per_process" in capsys.readouterr().out
    assert run(["trainer.n_gpus_per_node=4"]) == 0  # the default world size is nnodes x n_gpus_per_node
    assert "world_size                            4" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="2 processes were started but trainer.nnodes x"):
        run(["--world-size", "2", "trainer.n_gpus_per_node=4"])
    with pytest.raises(ConfigError, match="cannot be split evenly over 3 processes"):
        run(["--world-size", "3"])
    with pytest.raises(ConfigError, match="fsdp_size=3 must be -1"):
        run(["--world-size", "2", "actor_rollout_ref.actor.fsdp_config.fsdp_size=3"])
    with pytest.raises(ConfigError, match="mixed_precision.param_dtype='fp8'"):
        run(["actor_rollout_ref.actor.fsdp_config.mixed_precision={param_dtype: fp8}"])


def test_invalid_configuration_raises_user_error():
    with pytest.raises(ConfigError, match="larger than data.train_batch_size"):
        run(["actor_rollout_ref.actor.ppo_mini_batch_size=64"])
