"""`sapo train` end to end on real tiny HF models and a gsm8k-layout parquet file."""

import json

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import AutoModelForCausalLM, AutoTokenizer

from sapo.cli import main
from sapo.trainer.checkpoint import list_checkpoints


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("model_fixture", ["tiny_qwen3", "tiny_qwen3_moe"])
def test_sapo_train_runs_a_real_model_and_writes_every_output(
    request, tmp_path, overrides_for, model_fixture, capsys
):
    model_path = request.getfixturevalue(model_fixture)
    run_dir = tmp_path / "run"
    assert main(["train", *overrides_for(model_path, run_dir)]) == 0
    assert capsys.readouterr().out.startswith(f"run directory: {run_dir}\n")  # first, before any loading

    records = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records] == [0, 1, 2]  # validation before training, then two steps
    for record in records[1:]:
        for key in (
            "actor/pg_loss",
            "actor/entropy",
            "actor/grad_norm",
            "critic/score/mean",
            "response_length/mean",
            "actor/sapo/gate_weight_mean",
            "timing_s/gen",
            "timing_s/weight_sync",
            "actor/lr",
        ):
            assert key in record, key
        # On-policy first mini-batch: the SAPO gate weight is 1 there, and never above 1.
        assert 0 < record["actor/sapo/gate_weight_mean"] <= 1
    assert "val-core/openai/gsm8k/acc/mean@1" in records[0]
    assert "val-core/openai/gsm8k/acc/mean@1" in records[-1]

    events = EventAccumulator(str(next((run_dir / "tensorboard").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    assert [e.step for e in events.Scalars("actor/pg_loss")] == [1, 2]

    assert [step for step, _ in list_checkpoints(run_dir)] == [2]
    config_text = (run_dir / "config.yaml").read_text()
    assert "loss_mode: sapo" in config_text
    derived = json.loads((run_dir / "derived.json").read_text())
    assert derived["effective_loss_agg_mode"] == "seq-mean-token-mean"
    assert derived["optimizer_steps_per_step"] == 2  # 2 prompts per step, mini-batches of 1 prompt

    exported = AutoModelForCausalLM.from_pretrained(run_dir / "hf_model")
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "hf_model")
    trained = torch.load(run_dir / "global_step_2" / "model.pt", weights_only=True)
    for name, tensor in exported.state_dict().items():
        assert torch.equal(tensor, trained[name]), name
    assert tokenizer.decode(tokenizer("#### 7")["input_ids"]) == "#### 7"


def test_impossible_batch_sizes_fail_before_any_compute_with_the_arithmetic(
    tmp_path, tiny_qwen3, overrides_for, capsys
):
    run_dir = tmp_path / "run"
    code = main(
        ["train", *overrides_for(tiny_qwen3, run_dir), "actor_rollout_ref.actor.ppo_mini_batch_size=4"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "ppo_mini_batch_size" in err and "train_batch_size" in err
    assert not (run_dir / "metrics.jsonl").exists()


@pytest.mark.parametrize(
    "override,expected",
    [
        ("sapo.task.num_train=19200", "sapo.task.num_train + sapo.task.num_val = 19200 + 200 = 19400"),
        ("sapo.task.num_val=1001", "sapo.task.num_val=1001 is more than the 1000 problems the warm start"),
    ],
)
def test_built_in_task_sizes_fail_before_the_warm_start(tmp_path, monkeypatch, capsys, override, expected):
    # 2-digit addition has 10,000 distinct problems; the warm start holds out the first 1000.
    monkeypatch.setenv("SAPO_CACHE", str(tmp_path / "cache"))
    code = main(["train", override, f"trainer.default_local_dir={tmp_path / 'run'}"])
    assert code == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert not (tmp_path / "cache").exists()  # no warm start was trained


def test_unknown_key_names_close_matches(tmp_path, tiny_qwen3, overrides_for, capsys):
    code = main(["train", *overrides_for(tiny_qwen3, tmp_path), "actor_rollout_ref.actor.tau_pso=1.0"])
    assert code == 2
    assert "tau_pos" in capsys.readouterr().err


@pytest.mark.parametrize("impl, expected", [("native", "NativeCausalLM"), ("hf", "Qwen3ForCausalLM")])
def test_model_impl_picks_the_policy_implementation(tiny_qwen3, impl, expected):
    from sapo.config import load_config
    from sapo.distributed.world import World
    from sapo.trainer.setup import build_models

    config = load_config(
        None, [f"actor_rollout_ref.model.path={tiny_qwen3}", f"actor_rollout_ref.model.impl={impl}"]
    )
    models = build_models(config, torch.device("cpu"), needs_reference=False, world=World())
    assert type(models.policy).__name__ == expected


def test_a_run_directory_that_is_a_file_is_a_clear_error(tmp_path, tiny_qwen3, overrides_for, capsys):
    blocker = tmp_path / "run"
    blocker.write_text("not a directory")
    assert main(["train", *overrides_for(tiny_qwen3, blocker)]) == 2
    err = capsys.readouterr().err
    assert f"cannot use {str(blocker)!r} as the run directory" in err and "Traceback" not in err
    assert blocker.read_text() == "not a directory"  # nothing of the user's was touched
