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
                "trainer.nnodes=1",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "sequences_per_step" in text and "128" in text  # 16 prompts x n 8
    assert "trainer.nnodes" in text  # reported as ignored
    assert load_config(out).data.train_batch_size == 16


def test_more_than_one_process_is_refused_until_distributed_training_lands():
    with pytest.raises(ConfigError, match=r"process count must be >= 1 \(got 0\)"):
        run(["--world-size", "0"])
    with pytest.raises(ConfigError, match="2 processes: sapo train runs as one process for now"):
        run(["--world-size", "2"])


def test_invalid_configuration_raises_user_error():
    with pytest.raises(ConfigError, match="larger than data.train_batch_size"):
        run(["actor_rollout_ref.actor.ppo_mini_batch_size=64"])
