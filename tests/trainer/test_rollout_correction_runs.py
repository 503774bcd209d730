"""Rollout correction and the log-prob gap guard in real `sapo train` runs on a tiny model (hf engine)."""

import copy
import json
import math

import pytest
import torch

from sapo.cli import main
from sapo.config import load_config
from sapo.core.losses import get_policy_loss
from sapo.errors import ConfigError
from sapo.rollout.hf import HFRolloutEngine
from sapo.rollout.seeds import TRAIN_STREAM, rollout_seeds
from sapo.trainer.actor import policy_micro_loss
from sapo.trainer.checkpoint import list_checkpoints
from sapo.trainer.correction import LogProbGapError, bypass_old_log_prob
from sapo.trainer.loop import training_step
from sapo.trainer.ppo_update import mini_batch_counts
from sapo.trainer.rollout_step import compute_log_probs, generate_and_score
from sapo.trainer.run import start_run

RC = "algorithm.rollout_correction"


def records_of(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_train_with_rollout_correction_logs_the_metrics(tiny_qwen3, tmp_path, overrides_for):
    run_dir = tmp_path / "run"
    extra = [
        f"{RC}.rollout_is=sequence",
        f"{RC}.rollout_is_threshold=2.0",
        f"{RC}.rollout_is_batch_normalize=true",
        f"{RC}.rollout_rs=seq_mean_k3,token_k1",
        f"{RC}.rollout_rs_threshold=0.01,0.5_2.0",
        "actor_rollout_ref.rollout.max_logprob_gap=0.05",
    ]
    assert main(["train", *overrides_for(tiny_qwen3, run_dir), *extra]) == 0
    records = records_of(run_dir)
    assert [r["step"] for r in records] == [0, 1, 2]
    for record in records[1:]:
        for name in (
            "rollout_is_mean", "rollout_is_max", "rollout_is_min", "rollout_is_std",
            "rollout_is_eff_sample_size", "rollout_is_ratio_fraction_high", "rollout_is_batch_norm_factor",
            "rollout_rs_masked_fraction", "rollout_rs_seq_masked_fraction",
            "rollout_rs_seq_mean_k3_masked_fraction", "rollout_rs_token_k1_masked_fraction",
            "training_ppl", "rollout_ppl", "ppl_ratio", "kl", "mean_abs_diff",
        ):  # fmt: skip
            assert f"rollout_corr/{name}" in record, name
        # hf engine, float32: engine and trainer agree to float rounding, so nothing is truncated or rejected
        assert record["rollout_corr/mean_abs_diff"] < 1e-4
        assert record["rollout_corr/rollout_is_mean"] == pytest.approx(1.0, abs=1e-4)
        assert 0.999 < record["rollout_corr/rollout_is_eff_sample_size"] <= 1.0 + 1e-9
        assert record["rollout_corr/rollout_rs_masked_fraction"] == 0.0
        assert record["rollout_corr/ppl_ratio"] == pytest.approx(1.0, abs=1e-4)
        assert record["rollout_corr/training_ppl"] == pytest.approx(
            record["rollout_corr/rollout_ppl"], rel=1e-4
        )
        assert record["rollout_corr/training_ppl"] > 1.0
        assert "actor/sapo/gate_weight_mean" in record


NO_LOG_PROBS = "actor_rollout_ref.rollout.calculate_log_probs=false"
GAP = "actor_rollout_ref.rollout.max_logprob_gap"


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ([f"{RC}.rollout_is=token", NO_LOG_PROBS], "calculate_log_probs=True"),
        ([f"{GAP}=0.1", NO_LOG_PROBS], "calculate_log_probs=True"),
        ([f"{RC}.rollout_is=tokens"], "rollout_is must be null, token or sequence"),
        ([f"{RC}.rollout_rs=seq_max_k1", f"{RC}.rollout_rs_threshold=2.0"], "is not a rejection mode"),
        ([f"{RC}.rollout_rs=token_k3"], "rollout_rs_threshold must be set"),
        ([f"{RC}.bypass_mode=true", f"{RC}.rollout_is=token"], "every weight would be 1"),
        ([f"{RC}.bypass_mode=true", f"{GAP}=0.1"], "bypass_mode=true skips"),
        ([f"{GAP}=-1"], "max_logprob_gap must be >= 0"),
        ([f"{RC}.loss_type=reinforce"], "algorithm.rollout_correction.loss_type"),
    ],
)
def test_bad_rollout_correction_configs_are_refused_before_any_compute(
    tiny_qwen3, tmp_path, overrides_for, extra, words
):
    with pytest.raises(ConfigError) as err:
        start_run(load_config(None, [*overrides_for(tiny_qwen3, tmp_path / "run"), *extra]), quiet=True)
    assert words in str(err.value)


