"""The training loop of ``sapo train``: one readable function over the components of a run.

Per step:

1. take ``data.train_batch_size`` prompts from the resumable sampler;
2. generate ``rollout.n`` responses for each and score them (:mod:`sapo.trainer.rollout_step`); with
   ``algorithm.filter_groups.enable``, drop groups whose rewards all agree and refill from the sampler
   (DAPO dynamic sampling, :mod:`sapo.trainer.dynamic_sampling`);
3. recompute ``old_log_prob`` with the trainer, unless it is provably identical to the log-prob the
   first mini-batch will compute (one mini-batch, one epoch, no KL in the reward, no rollout correction or
   log-prob gap guard), or ``algorithm.rollout_correction.bypass_mode`` takes the rollout's log-probs;
4. ``ref_log_prob`` when a KL term is on, critic ``values`` for ``gae``;
5. token rewards (``scores - beta * KL`` with ``algorithm.use_kl_in_reward``) and advantages
   (``algorithm.adv_estimator``); a NaN / Inf in any of the batch's per-token values skips steps 6 and 7,
   and ``trainer.max_nonfinite_steps`` such steps in a row stop the run (`sapo.trainer.nonfinite`);
6. stop the run if ``old_log_prob`` is further than ``rollout.max_logprob_gap`` from the rollout's;
   compute the rollout correction (IS weights, rejection mask: :mod:`sapo.core.rollout_correction`) on
   the whole batch;
7. update the actor (:mod:`sapo.trainer.actor`; rejected tokens out of its mask, IS weights on its
   loss; advantages and the critic see the whole mask) and the critic, then step the learning-rate schedules;
8. log; validate every ``trainer.test_freq`` steps; checkpoint every ``trainer.save_freq`` steps, when
   ``trainer.save_every_minutes`` have passed since the last save, and after a SIGTERM / SIGINT, which
   then ends the run (`sapo.trainer.stopping`).

At the end: a last validation and checkpoint, and the policy exported as a Hugging Face directory.

The same function runs in every process of a multi-process run (`sapo.distributed`, docs/distributed.md):
each rank generates its share of the prompts, with sampling seeds from the prompt's place in the batch
and the step (never the rank); the batch is gathered whole on every rank, so steps 3-6 compute the
single-process numbers; every forward/backward pass takes the rank's share of its rows; rank 0 writes.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from sapo.config import Config
from sapo.core.advantages import compute_advantages
from sapo.core.diagnostics import rollout_mismatch_metrics
from sapo.core.kl import kl_penalty
from sapo.core.rollout_correction import offpolicy_metrics
from sapo.distributed.fsdp import full_weights
from sapo.errors import TrainingInterrupted
from sapo.rollout.seeds import TRAIN_STREAM, rollout_seeds
from sapo.run_dir import HF_MODEL_DIR, read_metrics
from sapo.trainer import run_checkpoint
from sapo.trainer.actor import update_actor
from sapo.trainer.correction import (
    batch_correction,
    batch_correction_on,
    bypass_old_log_prob,
    check_logprob_gap,
    needs_trainer_old_log_prob,
)
from sapo.trainer.critic import compute_values, update_critic
from sapo.trainer.dynamic_sampling import collect
from sapo.trainer.generations import (
    append_val_generations,
    dump_generations,
    format_val_generations,
    generation_records,
)
from sapo.trainer.nonfinite import nonfinite_sources, stop_error, warn
from sapo.trainer.rollout_step import compute_log_probs, generate_and_score
from sapo.trainer.run import TrainingRun, start_run
from sapo.trainer.step_metrics import batch_metrics
from sapo.trainer.stopping import SaveClock, StopSignals, decide
from sapo.trainer.validate import accuracy_of, run_validation


@dataclass
class RunSummary:
    run_dir: Path
    steps: int
    final_metrics: dict[str, float]
    first_validation: dict[str, float] | None
    export_dir: Path | None


def train(config: Config) -> RunSummary:
    """Run (or resume) training as configured; return where the outputs are and the last metrics."""
    run = start_run(config)
    first_validation = None
    try:
        trainer = config.trainer
        if trainer.val_only:  # validate the current policy (step 0, or the resumed step) and stop
            first_validation = validate(run)
            run.logger.log(first_validation, step=run.global_step)
            return RunSummary(run.run_dir, run.global_step, first_validation, first_validation, None)
        if run.global_step >= run.total_steps:  # resumed at its last step: nothing to train
            return _finished(run)
        if run.global_step == 0 and trainer.val_before_train and run.val_set is not None:
            first_validation = validate(run)
            run.logger.log(first_validation, step=0)
        metrics = _train_steps(run)
        export_dir = export(run) if trainer.export_hf else None
        return RunSummary(run.run_dir, run.global_step, metrics, first_validation, export_dir)
    finally:
        run.close()


def _finished(run: TrainingRun) -> RunSummary:
    """A re-run of a run that reached its last step: say so and give its result; nothing is rewritten,
    except an export that is missing (a kill after the last checkpoint, during the export): written now."""
    records = read_metrics(run.run_dir)
    first = records[0] if records and records[0].get("step") == 0 else None
    last = records[-1] if records else {}
    if run.world.is_main:
        print(
            f"sapo train: this run is already finished (step {run.global_step} of {run.total_steps}) in "
            f"{run.run_dir}; nothing was trained. To train it further raise trainer.total_training_steps "
            "(or trainer.total_epochs); for a new run use another trainer.experiment_name",
            flush=True,
        )
    export_dir = run.run_dir / HF_MODEL_DIR
    if run.config.trainer.export_hf and not run.world.on_main(export_dir.is_dir):  # one answer, every rank
        export(run)
    return RunSummary(run.run_dir, run.global_step, last, first, export_dir if export_dir.is_dir() else None)


def _train_steps(run: TrainingRun) -> dict[str, float]:
    """Steps until ``total_steps``, each followed by validation and a checkpoint when due; the last step's
    metrics. A SIGTERM / SIGINT ends it after a step and its checkpoint (`sapo.trainer.stopping`)."""
    trainer = run.config.trainer
    metrics: dict[str, float] = {}
    clock = SaveClock(trainer.save_every_minutes)
    with StopSignals() as signals:
        while run.global_step < run.total_steps:
            metrics = training_step(run)
            step = run.global_step
            last = step == run.total_steps
            if run.val_set is not None and (last or _every(trainer.test_freq, step)):
                metrics.update(validate(run))
            run.logger.log(metrics, step=step)
            decision = decide(signals, clock, run.world)
            if run.nonfinite.exhausted():  # too many non-finite steps in a row: save the last good weights
                raise stop_error(step, run.nonfinite.limit, run.nonfinite.last, save(run))
            if last or _every(trainer.save_freq, step) or decision.save:
                checkpoint = save(run)
                clock.saved()
            if decision.stop is not None and not last:
                _stop(run, TrainingInterrupted(decision.stop, step, checkpoint))
    return metrics


def _stop(run: TrainingRun, stop: TrainingInterrupted) -> None:
    """Say where the checkpoint is, then end every rank. Rank 0 says it before the barrier: once a rank
    exits, torchrun sends SIGTERM to the others, which may no longer be handled."""
    if run.world.is_main:
        print(f"sapo train: {stop}", file=sys.stderr, flush=True)
    run.world.barrier()
    raise stop


def _every(freq: int, step: int) -> bool:
    return freq > 0 and step % freq == 0


def training_step(run: TrainingRun) -> dict[str, float]:
    """Steps 1-7 of the module docstring for one batch of prompts; returns the step's metrics."""
    timing: dict[str, float] = {}
    start = time.perf_counter()
    epoch_before = run.sampler.epoch
    with _timer(timing, "gen"):
        scored, sampling_metrics = _rollout(run)
    batch = scored.batch
    correction_config = run.config.algorithm.rollout_correction
    if not run.config.actor_rollout_ref.rollout.calculate_log_probs:
        batch.rollout_log_probs = None
    temperature = run.actor.loss.temperature  # log-probs of logits / the rollout temperature
    with _timer(timing, "old_log_prob"):
        if correction_config.bypass_mode:  # old := rollout (no forward); the configured loss is kept
            batch.old_log_prob = bypass_old_log_prob(batch)
        elif needs_trainer_old_log_prob(run.config, batch.num_sequences, run.actor.schedule, run.kl_ctrl):
            batch.old_log_prob = compute_log_probs(
                run.policy, batch, run.log_prob_micro, temperature, run.log_prob_max_tokens, run.world
            )
    if run.reference is not None:
        with _timer(timing, "ref"):
            batch.ref_log_prob = compute_log_probs(
                run.reference, batch, run.ref_log_prob_micro, temperature, run.log_prob_max_tokens, run.world
            )
    if run.critic is not None:
        with _timer(timing, "values"):
            schedule = run.critic_settings.schedule
            batch.values = compute_values(
                run.critic, batch, schedule.micro_batch_size, schedule.max_token_len, run.world
            )
    with _timer(timing, "adv"):
        reward_metrics, seq_kl = _rewards_and_advantages(run, batch)
    # the non-finite guard (sapo.trainer.nonfinite): the whole batch is on every rank, so all skip alike
    reads_rollout = correction_config.bypass_mode or batch_correction_on(correction_config)
    nonfinite = nonfinite_sources(batch, reads_rollout)
    critic_metrics, actor_metrics, correction = {}, {}, None
    if not nonfinite:
        check_logprob_gap(batch, run.config.actor_rollout_ref.rollout.max_logprob_gap)
        correction = batch_correction(batch, correction_config)
        if run.kl_ctrl is not None:  # n_steps counts sequences, as verl's apply_kl_penalty passes
            run.kl_ctrl.update(seq_kl, n_steps=batch.num_sequences)
        critic_metrics, actor_metrics = _update(run, batch, correction, timing)
    lr = run.scheduler.get_last_lr()[0]
    run.scheduler.step()
    if run.critic_scheduler is not None:
        run.critic_scheduler.step()
    with _timer(timing, "weight_sync"):  # copy into the engine (vllm: reload + stale-policy check)
        run.engine.update_weights(full_weights(run.policy))
    run.global_step += 1
    timing["step"] = time.perf_counter() - start
    metrics = {**batch_metrics(batch, timing), **reward_metrics, **critic_metrics, **actor_metrics}
    metrics.update(scored.reward.metrics())
    metrics.update(sampling_metrics)
    metrics.update(_overlong_metrics(run, scored.reward))
    if run.config.trainer.rollout_data_dir and run.world.is_main:
        records = generation_records(scored, run.global_step, batch.advantages, batch.response_mask)
        dump_generations(run.config.trainer.rollout_data_dir, run.global_step, records)
    if (
        not nonfinite
        and batch.old_log_prob is not None
        and batch.rollout_log_probs is not None
        and not correction_config.bypass_mode
    ):
        metrics.update(
            rollout_mismatch_metrics(batch.rollout_log_probs, batch.old_log_prob, batch.response_mask)
        )
        if correction is None:
            metrics.update(
                offpolicy_metrics(batch.old_log_prob, batch.rollout_log_probs, batch.response_mask)
            )
    if correction is not None:
        metrics.update(correction.metrics)
    metrics.update(run.nonfinite.record(batch, nonfinite, {**actor_metrics, **critic_metrics}))
    if run.nonfinite.count and run.world.is_main:
        warn(run.global_step, run.nonfinite.last, bool(nonfinite), run.nonfinite.count, run.nonfinite.limit)
    metrics["actor/lr"] = lr
    metrics["training/global_step"] = run.global_step
    metrics["training/epoch"] = epoch_before
    return metrics


