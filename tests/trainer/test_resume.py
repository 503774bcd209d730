"""A resumed run continues the same trajectory as one that never stopped: same metrics, bit for bit on CPU.

The uninterrupted run saves a checkpoint every step. A "stopped" run is that run's directory cut back to
checkpoint k, as a crash right after saving step k leaves it (later checkpoints and metrics gone); resuming
it with resume_mode=auto must reproduce steps k+1.. exactly. The training set has 8 prompts and a step
takes 2, so an epoch is 4 steps: k=2 stops mid-epoch, k=4 at the epoch boundary.
"""

import json
import shutil

import pytest
import torch

from sapo.cli import main

TIMING_PREFIXES = ("timing_s/", "perf/throughput", "perf/gen_tokens_per_s")


def records(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(TIMING_PREFIXES)} for r in rows]


def cut_back_to(run_dir, step):
    for path in run_dir.glob("global_step_*"):
        if int(path.name.rsplit("_", 1)[1]) > step:
            shutil.rmtree(path)
    (run_dir / "latest_checkpointed_iteration.txt").write_text(str(step))
    shutil.rmtree(run_dir / "hf_model", ignore_errors=True)


@pytest.fixture
def uninterrupted(tmp_path, tiny_qwen3, overrides_for):
    overrides = [
        *overrides_for(tiny_qwen3, tmp_path / "full"),
        "trainer.total_training_steps=6",
        "trainer.save_freq=1",
        "trainer.test_freq=3",
        "trainer.log_val_generations=2",
        "trainer.logger=[console]",
        "actor_rollout_ref.actor.ppo_epochs=2",
        "actor_rollout_ref.actor.shuffle=true",
        "actor_rollout_ref.actor.optim.lr_scheduler_type=cosine",
        "actor_rollout_ref.actor.optim.lr_warmup_steps=2",
    ]
    assert main(["train", *overrides]) == 0
    return tmp_path / "full", overrides


@pytest.mark.parametrize("stop_after", [2, 4], ids=["mid-epoch", "epoch-boundary"])
def test_resume_reproduces_the_uninterrupted_run_bit_for_bit(tmp_path, uninterrupted, stop_after):
    full_dir, overrides = uninterrupted
    expected = records(full_dir)
    assert [r["step"] for r in expected] == [0, 1, 2, 3, 4, 5, 6]

    stopped = tmp_path / f"stopped_{stop_after}"
    shutil.copytree(full_dir, stopped)
    cut_back_to(stopped, stop_after)
    kept_lines = "".join((stopped / "metrics.jsonl").read_text().splitlines(keepends=True)[: stop_after + 1])
    resumed_overrides = [o for o in overrides if not o.startswith("trainer.default_local_dir=")]
    assert main(["train", *resumed_overrides, f"trainer.default_local_dir={stopped}"]) == 0

    # It really resumed (a fresh start would replay the same seeded trajectory): the checkpoint is named,
    # and the metrics lines written before the stop were kept, not rewritten.
    derived = json.loads((stopped / "derived.json").read_text())
    assert derived["resumed_from"].endswith(f"global_step_{stop_after}")
    assert (stopped / "metrics.jsonl").read_text().startswith(kept_lines)
    got = records(stopped)
    assert [r["step"] for r in got] == [r["step"] for r in expected]
    assert got == expected  # every loss, reward, length, lr and validation number, exactly
    # the validation responses logged after the checkpoint (step 3 when stopped at 2) are not repeated
    assert (stopped / "val_generations.jsonl").read_text() == (full_dir / "val_generations.jsonl").read_text()


def test_a_restart_before_the_first_checkpoint_does_not_repeat_step_0(tmp_path, uninterrupted):
    """A run killed before its first checkpoint has logged step 0's validation (metrics and responses);
    the next start is a fresh one and logs step 0 again, which must then be there once, not twice."""
    full_dir, overrides = uninterrupted
    restarted = tmp_path / "restarted"
    shutil.copytree(full_dir, restarted)
    for path in restarted.glob("global_step_*"):
        shutil.rmtree(path)
    (restarted / "latest_checkpointed_iteration.txt").unlink()
    shutil.rmtree(restarted / "hf_model")
    kept = [o for o in overrides if not o.startswith("trainer.default_local_dir=")]
    assert main(["train", *kept, f"trainer.default_local_dir={restarted}"]) == 0
    assert json.loads((restarted / "derived.json").read_text())["resumed_from"] is None
    assert [r["step"] for r in records(restarted)] == [0, 1, 2, 3, 4, 5, 6]
    assert records(restarted) == records(full_dir)
    assert (restarted / "val_generations.jsonl").read_text() == (
        full_dir / "val_generations.jsonl"
    ).read_text()


def test_a_run_killed_during_its_final_export_exports_when_run_again(tmp_path, uninterrupted):
    """Killed after the last step's checkpoint, in the export: the re-run has nothing to train, but
    writes the export the kill cut short (the same weights), and keeps the records."""
    from safetensors.torch import load_file

    full_dir, overrides = uninterrupted
    killed = tmp_path / "killed"
    shutil.copytree(full_dir, killed)
    shutil.rmtree(killed / "hf_model")
    (killed / ".tmp_hf_model.12345").mkdir()  # what a kill in the middle of the export leaves
    kept = [o for o in overrides if not o.startswith("trainer.default_local_dir=")]
    assert main(["train", *kept, f"trainer.default_local_dir={killed}"]) == 0
    exported, expected = (
        load_file(killed / "hf_model/model.safetensors"),
        load_file(full_dir / "hf_model/model.safetensors"),
    )
    assert exported.keys() == expected.keys()
    assert all(torch.equal(exported[name], expected[name]) for name in expected)
    assert not list(killed.glob(".tmp_*"))
    assert records(killed) == records(full_dir)
