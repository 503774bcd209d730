"""Config keys that reach the trainer: each test runs the real trainer (tiny Qwen3, gsm8k-layout parquet)
and checks the key's effect in its outputs or in the built run."""

import json
import random

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from transformers import AutoTokenizer

from sapo.cli import main
from sapo.config import load_config
from sapo.trainer import loop
from sapo.trainer.checkpoint import list_checkpoints
from sapo.trainer.run import start_run


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_generation_dumps_overlong_log_and_data_tokenizer(
    tmp_path, tiny_qwen3, overrides_for, gsm8k_files, capsys
):
    # A tokenizer directory of its own whose chat template starts every prompt with its `tag` variable,
    # set to "TOK" by data.apply_chat_template_kwargs.
    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen3)
    tokenizer.chat_template = "{% for m in messages %}{{ tag }}:{{ m['content'] }}{% endfor %}"
    tokenizer.save_pretrained(tmp_path / "tok")
    run_dir, rollouts, vals = tmp_path / "run", tmp_path / "rollouts", tmp_path / "vals"
    extra = [
        f"trainer.rollout_data_dir={rollouts}",
        f"trainer.validation_data_dir={vals}",
        "trainer.log_val_generations=2",
        "trainer.logger=[console]",
        "data.validation_shuffle=true",
        "data.seed=5",
        f"data.tokenizer={tmp_path / 'tok'}",
        "+data.apply_chat_template_kwargs.tag=TOK",
        "trainer.save_freq=1",
        "trainer.max_actor_ckpt_to_keep=1",
        "reward_model.reward_manager=dapo",
        "reward_model.overlong_buffer.enable=true",
        "reward_model.overlong_buffer.len=3",
        "reward_model.overlong_buffer.log=true",
    ]
    assert main(["train", *overrides_for(tiny_qwen3, run_dir), *extra]) == 0

    # rollout_data_dir: one file per step, train_batch_size 2 x n 2 = 4 responses each.
    metrics = {r["step"]: r for r in read_jsonl(run_dir / "metrics.jsonl")}
    for step in (1, 2):
        records = read_jsonl(rollouts / f"{step}.jsonl")
        assert len(records) == 4 and {r["step"] for r in records} == {step}
        assert all(r["input"].startswith("TOK:") for r in records)  # data.tokenizer's template + kwargs
        # GRPO by hand on the dumped scores: (s - group mean) / (unbiased group std + 1e-6), groups of 2.
        for first, second in (records[0:2], records[2:4]):
            scores = torch.tensor([first["score"], second["score"]])
            expected = (
                (scores - scores.mean()) / (scores.std() + 1e-6) if scores[0] != scores[1] else 0 * scores
            )
            assert [first["advantage"], second["advantage"]] == pytest.approx(expected.tolist(), abs=1e-5)
        # overlong_buffer.log: the step's metric is the mean of the dumped per-response penalties, each
        # min(0, -(L - (6 - 3)) / 3) for a response of L tokens (max_response_length 6, buffer 3).
        penalties = [r["overlong_reward"] for r in records]
        assert metrics[step]["reward/overlong_reward/mean"] == pytest.approx(sum(penalties) / 4)
        assert metrics[step]["reward/overlong/mean"] == pytest.approx(sum(p < 0 for p in penalties) / 4)

    # validation_data_dir: the validation before training (step 0) and the last one (step 2), every prompt,
    # in data.validation_shuffle's seeded order (random.Random(data.seed) over the 4 prompts).
    val_rows = pq.read_table(gsm8k_files[1]).to_pylist()
    order = list(range(4))
    random.Random(5).shuffle(order)
    for step in (0, 2):
        records = read_jsonl(vals / f"{step}.jsonl")
        assert [r["gts"] for r in records] == [val_rows[i]["reward_model"]["ground_truth"] for i in order]
        assert all(val_rows[i]["prompt"][0]["content"] in r["input"] for i, r in zip(order, records))

    # save_freq=1 saved steps 1 and 2; max_actor_ckpt_to_keep=1 kept only the newest.
    assert [step for step, _ in list_checkpoints(run_dir)] == [2]

    # log_val_generations=2: the first two records of each validation in run_dir, and on the console.
    shown = read_jsonl(run_dir / "val_generations.jsonl")
    assert [r["step"] for r in shown] == [0, 0, 2, 2]
    assert shown[:2] == read_jsonl(vals / "0.jsonl")[:2]
    out = capsys.readouterr()
    assert "[val step 0]" in out.out + out.err and "[val step 2]" in out.out + out.err