def _rollout(run: TrainingRun):
    """Step 2: ``train_batch_size`` prompts from the sampler, generated and scored; with
    ``algorithm.filter_groups.enable``, DAPO's refill rounds (`sapo.trainer.dynamic_sampling`). Returns
    the rollout and its dynamic-sampling metrics."""
    batch_size = run.config.data.train_batch_size

    def generate(round_: int):
        items = [run.train_set[i] for i in run.sampler.next_batch(batch_size)]
        positions = range(round_ * batch_size, (round_ + 1) * batch_size)  # a refill never repeats seeds
        seeds = rollout_seeds(run.config.trainer.seed, TRAIN_STREAM, run.global_step, positions)
        return generate_and_score(
            run.engine, run.tokenizer, run.reward, items, run.sampling, seeds=seeds, world=run.world
        )

    filter_groups = run.config.algorithm.filter_groups
    if not filter_groups.enable:
        return generate(0), {}
    pad_token_id = run.tokenizer.pad_token_id if run.tokenizer.pad_token_id is not None else 0
    mini_batch_prompts = run.config.actor_rollout_ref.actor.ppo_mini_batch_size
    return collect(
        generate, batch_size, mini_batch_prompts, filter_groups, pad_token_id, warn=run.world.is_main
    )


def _update(run: TrainingRun, batch, correction, timing) -> tuple[dict, dict]:
    """Step 7's updates: the critic on the whole mask, the actor on its view (rejected tokens out of its
    mask, IS weights on its loss); their metrics."""
    with _timer(timing, "update_critic"):
        critic_metrics = (
            update_critic(
                run.critic, run.critic_optimizer, batch, run.critic_settings, run.shuffle_generator, run.world
            )
            if run.critic is not None
            else {}
        )
    actor_batch = batch
    if correction is not None:
        actor_batch = replace(
            batch, response_mask=correction.keep_mask, rollout_is_weights=correction.weights
        )
    with _timer(timing, "update_actor"):
        actor_metrics = update_actor(
            run.policy, run.optimizer, actor_batch, run.actor, run.shuffle_generator, run.world
        )
    return critic_metrics, actor_metrics


