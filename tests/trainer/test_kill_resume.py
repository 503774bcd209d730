"""Runs killed with SIGKILL at random moments resume to exactly the uninterrupted result
(`benchmarks/kill_resume.py`, whose functions these tests use), and that benchmark's comparison catches a
difference in any of weights, optimizer state or metrics."""

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sapo.trainer import checkpoint as ckpt

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "kill_resume.py"


@pytest.fixture(scope="module")
def kill_resume():
    spec = importlib.util.spec_from_file_location("kill_resume", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules["kill_resume"] = module  # dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("kill_resume", None)


def fake_run(run_dir: Path, seed: int = 0) -> None:
    """A run directory as `sapo train` leaves it: two checkpoints, an export, metrics with timings."""
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    records = []
    for step in (1, 2):
        model(torch.randn(4, 3)).sum().backward()
        optimizer.step()
        extra = {"global_step": step}
        ckpt.save_checkpoint(run_dir, step, model=model, optimizer=optimizer, extra_state=extra)
        records.append({"step": step, "actor/pg_loss": 0.1 * step, "timing_s/step": 0.5 + step})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run_dir / "hf_model").mkdir()
    weights = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    save_file(weights, run_dir / "hf_model/model.safetensors")


def edit_metrics(run_dir: Path, edit) -> None:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    records = edit(records)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_the_comparison_ignores_timings_and_catches_every_other_difference(tmp_path, kill_resume):
    want, got = tmp_path / "want", tmp_path / "got"
    fake_run(want)
    fake_run(got)
    edit_metrics(got, lambda rs: [{**r, "timing_s/step": 9.0} for r in rs])  # timings may differ
    assert kill_resume.compare_runs(got, want) == []

    def changed(edit_run) -> list[str]:
        copy = tmp_path / f"copy_{len(list(tmp_path.iterdir()))}"
        shutil.copytree(got, copy)
        edit_run(copy)
        return kill_resume.compare_runs(copy, want)

    def bump_moment(run):
        state = torch.load(run / "global_step_2/optimizer.pt", weights_only=True)
        state["state"][0]["exp_avg"][0, 0] += 1e-7  # one value, slightly
        torch.save(state, run / "global_step_2/optimizer.pt")

    assert changed(bump_moment) == ["global_step_2.optimizer.pt.state.0.exp_avg: tensors differ"]
    other = tmp_path / "other"
    fake_run(other, seed=1)  # other weights everywhere
    assert "hf_model/model.safetensors.weight: tensors differ" in kill_resume.compare_runs(other, want)
    assert changed(lambda run: edit_metrics(run, lambda rs: [rs[0], rs[0], rs[1]])) == [
        "metrics steps [1, 1, 2] != [1, 2]"
    ]
    assert changed(lambda run: edit_metrics(run, lambda rs: [rs[0], {**rs[1], "actor/pg_loss": 0.3}])) == [
        "metrics step 2: actor/pg_loss differ"
    ]
    assert changed(lambda run: shutil.rmtree(run / "global_step_1")) == [
        "checkpoints ['global_step_2'] != ['global_step_1', 'global_step_2']"
    ]
    assert changed(lambda run: (run / ".tmp_global_step_3.123").mkdir()) == [
        "left behind: ['.tmp_global_step_3.123']"
    ]
    assert changed(lambda run: (run / "val_generations.jsonl").write_text('{"step": 0}\n')) == [
        "val_generations.jsonl differs"
    ]


@pytest.mark.slow
def test_runs_killed_at_random_moments_resume_to_the_uninterrupted_result(tmp_path, kill_resume):
    """3 one-process trials and 1 two-process trial (one rank killed) of the benchmark, seed 7."""
    lines = []
    trials = kill_resume.run_trials(kill_resume.prepare(tmp_path), [1, 1, 1, 2], 4, seed=7, echo=lines.append)
    report = "\n".join(lines) + "\n" + kill_resume.summary(trials)
    assert all(trial.survived for trial in trials), report
    assert sum(len(trial.kills) for trial in trials) >= 4, report  # it did kill, again and again
    assert any(trial.processes == 2 and trial.kills for trial in trials), report
