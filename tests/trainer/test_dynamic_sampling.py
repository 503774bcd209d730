"""DAPO dynamic sampling (sapo.trainer.dynamic_sampling): zero-variance groups dropped, refill rounds until
data.train_batch_size informative groups, the cap, and the sampler's position across a resume."""

import json
import shutil
import types

import pytest
import torch

from sapo.batch import Batch
from sapo.cli import main
from sapo.config import load_config
from sapo.rewards.managers import RewardResult
from sapo.trainer import loop
from sapo.trainer.dynamic_sampling import collect, informative_groups
from sapo.trainer.rollout_step import ScoredRollout
from sapo.trainer.run import start_run


def round_of(group_scores: list[list[float]], response_width: int, tag: str) -> ScoredRollout:
    """A generated round: one group per list of scores (n = its length), responses ``response_width``
    wide; ``tag`` names the round in items, so tests can see which rows were kept."""
    rows = [(g, s) for g, scores in enumerate(group_scores) for s in scores]
    n_rows = len(rows)
    batch = Batch(
        input_ids=torch.ones(n_rows, 2 + response_width, dtype=torch.long),
        attention_mask=torch.ones(n_rows, 2 + response_width, dtype=torch.long),
        response_mask=torch.ones(n_rows, response_width),
        group_index=torch.tensor([g for g, _ in rows]),
        truncated=torch.zeros(n_rows, dtype=torch.bool),
        token_level_scores=torch.tensor([[0.0] * (response_width - 1) + [s] for _, s in rows]),
    )
    items = [{"tag": f"{tag}{g}"} for g, _ in rows]
    reward = RewardResult(scores=[s for _, s in rows], failed=[False] * n_rows)
    return ScoredRollout(batch=batch, items=items, responses=[""] * n_rows, reward=reward)


def settings(max_num_gen_batches=0, metric=None):
    return types.SimpleNamespace(enable=True, metric=metric, max_num_gen_batches=max_num_gen_batches)


ROUNDS = [  # 4 groups of 2 per round; informative: a1 a3 | b2 | c0 c1 c3
    [[1, 1], [0, 1], [0, 0], [1, 0]],
    [[1, 1], [0, 0], [0, 1], [1, 1]],
    [[0, 1], [1, 0], [1, 1], [1, 0]],
]


def test_zero_variance_groups_are_dropped_and_a_group_of_one_is_kept():
    values = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5])
    assert informative_groups(values, torch.tensor([0, 0, 1, 1, 2])) == [1, 2]


def test_refill_rounds_until_the_batch_is_full():
    calls = []

    def generate(round_):
        calls.append(round_)
        return round_of(ROUNDS[round_], response_width=3 + round_, tag="abc"[round_])

    scored, metrics = collect(generate, 4, 2, settings(), pad_token_id=0)
    assert calls == [0, 1, 2]  # 2 informative, then 3, then 6 >= 4
    assert [item["tag"] for item in scored.items] == ["a1", "a1", "a3", "a3", "b2", "b2", "c0", "c0"]
    assert scored.batch.group_index.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]  # renumbered in order
    assert scored.batch.response_length == 5  # padded to the widest round
    assert scored.batch.token_level_scores.sum(-1).tolist() == [0, 1, 1, 0, 0, 1, 0, 1]
    assert scored.reward.scores == [0, 1, 1, 0, 0, 1, 0, 1]
    assert metrics == {
        "dynamic_sampling/kept_groups": 6.0,
        "dynamic_sampling/generated_batches": 3.0,
        "dynamic_sampling/dropped_fraction": 0.5,  # 6 of 12 groups kept
        "dynamic_sampling/short_steps": 0.0,
    }


def test_at_the_cap_whole_mini_batches_of_what_was_found(capsys):
    generate = lambda r: round_of(ROUNDS[r], 3, "abc"[r])  # noqa: E731
    scored, metrics = collect(generate, 4, 2, settings(max_num_gen_batches=2), pad_token_id=0)
    # 3 informative groups in 2 rounds: one whole mini-batch of 2 prompts is trained on
    assert [item["tag"] for item in scored.items] == ["a1", "a1", "a3", "a3"]
    assert metrics["dynamic_sampling/short_steps"] == 1.0 and metrics["dynamic_sampling/kept_groups"] == 3
    assert "found 3 informative groups in 2 rounds" in capsys.readouterr().err
    # none at all: the last round as generated (its groups carry no policy gradient)
    flat = lambda r: round_of([[1, 1], [0, 0]], 3, "x")  # noqa: E731
    scored, metrics = collect(flat, 2, 2, settings(max_num_gen_batches=1), pad_token_id=0)
    assert scored.batch.num_sequences == 4 and metrics["dynamic_sampling/kept_groups"] == 0


def test_an_unknown_metric_names_the_available_ones():
    with pytest.raises(Exception, match="metric='pass_rate' is not a value every response has"):
        collect(lambda r: round_of(ROUNDS[0], 3, "a"), 4, 2, settings(metric="pass_rate"), pad_token_id=0)


REWARD = """
def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    return float(sum(map(ord, solution_str)) % 2)  # differs between samples about half the time
"""


@pytest.fixture
def filtered(tmp_path, tiny_qwen3, overrides_for):
    reward = tmp_path / "reward.py"
    reward.write_text(REWARD)
    return [
        *overrides_for(tiny_qwen3, tmp_path / "run"),
        f"custom_reward_function.path={reward}",
        "reward_model.timeout_s=null",
        "algorithm.filter_groups.enable=true",
        "algorithm.filter_groups.metric=score",
        "algorithm.filter_groups.max_num_gen_batches=3",
        "trainer.logger=[console]",
        "trainer.test_freq=0",
        "trainer.save_freq=1",
        "trainer.total_training_steps=3",
    ]


def test_the_sampler_moves_on_by_every_round_and_a_resume_continues_exactly(tmp_path, filtered):
    run = start_run(load_config(None, filtered), quiet=True)
    try:
        metrics = loop.training_step(run)
        rounds = int(metrics["dynamic_sampling/generated_batches"])
        state = run.sampler.state_dict()
        assert state["epoch"] * len(run.train_set) + state["position"] == 2 * rounds  # 2 prompts a round
    finally:
        run.close()
    shutil.rmtree(tmp_path / "run")
    assert main(["train", *filtered]) == 0
    full = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line) for line in full if json.loads(line)["step"] > 0]
    assert len(steps) == 3 and all("dynamic_sampling/kept_groups" in record for record in steps)
    assert any(record["dynamic_sampling/generated_batches"] > 1 for record in steps)  # a refill happened
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "run", cut)
    for step in (2, 3):
        shutil.rmtree(cut / f"global_step_{step}")
    shutil.rmtree(cut / "hf_model")
    (cut / "latest_checkpointed_iteration.txt").write_text("1")
    resumed = [o for o in filtered if not o.startswith("trainer.default_local_dir=")]
    assert main(["train", *resumed, f"trainer.default_local_dir={cut}"]) == 0
    timing = ("timing_s/", "perf/throughput", "perf/gen_tokens_per_s")

    def records(lines):
        return [{k: v for k, v in json.loads(x).items() if not k.startswith(timing)} for x in lines]

    assert records((cut / "metrics.jsonl").read_text().splitlines()) == records(full)