def test_val_only_validates_with_the_custom_chat_template_and_stops(tmp_path, tiny_qwen3, overrides_for):
    template = "{% for m in messages %}Q: {{ m['content'] }}\n{% endfor %}A:"
    config_file = tmp_path / "c.yaml"
    config_file.write_text(
        yaml.safe_dump({"actor_rollout_ref": {"model": {"custom_chat_template": template}}})
    )
    run_dir, vals = tmp_path / "run", tmp_path / "vals"
    extra = ["trainer.val_only=true", "trainer.val_before_train=false", f"trainer.validation_data_dir={vals}"]
    assert main(["train", "--config", str(config_file), *overrides_for(tiny_qwen3, run_dir), *extra]) == 0
    records = read_jsonl(vals / "0.jsonl")
    assert len(records) == 4 and all(
        r["input"].startswith("Q: ") and r["input"].endswith("A:") for r in records
    )
    assert [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl")] == [0]  # validated, never trained
    assert not list(run_dir.glob("global_step_*"))


def config_for(overrides_for, model, run_dir, *extra):
    return load_config(None, [*overrides_for(model, run_dir), *extra])


def test_micro_batch_keys_reach_every_pass(tmp_path, tiny_qwen3, overrides_for, monkeypatch):
    config = config_for(
        overrides_for,
        tiny_qwen3,
        tmp_path,
        "algorithm.adv_estimator=gae",
        "actor_rollout_ref.actor.use_kl_loss=true",
        "actor_rollout_ref.actor.use_dynamic_bsz=true",
        "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=80",
        "critic.ppo_max_token_len_per_gpu=90",
        "critic.model.enable_gradient_checkpointing=true",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=3",
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=4",
        "actor_rollout_ref.actor.ppo_mini_batch_size=2",
        "actor_rollout_ref.actor.ppo_epochs=2",
    )
    run = start_run(config, quiet=True)
    try:
        assert run.actor.schedule.max_token_len == 80 and run.log_prob_max_tokens == 80
        assert (
            run.critic_settings.schedule.max_token_len == 90
        )  # critic.use_dynamic_bsz null: the actor's (true)
        assert (run.log_prob_micro, run.ref_log_prob_micro) == (3, 4)
        assert run.critic.backbone.is_gradient_checkpointing
        calls = []
        real = loop.compute_log_probs

        def recording(model, batch, micro, temperature, max_tokens=None, world=None):
            calls.append((model is run.reference, micro, max_tokens))
            return real(model, batch, micro, temperature, max_tokens, world)

        monkeypatch.setattr(loop, "compute_log_probs", recording)
        metrics = loop.training_step(run)
        assert calls == [(False, 3, 80), (True, 4, 80)]  # old_log_prob (rollout key), ref_log_prob (ref key)
        assert torch.isfinite(torch.tensor(metrics["actor/pg_loss"]))
        assert "critic/vf_loss" in metrics
    finally:
        run.close()


def test_adaptive_kl_controller_counts_sequences(tmp_path, tiny_qwen3, overrides_for):
    config = config_for(
        overrides_for,
        tiny_qwen3,
        tmp_path,
        "algorithm.use_kl_in_reward=true",
        "algorithm.kl_ctrl.type=adaptive",
        "algorithm.kl_ctrl.kl_coef=0.1",
        "algorithm.kl_ctrl.horizon=10",
        "algorithm.kl_ctrl.target_kl=0.5",
    )
    run = start_run(config, quiet=True)
    try:
        metrics = loop.training_step(run)
    finally:
        run.close()
    # Step 1: the policy is still the reference, so KL = 0 and the error clip(0 / 0.5 - 1, -0.2, 0.2) = -0.2;
    # n_steps = 2 prompts x n 2 = 4 sequences (verl's batch size): 0.1 x (1 - 0.2 x 4 / 10) = 0.092.
    assert metrics["actor/reward_kl_penalty"] == 0.0
    assert run.kl_ctrl.value == pytest.approx(0.092)


def test_custom_chat_template_and_tokenizer_path_replace_the_models_tokenizer(tmp_path, tiny_qwen3):
    from transformers import AutoModelForCausalLM

    from sapo.trainer.tokenizer_setup import apply_tokenizer_settings

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen3)
    own = AutoTokenizer.from_pretrained(tiny_qwen3)
    other = AutoTokenizer.from_pretrained(tiny_qwen3)
    other.chat_template = "OTHER{{ messages[0]['content'] }}"
    other.padding_side = "right"
    other.save_pretrained(tmp_path / "tok")
    loaded = apply_tokenizer_settings(own, model, path=str(tmp_path / "tok"), chat_template=None)
    assert loaded.chat_template == other.chat_template and loaded.padding_side == "left"
    replaced = apply_tokenizer_settings(own, model, path=None, chat_template="T{{ messages[0]['content'] }}")
    text = replaced.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert text == "Thi"


