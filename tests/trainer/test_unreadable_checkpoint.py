"""``resume_mode=auto`` past a checkpoint whose files were truncated after it was saved (a half-copied
run directory, a full disk): it is moved aside, the one before it is resumed, and the run still ends
exactly as the uninterrupted one."""

import json
import shutil

from sapo.cli import main

TIMING_PREFIXES = ("timing_s/", "perf/throughput", "perf/gen_tokens_per_s")


def records(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(TIMING_PREFIXES)} for r in rows]


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_truncated_checkpoint_is_skipped_and_the_run_ends_as_if_uninterrupted(
    tmp_path, tiny_qwen3, overrides_for, capsys
):
    overrides = [
        *overrides_for(tiny_qwen3, tmp_path / "full"),
        "trainer.total_training_steps=4",
        "trainer.save_freq=1",
        "trainer.test_freq=0",
        "trainer.logger=[console]",
    ]
    assert main(["train", *overrides]) == 0
    expected = records(tmp_path / "full")
    # a crash right after the save of step 3, whose model.pt then lost its second half
    run_dir = tmp_path / "copied"
    shutil.copytree(tmp_path / "full", run_dir)
    shutil.rmtree(run_dir / "global_step_4")
    shutil.rmtree(run_dir / "hf_model")
    (run_dir / "latest_checkpointed_iteration.txt").write_text("3")
    truncate(run_dir / "global_step_3" / "model.pt")
    capsys.readouterr()
    resumed = [o for o in overrides if not o.startswith("trainer.default_local_dir=")]
    assert main(["train", *resumed, f"trainer.default_local_dir={run_dir}"]) == 0
    err = capsys.readouterr().err
    assert "skipped unreadable checkpoint(s) global_step_3" in err
    assert "model.pt cannot be read" in err and "resuming from global_step_2" in err
    assert (run_dir / "global_step_3.unreadable" / "model.pt").is_file()  # kept for inspection
    assert records(run_dir) == expected  # steps 3 and 4 retrained exactly


def test_no_readable_checkpoint_is_an_error_not_a_fresh_start(tmp_path, tiny_qwen3, overrides_for, capsys):
    overrides = [
        *overrides_for(tiny_qwen3, tmp_path / "run"),
        "trainer.total_training_steps=1",
        "trainer.save_freq=1",
        "trainer.logger=[]",
    ]
    assert main(["train", *overrides]) == 0
    truncate(tmp_path / "run" / "global_step_1" / "optimizer.pt")
    capsys.readouterr()
    assert main(["train", *overrides, "trainer.total_training_steps=2"]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint in" in err and "optimizer.pt cannot be read" in err
    assert "trainer.resume_mode=disable" in err and "Traceback" not in err
