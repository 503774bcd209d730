"""sapo.run_dir: the readers of a run directory, on files the trainer's own writers produced."""

import json

import torch

from sapo.config import load_config, record_startup
from sapo.config.validate import derived_quantities
from sapo.run_dir import (
    TRACKER_FILE,
    checkpoint_dir,
    checkpoint_step,
    latest_checkpoint,
    list_checkpoints,
    read_config,
    read_derived,
    read_metrics,
)
from sapo.trainer.checkpoint import save_checkpoint
from sapo.trainer.logging import MetricsLogger


def test_readers_return_what_the_writers_wrote(tmp_path):
    config = load_config(None, ["data.train_batch_size=8", "actor_rollout_ref.actor.ppo_mini_batch_size=4"])
    record_startup(config, derived_quantities(config), tmp_path)
    assert read_config(tmp_path)["data"]["train_batch_size"] == 8
    assert read_derived(tmp_path)["sequences_per_step"] == 8 * 8
    with MetricsLogger(tmp_path, loggers=[]) as logger:
        logger.log({"actor/pg_loss": 0.5}, step=1)
        logger.log({"actor/pg_loss": float("nan")}, step=2)
    records = read_metrics(tmp_path)  # the run directory or the file itself
    assert records == read_metrics(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["actor/pg_loss"]) for r in records] == [(1, 0.5), (2, "nan")]
    assert read_metrics(tmp_path / "nowhere") == []


def test_latest_checkpoint_follows_the_tracker_and_falls_back_to_the_newest_complete(tmp_path):
    model = torch.nn.Linear(2, 1)
    assert latest_checkpoint(tmp_path) is None
    for step in (2, 5):
        save_checkpoint(tmp_path, step, model=model, rng=False)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 5]
    assert (
        latest_checkpoint(tmp_path) == checkpoint_dir(tmp_path, 5)
        and checkpoint_step(checkpoint_dir(tmp_path, 5)) == 5
    )
    (tmp_path / TRACKER_FILE).write_text("2")  # the tracker wins while its checkpoint is complete
    assert latest_checkpoint(tmp_path) == checkpoint_dir(tmp_path, 2)
    (tmp_path / TRACKER_FILE).write_text("9")  # a tracker pointing at nothing: the newest complete one
    checkpoint_dir(tmp_path, 9).mkdir()  # an incomplete checkpoint (no meta.json) is never chosen
    assert latest_checkpoint(tmp_path) == checkpoint_dir(tmp_path, 5)
    assert json.loads((checkpoint_dir(tmp_path, 5) / "meta.json").read_text())["step"] == 5