def test_dapo_manager_applies_the_overlong_penalty_only_when_enabled():
    from sapo.rewards.managers import RewardSample
    from sapo.trainer.setup import build_reward

    # A right answer (score 1) of 6 tokens with max_response_length 6 and a buffer of 3 tokens: the penalty
    # is min(0, -(6 - (6 - 3)) / 3 x 1.0) = -1 when the buffer is on, 0 when it is off.
    sample = RewardSample(data_source="openai/gsm8k", response="#### 3", ground_truth="3", response_length=6)
    for enable, expected in ((True, 0.0), (False, 1.0)):
        config = load_config(
            None,
            [
                "reward_model.reward_manager=dapo",
                f"reward_model.overlong_buffer.enable={str(enable).lower()}",
                "reward_model.overlong_buffer.len=3",
                "data.max_response_length=6",  # overlong_buffer.max_resp_len null: this length
            ],
        )
        assert config.reward_model.overlong_buffer.max_resp_len == 6
        assert build_reward(config)([sample]).scores == [expected]


def test_vllm_engine_settings_reach_the_engine():
    from sapo.config.components import engine_settings

    config = load_config(
        None,
        [
            "actor_rollout_ref.rollout.name=vllm",
            "actor_rollout_ref.rollout.gpu_memory_utilization=0.7",
            "actor_rollout_ref.rollout.enforce_eager=true",
            "actor_rollout_ref.rollout.max_model_len=256",
            "actor_rollout_ref.rollout.max_num_seqs=64",
            "actor_rollout_ref.rollout.max_num_batched_tokens=4096",
            "actor_rollout_ref.rollout.enable_prefix_caching=false",
            "actor_rollout_ref.rollout.free_cache_engine=false",
            "actor_rollout_ref.rollout.tensor_model_parallel_size=2",
            "trainer.seed=3",
        ],
    )
    assert engine_settings(config) == {
        "gpu_memory_utilization": 0.7,
        "max_model_len": 256,
        "max_num_seqs": 64,
        "max_num_batched_tokens": 4096,
        "enforce_eager": True,
        "enable_prefix_caching": False,
        "free_cache_engine": False,
        "tensor_model_parallel_size": 2,
        "seed": 3,
    }
    assert engine_settings(load_config(None, [])) == {}  # the hf engine has no such settings
