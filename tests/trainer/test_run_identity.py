"""A run never picks up or destroys another run's files (sapo.trainer.run_identity): another run in the
same directory is refused before anything is written, a finished run says so, and temporary directories
a killed export or warm start left are removed."""

import hashlib
import os
import subprocess
import sys

import pytest

from sapo.cli import main
from sapo.config import load_config
from sapo.demo.warm_start import TEMP_PREFIX
from sapo.errors import ConfigError
from sapo.run_dir import remove_orphans
from sapo.trainer.run_identity import check_run_identity, record_run_identity


def _snapshot(run_dir):
    return {
        str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file()
    }


def _dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    return int(child.stdout)


def _first_run(tmp_path, tiny_qwen3, overrides_for):
    overrides = [
        *overrides_for(tiny_qwen3, tmp_path / "run"),
        "trainer.total_training_steps=1",
        "trainer.save_freq=1",
        "trainer.logger=[console]",
    ]
    assert main(["train", *overrides]) == 0
    return overrides


def test_another_run_in_the_same_directory_is_refused_before_writing(
    tmp_path, tiny_qwen3, tiny_qwen3_moe, overrides_for, capsys
):
    overrides = _first_run(tmp_path, tiny_qwen3, overrides_for)
    before = _snapshot(tmp_path / "run")
    capsys.readouterr()
    other_model = [o for o in overrides if not o.startswith("actor_rollout_ref.model.path=")]
    other_model.append(f"actor_rollout_ref.model.path={tiny_qwen3_moe}")
    assert main(["train", *other_model, "trainer.seed=7", "trainer.total_training_steps=2"]) == 2
    err = capsys.readouterr().err
    assert "holds the checkpoints of another run" in err and "Nothing was written" in err
    assert f'actor_rollout_ref.model.path: "{tiny_qwen3}" there, "{tiny_qwen3_moe}" now' in err
    assert "trainer.seed: 1 there, 7 now" in err
    assert "trainer.experiment_name=" in err and "trainer.resume_mode=disable" in err
    assert _snapshot(tmp_path / "run") == before  # not a byte changed
    # the same command with more steps is the same run: it resumes; resume_mode=disable replaces it
    assert main(["train", *overrides, "trainer.total_training_steps=2"]) == 0
    assert main(["train", *other_model, "trainer.resume_mode=disable"]) == 0


def test_re_running_a_finished_run_says_so_and_gives_its_result(tmp_path, tiny_qwen3, overrides_for, capsys):
    overrides = _first_run(tmp_path, tiny_qwen3, overrides_for)
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert main(["train", *overrides]) == 0
    out = capsys.readouterr().out
    assert "this run is already finished (step 1 of 1)" in out and "nothing was trained" in out
    assert "validation accuracy:" in out and "after 1 steps" in out  # its result, from its metrics
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == metrics


def test_temporary_directories_of_dead_writers_are_removed(tmp_path, tiny_qwen3, overrides_for):
    dead = _dead_pid()
    run_dir = tmp_path / "run"
    (run_dir / f".tmp_hf_model.{dead}").mkdir(parents=True)  # an export killed midway
    (run_dir / f".tmp_hf_model.{dead}" / "model.safetensors").write_bytes(b"half")
    _first_run(tmp_path, tiny_qwen3, overrides_for)
    assert not list(run_dir.glob(".tmp_*"))
    # the warm start's cache: a dead writer's directory goes, a live one's (this process) stays
    cache = tmp_path / "cache"
    (cache / f"{TEMP_PREFIX}{dead}_arithmetic_x1").mkdir(parents=True)
    (cache / f"{TEMP_PREFIX}{os.getpid()}_arithmetic_x2").mkdir()
    removed = remove_orphans(cache, TEMP_PREFIX)
    assert [p.name for p in removed] == [f"{TEMP_PREFIX}{dead}_arithmetic_x1"]
    assert (cache / f"{TEMP_PREFIX}{os.getpid()}_arithmetic_x2").is_dir()


def test_the_built_in_run_is_identified_by_its_task_model_and_seed(tmp_path):
    def config(*extra):
        return load_config(None, [f"trainer.default_local_dir={tmp_path}", *extra])

    (tmp_path / "global_step_1").mkdir(parents=True)
    (tmp_path / "global_step_1" / "meta.json").write_text("{}")  # a complete checkpoint to resume
    record_run_identity(config(), tmp_path)
    check_run_identity(config(), tmp_path)  # the same command
    check_run_identity(
        config("trainer.total_training_steps=5", "actor_rollout_ref.actor.optim.lr=1e-4"), tmp_path
    )
    for override, named in (
        ("sapo.task.name=countdown", "sapo.task"),
        ("sapo.tiny_model.hidden_size=64", "sapo.tiny_model"),
        ("trainer.seed=2", "trainer.seed: 1 there, 2 now"),
        ("actor_rollout_ref.actor.policy_loss.loss_mode=gspo", "loss_mode"),
    ):
        with pytest.raises(ConfigError, match=named):
            check_run_identity(config(override), tmp_path)
    check_run_identity(config("trainer.seed=2", "trainer.resume_mode=disable"), tmp_path)  # a fresh start