def test_verl_default_loss_type_is_accepted(tiny_qwen3, tmp_path, overrides_for):
    config = load_config(None, [*overrides_for(tiny_qwen3, tmp_path / "run"), f"{RC}.loss_type=ppo_clip"])
    assert config.algorithm.rollout_correction.bypass_mode is False


def _perturbed_engine(run, scale: float):
    """A real hf engine whose weights are the policy's plus noise: what a weight sync that did not take
    leaves the engine with (in one process the engine otherwise samples from the policy itself)."""
    model = copy.deepcopy(run.policy)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return HFRolloutEngine(model, run.tokenizer)


def test_gap_guard_stops_the_run_before_the_update_and_keeps_the_checkpoint(
    tiny_qwen3, tmp_path, overrides_for
):
    run_dir = tmp_path / "run"
    base = [*overrides_for(tiny_qwen3, run_dir), "trainer.save_freq=1"]
    assert main(["train", *base, "trainer.total_training_steps=1"]) == 0
    assert [step for step, _ in list_checkpoints(run_dir)] == [1]
    saved = torch.load(run_dir / "global_step_1" / "model.pt", weights_only=True)

    config = load_config(
        None, [*base, "trainer.total_training_steps=2", "actor_rollout_ref.rollout.max_logprob_gap=0.05"]
    )
    run = start_run(config, quiet=True)
    try:
        assert run.global_step == 1  # resumed
        run.engine = _perturbed_engine(run, scale=0.5)
        with pytest.raises(LogProbGapError) as err:
            training_step(run)
        message = str(err.value)
        for words in (
            "rollout_corr/mean_abs_diff = ",
            "exceeds actor_rollout_ref.rollout.max_logprob_gap = 0.05",
            "stale engine weights",
            "dtype mismatch",
            "the last checkpoint is kept",
        ):
            assert words in message, words
        gap = float(message.split("rollout_corr/mean_abs_diff = ")[1].split(" ")[0])
        assert gap > 0.05
        assert run.global_step == 1  # the step was not taken
        for name, tensor in run.policy.state_dict().items():  # nor was the update
            assert torch.equal(tensor, saved[name]), name
    finally:
        run.close()
    assert [step for step, _ in list_checkpoints(run_dir)] == [1]

    # The same run with the engine in sync passes the guard and trains on.
    run = start_run(config, quiet=True)
    try:
        metrics = training_step(run)
        assert metrics["rollout_corr/mean_abs_diff"] < 0.05
        assert run.global_step == 2
    finally:
        run.close()


def test_bypass_uses_the_rollout_log_probs_and_keeps_the_sapo_loss(tiny_qwen3, tmp_path, overrides_for):
    """A real batch from the engine whose rollout log-probs are the trainer's shifted by c: in bypass mode
    old_log_prob is that tensor, so the SAPO ratio of every token is exactly exp(c) at the first step."""
    config = load_config(None, [*overrides_for(tiny_qwen3, tmp_path / "run"), f"{RC}.bypass_mode=true"])
    run = start_run(config, quiet=True)
    try:
        items = [run.train_set[i] for i in range(2)]
        seeds = rollout_seeds(0, TRAIN_STREAM, 0, range(2))
        batch = generate_and_score(
            run.engine, run.tokenizer, run.reward, items, run.sampling, seeds=seeds
        ).batch
        trainer = compute_log_probs(run.policy, batch, 4, run.actor.loss.temperature)  # [N, R]
        c = 0.3
        batch.rollout_log_probs = trainer - c
        batch.old_log_prob = bypass_old_log_prob(batch)
        assert torch.equal(batch.old_log_prob, batch.rollout_log_probs)
        mask = batch.response_mask
        batch.advantages = (
            torch.where(torch.arange(batch.num_sequences).unsqueeze(-1) % 2 == 0, 1.0, -1.0).expand_as(mask)
            * mask
        )  # [N, R]
        assert run.actor.loss.loss_mode == "sapo"
        counts = mini_batch_counts(batch, run.actor.schedule.loss_scale_factor)
        loss, metrics, _ = policy_micro_loss(run.policy, batch, counts, settings=run.actor.loss)
        assert metrics["actor/ratio_mean"] == pytest.approx(math.exp(c), abs=1e-4)
        assert metrics["actor/ppo_kl"] == pytest.approx(-c, abs=1e-4)
        # SAPO's loss with r = exp(c): -(4 / tau) sigmoid(tau (r - 1)) A, seq-mean-token-mean
        expected, _ = get_policy_loss("sapo")(
            batch.old_log_prob, batch.old_log_prob + c, batch.advantages, mask,
            loss_agg_mode=run.actor.loss.loss_agg_mode, **counts, **run.actor.loss.loss_kwargs,
        )  # fmt: skip
        assert loss.item() == pytest.approx(expected.item(), abs=1e-4)
        assert "actor/sapo/gate_weight_mean" in metrics
    finally:
        run.close()