def _overlong_metrics(run: TrainingRun, reward) -> dict[str, float]:
    """``reward_model.overlong_buffer.log``: the DAPO penalty's mean and the fraction of responses in the
    buffer (verl's ``overlong_reward`` and ``overlong`` reward extras)."""
    if not run.config.reward_model.overlong_buffer.log or "overlong_reward" not in reward.extra_info:
        return {}
    penalties = reward.extra_info["overlong_reward"]
    flags = reward.extra_info["overlong"]
    return {
        "reward/overlong_reward/mean": sum(penalties) / len(penalties),
        "reward/overlong/mean": sum(float(f) for f in flags) / len(flags),
    }


def _rewards_and_advantages(run: TrainingRun, batch) -> tuple[dict[str, float], float | None]:
    """Token rewards and advantages on ``batch``; the metrics and the batch's mean sequence KL (None
    without a KL-in-reward controller), which the controller is updated with if the step is trained on."""
    metrics: dict[str, float] = {}
    seq_kl = None
    batch.token_level_rewards = batch.token_level_scores
    if run.kl_ctrl is not None:
        kl = kl_penalty(batch.old_log_prob, batch.ref_log_prob, run.config.algorithm.kl_penalty)  # [N, R]
        kl = kl * batch.response_mask
        batch.token_level_rewards = batch.token_level_scores - run.kl_ctrl.value * kl
        seq_kl = float((kl.sum(-1) / batch.response_mask.sum(-1).clamp(min=1)).mean())
        metrics["actor/reward_kl_penalty"] = seq_kl
        metrics["actor/reward_kl_penalty_coeff"] = run.kl_ctrl.value
    if nonfinite_sources(batch, reads_rollout_log_probs=False):  # the guard skips this step
        return metrics, seq_kl
    batch.advantages, batch.returns = compute_advantages(
        run.config.algorithm.adv_estimator,
        token_level_rewards=batch.token_level_rewards,
        response_mask=batch.response_mask,
        index=batch.group_index,
        values=batch.values,  # None without a critic; estimators that take no values ignore it
        **run.estimator_kwargs,
    )
    return metrics, seq_kl


