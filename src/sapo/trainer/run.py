"""A run's state: every component a training step needs, built once by :func:`start_run`, and what a
checkpoint saves beyond the weights (:meth:`TrainingRun.extra_state`).

``start_run`` validates the config before any compute, joins the process group when there are several
processes (`sapo.distributed`), seeds everything, builds the models (sharded with FSDP2 over several
processes), data, rollout engine, reward manager, optimizers and logger, prints and stores the resolved
config and derived quantities (rank 0), and resumes from a checkpoint as ``trainer.resume_mode`` says.
"""

from __future__ import annotations

import os
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sapo.config import Config, derived_quantities, resolve_config, validate
from sapo.config.components import engine_settings, estimator_numbers
from sapo.config.preflight import check_context, engine_context, preflight
from sapo.config.render import record_startup
from sapo.config.validate import training_schedule
from sapo.config.world_checks import check_world_size
from sapo.core.kl import AdaptiveKLController, FixedKLController
from sapo.data.sampler import ResumableSampler
from sapo.distributed.env import launched_world_size
from sapo.distributed.fsdp import full_weights, shard_model
from sapo.distributed.world import World, init_world
from sapo.errors import UserError
from sapo.optim import AdamW
from sapo.rollout import make_rollout_engine
from sapo.rollout.base import SamplingParams
from sapo.run_dir import HF_MODEL_DIR, METRICS_FILE, VAL_GENERATIONS_FILE, remove_orphans
from sapo.trainer import checkpoint as ckpt
from sapo.trainer import run_checkpoint, settings
from sapo.trainer.actor import ActorUpdateSettings
from sapo.trainer.critic import CriticUpdateSettings
from sapo.trainer.logging import MetricsLogger, SilentLogger, truncate_metrics
from sapo.trainer.nonfinite import NonFiniteStreak
from sapo.trainer.run_identity import check_run_identity, record_run_identity
from sapo.trainer.setup import (
    build_dataset,
    build_models,
    build_optimizer_and_scheduler,
    build_reward,
    check_scorers,
    data_files,
    resolve_device,
    run_dir_of,
)
from sapo.trainer.tokenizer_setup import apply_tokenizer_settings


@dataclass
class TrainingRun:
    config: Config
    run_dir: Path
    device: torch.device
    policy: torch.nn.Module
    tokenizer: object
    reference: torch.nn.Module | None
    engine: object
    reward: object
    train_set: object
    val_set: object | None
    sampler: ResumableSampler
    optimizer: AdamW
    scheduler: object
    actor: ActorUpdateSettings
    sampling: SamplingParams
    val_sampling: SamplingParams
    estimator_kwargs: dict
    shuffle_generator: torch.Generator
    logger: MetricsLogger | SilentLogger | None
    total_steps: int
    log_prob_micro: int  # rollout.log_prob_micro_batch_size_per_gpu: old_log_prob passes
    ref_log_prob_micro: int  # ref.log_prob_micro_batch_size_per_gpu: ref_log_prob passes
    log_prob_max_tokens: int | None = None  # use_dynamic_bsz: token budget of every log-prob pass
    kl_ctrl: object | None = None
    critic: torch.nn.Module | None = None
    critic_optimizer: AdamW | None = None
    critic_scheduler: object | None = None
    critic_settings: CriticUpdateSettings | None = None
    world: World = field(default_factory=World)
    model_path: Path | None = None  # the policy's Hugging Face directory
    rollout_model: torch.nn.Module | None = None  # the policy, or its unsharded copy (sapo.distributed.fsdp)
    global_step: int = 0
    warm_start: dict | None = None
    derived: dict = field(default_factory=dict)
    nonfinite: NonFiniteStreak = field(default_factory=lambda: NonFiniteStreak(None))

    def extra_state(self) -> dict:
        """Everything besides weights and optimizer that the next step depends on."""
        return {
            "global_step": self.global_step,
            "sampler": self.sampler.state_dict(),
            "shuffle_generator": self.shuffle_generator.get_state(),
            "kl_coef": None if self.kl_ctrl is None else float(self.kl_ctrl.value),
            "nonfinite_streak": self.nonfinite.count,
        }

    def load_extra_state(self, state: dict) -> None:
        self.global_step = int(state["global_step"])
        self.sampler.load_state_dict(state["sampler"])
        self.shuffle_generator.set_state(state["shuffle_generator"])
        if self.kl_ctrl is not None and state.get("kl_coef") is not None:
            self.kl_ctrl.value = float(state["kl_coef"])
        self.nonfinite.count = int(state.get("nonfinite_streak", 0))  # absent before the guard existed

    def close(self) -> None:
        if self.logger is not None:
            self.logger.close()
        for part in (self.reward, self.engine):  # the engine before the process group it may use
            close = getattr(part, "close", None)
            if close is not None:
                close()
        self.world.close()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _check_and_seed(config: Config) -> tuple[World, torch.device]:
    """Resolve and reject an impossible config before any compute; join the process group; set threads
    and seeds."""
    resolve_config(config)  # idempotent: a config from load_config is resolved already
    world_size = launched_world_size()
    check_world_size(config, world_size)
    validate(config, world_size=world_size)
    preflight(config)  # what sapo config checks too: the engine, the device, the model's files and context
    device = resolve_device(config.trainer.device)
    arr = config.actor_rollout_ref
    world = init_world(device, arr.nccl_timeout, fsdp_size=arr.actor.fsdp_config.fsdp_size)
    if device.type == "cuda" and world.size > 1:
        device = torch.device("cuda", world.local_rank)
    if config.trainer.cpu_threads is not None:
        torch.set_num_threads(config.trainer.cpu_threads)
    seed_everything(config.trainer.seed)
    return world, device