def test_bypass_train_skips_the_trainer_forward_and_trains_with_sapo(tiny_qwen3, tmp_path, overrides_for):
    run_dir = tmp_path / "run"
    assert main(["train", *overrides_for(tiny_qwen3, run_dir), f"{RC}.bypass_mode=true"]) == 0
    for record in records_of(run_dir)[1:]:
        assert "actor/sapo/gate_weight_mean" in record
        assert "rollout_corr/mean_abs_diff" not in record  # no trainer old_log_prob to compare with
        assert 0 < record["actor/sapo/gate_weight_mean"] <= 1


# A reward of the response's characters, so responses that differ get different rewards.
TEXT_REWARD = """
def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    return sum(map(ord, solution_str)) % 7 / 6.0
"""


def _scored_overrides(overrides_for, model, tmp_path) -> list[str]:
    """One step with a reward of the response's text, so the advantages are not all zero."""
    reward = tmp_path / "reward.py"
    reward.write_text(TEXT_REWARD)
    return [
        *overrides_for(model, tmp_path / "run"),
        f"custom_reward_function.path={reward}",
        "actor_rollout_ref.actor.optim.weight_decay=0",
        "trainer.total_training_steps=1",
    ]


def _one_step_from_a_perturbed_engine(config):
    """(metrics, policy state after the step, policy state before)."""
    run = start_run(config, quiet=True)
    try:
        before = {name: t.detach().clone() for name, t in run.policy.state_dict().items()}
        run.engine = _perturbed_engine(run, scale=0.5)
        metrics = training_step(run)
        after = {name: t.detach().clone() for name, t in run.policy.state_dict().items()}
    finally:
        run.close()
    return metrics, after, before


def test_rejecting_every_token_leaves_the_policy_unchanged(tiny_qwen3, tmp_path, overrides_for):
    """Rejection reaches the actor's mask: with an engine off the policy and bounds no token can meet
    (k1 within [log 0.9999, log 1.0001]), no token is trained on, so Adam (no weight decay) moves nothing;
    the same step without rejection does move the policy."""
    base = _scored_overrides(overrides_for, tiny_qwen3, tmp_path)
    plain, moved, before = _one_step_from_a_perturbed_engine(load_config(None, base))
    assert plain["critic/advantages/max"] > 0
    assert any(not torch.equal(moved[name], before[name]) for name in before)
    reject = [f"{RC}.rollout_rs=token_k1", f"{RC}.rollout_rs_threshold=0.9999_1.0001"]
    metrics, after, before = _one_step_from_a_perturbed_engine(load_config(None, [*base, *reject]))
    assert metrics["rollout_corr/rollout_rs_masked_fraction"] == 1.0
    assert metrics["rollout_corr/mean_abs_diff"] > 0.01
    for name, tensor in after.items():
        assert torch.equal(tensor, before[name]), name
    assert all(math.isfinite(v) for v in metrics.values() if isinstance(v, float))


def test_is_weights_of_an_off_policy_engine_are_truncated_and_change_the_update(
    tiny_qwen3, tmp_path, overrides_for
):
    """The same step from the same perturbed engine, with and without token IS weights truncated at 1.05:
    the weights are not 1, some were truncated, and the trained policies differ."""
    base = _scored_overrides(overrides_for, tiny_qwen3, tmp_path)
    plain, unweighted, before = _one_step_from_a_perturbed_engine(load_config(None, base))
    tis = [f"{RC}.rollout_is=token", f"{RC}.rollout_is_threshold=1.05"]
    weighted, reweighted, _ = _one_step_from_a_perturbed_engine(load_config(None, [*base, *tis]))
    assert plain["critic/advantages/max"] > 0
    assert weighted["rollout_corr/rollout_is_max"] > 1.05  # the raw weight, before truncation
    assert weighted["rollout_corr/rollout_is_mean"] != pytest.approx(1.0, abs=1e-3)
    assert weighted["rollout_corr/rollout_is_ratio_fraction_high"] > 0
    assert plain["rollout_corr/mean_abs_diff"] == pytest.approx(weighted["rollout_corr/mean_abs_diff"])
    assert any(not torch.equal(unweighted[name], before[name]) for name in before)
    assert any(not torch.equal(unweighted[name], reweighted[name]) for name in before)


def test_without_rollout_log_probs_no_mismatch_is_logged(tiny_qwen3, tmp_path, overrides_for):
    """calculate_log_probs=false: the rollout's log-probs are dropped, so nothing compares them with the
    trainer's (the default run logs rollout_corr/* from them)."""
    runs = {}
    for flag in ("true", "false"):
        run_dir = tmp_path / flag
        base = overrides_for(tiny_qwen3, run_dir)
        assert main(["train", *base, f"actor_rollout_ref.rollout.calculate_log_probs={flag}"]) == 0
        runs[flag] = records_of(run_dir)[1:]
    assert all("rollout_corr/mean_abs_diff" in record for record in runs["true"])
    assert not any(key.startswith("rollout_corr/") for record in runs["false"] for key in record)