@contextmanager
def _timer(timing: dict[str, float], name: str):
    """Record the seconds the block took as ``timing[name]`` (logged as ``timing_s/<name>``)."""
    start = time.perf_counter()
    yield
    timing[name] = time.perf_counter() - start


def validate(run: TrainingRun) -> dict[str, float]:
    start = time.perf_counter()
    trainer, data = run.config.trainer, run.config.data
    records: list[dict] = []
    metrics = run_validation(
        run.engine,
        run.tokenizer,
        run.reward,
        run.val_set,
        run.val_sampling,
        batch_size=data.val_batch_size,
        step=run.global_step,
        records=records,
        shuffle_seed=data.seed if data.validation_shuffle else None,
        seed=trainer.seed,
        world=run.world,
    )
    if trainer.validation_data_dir and run.world.is_main:
        dump_generations(trainer.validation_data_dir, run.global_step, records)
    if trainer.log_val_generations > 0 and run.world.is_main:
        shown = records[: trainer.log_val_generations]
        append_val_generations(run.run_dir, shown)
        run.logger.write(format_val_generations(shown))
    accuracy = accuracy_of(metrics)
    if accuracy is not None:
        metrics["val-core/acc/mean"] = accuracy
    metrics["timing_s/testing"] = time.perf_counter() - start
    return metrics


def save(run: TrainingRun) -> Path:
    return run_checkpoint.save(run)


def export(run: TrainingRun) -> Path:
    return run_checkpoint.export(run, run.run_dir / HF_MODEL_DIR)