def start_run(config: Config, *, quiet: bool = False) -> TrainingRun:
    world, device = _check_and_seed(config)
    trainer, data = config.trainer, config.data
    actor_cfg, rollout_cfg = config.actor_rollout_ref.actor, config.actor_rollout_ref.rollout
    run_dir = run_dir_of(config)
    check_run_identity(config, run_dir)  # another run's checkpoints there: refuse before writing anything
    _make_run_dir(run_dir)
    world.on_main(lambda: _prepare_run_dir(config, run_dir))
    if world.is_main and not quiet:  # before the warm start and model loading, which can take minutes
        print(f"run directory: {run_dir}", flush=True)
    use_kl_in_reward = config.algorithm.use_kl_in_reward
    # before the warm start, so a bad task size fails fast; rank 0 writes the built-in task's files
    train_files, val_files = world.on_main(lambda: data_files(config, run_dir))
    models = build_models(config, device, actor_cfg.use_kl_loss or use_kl_in_reward, world)
    models.tokenizer = apply_tokenizer_settings(
        models.tokenizer,
        models.policy,
        path=data.tokenizer,  # resolved: null there means actor_rollout_ref.model.tokenizer_path
        chat_template=config.actor_rollout_ref.model.custom_chat_template,
    )
    train_set, val_set = _load_datasets(config, models, train_files, val_files)
    schedule = training_schedule(config, len(train_set))
    total_steps = schedule["total_training_steps"]
    seed_everything(trainer.seed)  # the same random streams whether or not a warm start just ran
    optimizer, scheduler = build_optimizer_and_scheduler(
        models.policy.parameters(), actor_cfg.optim, total_steps
    )
    actor = settings.actor_settings(config)
    log_prob_micro, ref_log_prob_micro = settings.log_prob_micro_batch_sizes(config)
    run = TrainingRun(
        config=config,
        run_dir=run_dir,
        device=device,
        policy=models.policy,
        tokenizer=models.tokenizer,
        reference=models.reference,
        engine=make_rollout_engine(
            rollout_cfg.name, models.rollout_model, models.tokenizer, **engine_settings(config)
        ),
        reward=build_reward(config),
        train_set=train_set,
        val_set=val_set,
        sampler=ResumableSampler(len(train_set), shuffle=data.shuffle, seed=data.seed),
        optimizer=optimizer,
        scheduler=scheduler,
        actor=actor,
        sampling=settings.train_sampling(config),
        val_sampling=settings.val_sampling(config),
        estimator_kwargs=estimator_numbers(config),  # values come from the critic per step
        shuffle_generator=torch.Generator().manual_seed(actor_cfg.data_loader_seed),
        logger=None,
        total_steps=total_steps,
        log_prob_micro=log_prob_micro,
        ref_log_prob_micro=ref_log_prob_micro,
        log_prob_max_tokens=actor.schedule.max_token_len,
        warm_start=models.warm_start,
        world=world,
        model_path=models.path,
        rollout_model=models.rollout_model,
        nonfinite=NonFiniteStreak(config.trainer.max_nonfinite_steps),
    )
    if use_kl_in_reward:
        run.kl_ctrl = _kl_controller(config)
    if config.critic.enable:
        _attach_critic(run, models, total_steps)
    resumed_from = _resume(run)
    derived = derived_quantities(config, world_size=world.size, train_dataset_size=len(train_set))
    run.derived = {**derived, "run_dir": str(run_dir)}
    if world.size > 1:
        run.derived["device_mesh"] = _mesh_text(world)
    if not world.is_main:
        run.logger = SilentLogger()
        return run
    _record_start(run, resumed_from, quiet)
    drop_records_after(run_dir, run.global_step if resumed_from else -1)
    trainer = config.trainer
    run.logger = MetricsLogger(
        run_dir,
        trainer.logger,
        project=trainer.project_name,
        experiment=trainer.experiment_name,
        total_steps=total_steps,
        resume_step=run.global_step,
    )
    return run


