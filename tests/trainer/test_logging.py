import io
import json
import sys

import numpy as np
import pytest
import torch

from sapo.errors import ConfigError, UserError
from sapo.run_dir import read_metrics
from sapo.trainer.logging import MetricsLogger, ProgressBar


def test_metrics_jsonl_one_object_per_step(tmp_path):
    with MetricsLogger(tmp_path, loggers=[]) as logger:
        logger.log({"actor/pg_loss": torch.tensor(0.5), "critic/score/mean": np.float32(0.25)}, step=1)
        logger.log({"actor/pg_loss": 0.125, "actor/grad_norm": float("nan")}, step=2)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"step": 1, "actor/pg_loss": 0.5, "critic/score/mean": 0.25},
        {"step": 2, "actor/pg_loss": 0.125, "actor/grad_norm": "nan"},  # strict JSON: no bare NaN
    ]


def test_resume_drops_steps_after_the_checkpoint(tmp_path):
    with MetricsLogger(tmp_path, loggers=[]) as logger:
        for step in (1, 2, 3, 4):
            logger.log({"m": step}, step=step)
    # the run stopped after step 4, its last checkpoint was step 2
    with MetricsLogger(tmp_path, loggers=[], resume_step=2) as logger:
        logger.log({"m": 30}, step=3)
    assert [(r["step"], r["m"]) for r in read_metrics(tmp_path / "metrics.jsonl")] == [
        (1, 1),
        (2, 2),
        (3, 30),
    ]


def test_tensorboard_event_files_read_back(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with MetricsLogger(tmp_path, loggers=["tensorboard"]) as logger:
        logger.log({"actor/pg_loss": 1.5, "val-core/addition/acc/mean@1": 0.25}, step=1)
        logger.log({"actor/pg_loss": -0.5}, step=2)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("actor/pg_loss")] == [(1, 1.5), (2, -0.5)]
    assert [(e.step, e.value) for e in events.Scalars("val-core/addition/acc/mean@1")] == [(1, 0.25)]


def test_a_resumed_run_replaces_the_killed_attempts_tensorboard_steps(tmp_path):
    """Killed after logging steps 1-3 with its checkpoint at 1: the resumed run logs 2 and 3 again, and
    TensorBoard shows each step once, with the resumed values; a fresh start hides every old step."""
    import time

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def scalars():
        events = EventAccumulator(str(tmp_path / "tensorboard"))
        events.Reload()
        return [(e.step, e.value) for e in events.Scalars("m")]

    with MetricsLogger(tmp_path, loggers=["tensorboard"]) as logger:
        for step in (1, 2, 3):
            logger.log({"m": float(step)}, step=step)
    time.sleep(1.1)  # event file names carry the second they were opened in: keep them apart
    with MetricsLogger(tmp_path, loggers=["tensorboard"], resume_step=1) as logger:
        logger.log({"m": 20.0}, step=2)
        logger.log({"m": 30.0}, step=3)
    assert scalars() == [(1, 1.0), (2, 20.0), (3, 30.0)]
    time.sleep(1.1)
    with MetricsLogger(tmp_path, loggers=["tensorboard"], resume_step=0) as logger:
        logger.log({"m": 7.0}, step=1)
    assert scalars() == [(1, 7.0)]


def test_wandb_offline_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    with MetricsLogger(
        tmp_path, loggers=["wandb"], project="p", experiment="e", config={"lr": 0.1}
    ) as logger:
        logger.log({"actor/pg_loss": 2.0}, step=1)
        logger.log({"actor/pg_loss": 3.5}, step=2)
        assert logger._wandb.summary["actor/pg_loss"] == 3.5
        assert logger._wandb.config["lr"] == 0.1
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    run_id = (tmp_path / "wandb_run_id.txt").read_text()
    assert runs[0].name.endswith(run_id)
    assert (runs[0] / f"run-{run_id}.wandb").is_file()  # the offline run file that `wandb sync` uploads


def test_missing_optional_packages_give_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(UserError, match=r"pip install 'sapo-rl\[wandb\]'"):
        MetricsLogger(tmp_path, loggers=["wandb"])
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(UserError, match="pip install tensorboard"):
        MetricsLogger(tmp_path, loggers=["tensorboard"])
    with pytest.raises(ConfigError, match="unknown sink"):
        MetricsLogger(tmp_path, loggers=["mlflow"])


def test_progress_bar_shows_key_metrics(tmp_path):
    out = io.StringIO()
    with MetricsLogger(tmp_path, loggers=["console"], total_steps=4, progress_file=out) as logger:
        logger.log({"critic/score/mean": 0.75, "actor/pg_loss": -0.125, "other": 1}, step=1)
        logger.log({"val-core/addition/acc/mean@1": 0.5}, step=2)
    text = out.getvalue()
    assert "score=0.75" in text and "pg_loss=-0.125" in text and "2/4" in text
    assert "step 2: val-core/addition/acc/mean@1=0.5" in text
    assert logger.progress is not None


def test_progress_bar_resumes_at_initial_step():
    out = io.StringIO()
    bar = ProgressBar(total=10, initial=6, file=out)
    bar.update(7, {"critic/score/mean": 1.0})
    bar.close()
    assert "7/10" in out.getvalue()


def test_non_numeric_metric_is_named(tmp_path):
    with MetricsLogger(tmp_path, loggers=[]) as logger, pytest.raises(TypeError, match="'bad': 'str'"):
        logger.log({"good": 1.0, "bad": "x"}, step=1)


def test_a_torn_last_line_does_not_break_the_resume(tmp_path):
    """A kill in the middle of a write leaves half a record; the resumed run drops it and goes on."""
    from sapo.trainer.logging import truncate_metrics

    path = tmp_path / "metrics.jsonl"
    records = [json.dumps({"step": s, "loss": 0.5 * s}) for s in (1, 2, 3)]
    path.write_text("\n".join(records) + '\n{"step": 4, "lo')
    truncate_metrics(path, after_step=2)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]
    path.write_text(records[0] + '\n{"step": 2, "lo')  # torn inside the resumed step itself
    truncate_metrics(path, after_step=2)
    assert path.read_text() == records[0] + "\n"


def test_read_metrics_leaves_out_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "x": 1.0}\n{"step": 2, "x": 2.0}\n{"step": 3, "x"')
    assert read_metrics(tmp_path) == [{"step": 1, "x": 1.0}, {"step": 2, "x": 2.0}]
    path.write_text('{"step": 1, "x"\n{"step": 2, "x": 2.0}\n')  # torn in the middle: not a kill, an error
    with pytest.raises(json.JSONDecodeError):
        read_metrics(tmp_path)