def _make_run_dir(run_dir: Path) -> None:
    """Create the run directory, or say why it cannot be (a file in the way, a read-only mount)."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write_test.{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UserError(
            f"cannot use {str(run_dir)!r} as the run directory ({exc.strerror or exc}): set "
            "trainer.default_local_dir to a writable directory (a path that is not a file)"
        ) from exc


def _mesh_text(world: World) -> str:
    mesh = world.mesh
    names = mesh.mesh_dim_names or ()
    return " x ".join(f"{name}={size}" for name, size in zip(names, mesh.shape)) + f" ({mesh.device_type})"


def _kl_controller(config: Config):
    ctrl = config.algorithm.kl_ctrl
    if ctrl.type == "adaptive":
        return AdaptiveKLController(ctrl.kl_coef, ctrl.target_kl, ctrl.horizon)
    return FixedKLController(ctrl.kl_coef)


def _attach_critic(run: TrainingRun, models, total_steps: int) -> None:
    from sapo.models.loading import load_model_and_tokenizer
    from sapo.trainer.critic import ValueModel

    config = run.config
    critic_cfg = config.critic
    path = critic_cfg.model.path or models.path  # null: the policy's directory (the warm-started tiny model)
    model_cfg = config.actor_rollout_ref.model
    fsdp = critic_cfg.model.fsdp_config
    base, _ = load_model_and_tokenizer(path, dtype=fsdp.model_dtype, device=run.device, impl=model_cfg.impl)
    if critic_cfg.model.enable_gradient_checkpointing:
        base.gradient_checkpointing_enable()
    run.critic = shard_model(ValueModel(base), run.world, settings.sharding(fsdp), run.device)
    run.critic_optimizer, run.critic_scheduler = build_optimizer_and_scheduler(
        run.critic.parameters(), critic_cfg.optim, total_steps
    )
    run.critic_settings = settings.critic_settings(config)


def _load_datasets(config: Config, models, train_files, val_files):
    """The train and validation sets (None without validation files), checked for what the first step
    would otherwise fail on: a data source without a scorer, a prompt too long for the model's context."""
    data = config.data
    train_set = build_dataset(train_files, models.tokenizer, config, data.train_max_samples)
    val_set = build_dataset(val_files, models.tokenizer, config, data.val_max_samples) if val_files else None
    datasets = {"data.train_files": train_set, "data.val_files": val_set}
    check_scorers(config, datasets)
    check_context(config, engine_context(config, models.rollout_model), datasets)
    return train_set, val_set


def _prepare_run_dir(config: Config, run_dir: Path) -> None:
    """Rank 0, before the run writes anything else: its identity, and what a killed export left."""
    record_run_identity(config, run_dir)
    remove_orphans(run_dir, f".tmp_{HF_MODEL_DIR}.")


def _resume(run: TrainingRun) -> Path | None:
    """Load the checkpoint ``trainer.resume_mode`` names. With ``auto``, a checkpoint that cannot be read
    (truncated or corrupted since it was saved) is moved aside as ``global_step_N.unreadable`` (kept, not
    deleted), and the one before it is tried, saying which was skipped and why."""
    trainer = run.config.trainer
    if trainer.resume_mode != "auto":
        path = ckpt.find_resume_checkpoint(run.run_dir, trainer.resume_mode, trainer.resume_from_path)
        if path is not None:
            _load_checkpoint(run, path)
        return path
    run.world.on_main(lambda: ckpt.remove_stale_temp_dirs(run.run_dir))  # a save cut short between renames
    skipped = []
    while (path := ckpt.latest_checkpoint(run.run_dir)) is not None:
        errors = [e for e in run.world.gather_objects(_try_load(run, path)) if e]  # every rank agrees
        if not errors:
            _announce_skipped(run, skipped, path)
            return path
        skipped.append(f"{path.name} ({errors[0]})")
        run.world.on_main(lambda p=path: p.rename(p.with_name(p.name + UNREADABLE_SUFFIX)))
        run.world.barrier()
    if skipped:
        raise UserError(
            f"no checkpoint in {run.run_dir} can be read: {'; '.join(skipped)}. They were moved aside "
            f"(*{UNREADABLE_SUFFIX}). Start afresh with trainer.resume_mode=disable or a new "
            "trainer.default_local_dir"
        )
    return None


UNREADABLE_SUFFIX = ".unreadable"


def _try_load(run: TrainingRun, path: Path) -> str | None:
    try:
        _load_checkpoint(run, path)
    except ckpt.CheckpointUnreadable as err:
        return str(err)
    return None


def _load_checkpoint(run: TrainingRun, path: Path) -> None:
    run.load_extra_state(run_checkpoint.load(run, path))
    run.engine.update_weights(full_weights(run.policy))


def _announce_skipped(run: TrainingRun, skipped: list[str], path: Path) -> None:
    if skipped and run.world.is_main:
        print(
            f"sapo train: warning: skipped unreadable checkpoint(s) {'; '.join(skipped)}, moved aside as "
            f"*{UNREADABLE_SUFFIX}; resuming from {path.name}",
            file=sys.stderr,
            flush=True,
        )


def drop_records_after(run_dir: Path, step: int) -> None:
    """Drop what an attempt that was stopped (a kill, a crash) logged after the checkpoint the run continues
    from, so that ``metrics.jsonl`` and ``val_generations.jsonl`` read as one uninterrupted run: records of
    steps after ``step``. On a fresh start ``step`` is -1: every old record goes, step 0's validation
    included (it is logged again), where keeping step 0 would write it twice."""
    for name in (METRICS_FILE, VAL_GENERATIONS_FILE):
        truncate_metrics(run_dir / name, after_step=step)


def _record_start(run: TrainingRun, resumed_from: Path | None, quiet: bool) -> None:
    extra = {"resumed_from": str(resumed_from) if resumed_from else None, "warm_start": run.warm_start}
    report = record_startup(run.config, {**run.derived, **extra}, run.run_dir)
    if not quiet:
        print(report, flush=True)
        if resumed_from:
            print(f"resumed from {resumed_from} (step {run.global_step})", flush=True)
