"""Build a run's components from its config: the one place that reads the config for set-up.

Everything returned is a plain object (model, datasets, engine, reward manager, ...); the loop in
:mod:`sapo.trainer.loop` never parses the config again beyond reading numbers.

The embedded default: with ``actor_rollout_ref.model.path`` null the policy is the built-in tiny model,
warm-started on the built-in task (``sapo.task``), and with ``data.train_files`` null the train and
validation prompts are that task's, written as parquet files into the run directory and read back through
the same loader as any user dataset.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from sapo.config import Config
from sapo.data.dataset import RLDataset
from sapo.data.rows import load_rows
from sapo.distributed.fsdp import shard_model
from sapo.distributed.world import World
from sapo.errors import ConfigError, DataError, RewardError
from sapo.models.dtypes import resolve_dtype
from sapo.models.loading import load_model_and_tokenizer
from sapo.optim import build_adamw, build_scheduler, warmup_steps
from sapo.rewards import dispatch
from sapo.rewards.custom import load_custom_reward_function
from sapo.rewards.dispatch import builtin_scorer, known_data_sources
from sapo.rewards.managers import build_reward_manager
from sapo.run_dir import DATA_DIR, TRAIN_FILE, VAL_FILE
from sapo.trainer import settings


def run_dir_of(config: Config) -> Path:
    """``trainer.default_local_dir`` (resolved: null there means ``checkpoints/<project>/<experiment>``)."""
    return Path(config.trainer.default_local_dir)


def cache_dir() -> Path:
    """Where warm-started tiny models are cached: ``$SAPO_CACHE`` or ``~/.cache/sapo-rl``."""
    return Path(os.environ.get("SAPO_CACHE") or Path.home() / ".cache" / "sapo-rl")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda but no CUDA device is visible: use trainer.device=cpu")
    return torch.device(name)


def task_seed(config: Config) -> int:
    """The seed of the built-in task's problems and warm start (``sapo.task.seed``, resolved: null there
    means ``trainer.seed``)."""
    return config.sapo.task.seed


def policy_model_path(config: Config) -> tuple[Path, dict | None]:
    """The policy's directory, and the warm-start record when the built-in tiny model is used."""
    path = config.actor_rollout_ref.model.path
    if path is not None:
        return Path(path), None
    from sapo.demo.warm_start import DEFAULT_SPEC, warm_start, warm_start_info

    task, tiny, ws = config.sapo.task, config.sapo.tiny_model, config.sapo.warm_start
    spec = replace(
        DEFAULT_SPEC,
        arch=tiny.arch,
        hidden_size=tiny.hidden_size,
        intermediate_size=tiny.intermediate_size,
        num_hidden_layers=tiny.num_hidden_layers,
        num_attention_heads=tiny.num_attention_heads,
        num_key_value_heads=tiny.num_attention_heads,
        head_dim=tiny.hidden_size // tiny.num_attention_heads,
    )
    model_dir = warm_start(
        task.name,
        cache_dir=cache_dir() / "warm_start",
        seed=task_seed(config),
        knobs=dict(task.knobs),
        spec=spec,
        target_accuracy=ws.target_accuracy,
        check_every=ws.eval_every,
        max_steps=ws.max_steps,
        max_seconds=ws.max_seconds,
        batch_size=ws.batch_size,
        lr=ws.lr,
        num_threads=None,  # the run's own setting (trainer.cpu_threads, else torch's default)
        announce=lambda text: print(text, flush=True),  # most of a minute would pass in silence
    )
    return model_dir, warm_start_info(model_dir)


def data_files(config: Config, run_dir: Path) -> tuple[list[str], list[str]]:
    """Train and validation files; the built-in task's parquet files when ``data.train_files`` is null."""
    data = config.data
    if data.train_files is not None:
        val = data.val_files if data.val_files is not None else []
        return _as_list(data.train_files), _as_list(val)
    from sapo.data.tasks import generate_splits, get_task
    from sapo.data.writer import write_rows

    task_cfg = config.sapo.task
    task = get_task(task_cfg.name)
    _check_no_warm_start_problem_in_validation(config)
    try:
        train, test = generate_splits(
            task,
            train_size=task_cfg.num_train,
            test_size=task_cfg.num_val,
            seed=task_seed(config),
            knobs=dict(task_cfg.knobs),
        )
    except DataError as exc:
        asked = f"{task_cfg.num_train} + {task_cfg.num_val} = {task_cfg.num_train + task_cfg.num_val}"
        raise DataError(
            f"sapo.task.num_train + sapo.task.num_val = {asked} problems asked of the built-in task: {exc}. "
            "Lower sapo.task.num_train (raise trainer.total_epochs to keep the number of steps) or widen "
            "sapo.task.knobs"
        ) from exc
    folder = run_dir / DATA_DIR
    train_path = write_rows(train, folder / TRAIN_FILE)
    val_path = write_rows(test, folder / VAL_FILE)
    return [str(train_path)], [str(val_path)]


def _check_no_warm_start_problem_in_validation(config: Config) -> None:
    """The warm start (built-in tiny model) holds out its seed's first HELD_OUT problems; the built-in
    validation split is the first ``num_val`` of the same seed, so it must fit inside them."""
    from sapo.demo.warm_start import HELD_OUT

    num_val = config.sapo.task.num_val
    if config.actor_rollout_ref.model.path is None and num_val > HELD_OUT:
        raise ConfigError(
            f"sapo.task.num_val={num_val} is more than the {HELD_OUT} problems the warm start holds out, so "
            f"validation would score problems the warm-started model was trained on: use at most {HELD_OUT}"
        )


def _as_list(value) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def build_dataset(files: list[str], tokenizer, config: Config, max_samples: int) -> RLDataset:
    data = config.data
    rows = load_rows(files, prompt_key=data.prompt_key, on_bad_row=data.on_bad_row)
    if max_samples is not None and max_samples > 0:
        rows = rows[:max_samples]
    return RLDataset(
        rows,
        tokenizer,
        prompt_key=data.prompt_key,
        max_prompt_length=data.max_prompt_length,
        filter_overlong_prompts=data.filter_overlong_prompts,
        truncation=data.truncation,
        chat_template_kwargs=data.apply_chat_template_kwargs,
        reward_fn_key=data.reward_fn_key,
    )


def check_scorers(config: Config, datasets: dict) -> None:
    """Without a custom reward function every row's data source needs a built-in scorer: checked when the
    data is loaded, not at the first step's scoring (``datasets``: config key -> dataset or None)."""
    if config.custom_reward_function.path:
        return
    for key, dataset in datasets.items():
        unknown = [s for s in dataset.data_sources() if builtin_scorer(s) is None] if dataset else []
        if unknown:
            names = ", ".join(repr(s) for s in unknown)
            raise RewardError(
                f"{key} has rows whose {config.data.reward_fn_key!r} is {names}, which no built-in scorer "
                f"handles (known: {', '.join(known_data_sources())}), and no custom reward function is set: "
                f"{dispatch.FIX}"
            )


def build_reward(config: Config):
    """The reward manager with the user's scoring function (or the built-in dispatch by data_source)."""
    custom = config.custom_reward_function
    compute_score = load_custom_reward_function(custom.path, custom.name) if custom.path else None
    reward = config.reward_model
    kwargs = {
        "on_error": reward.on_error,
        "timeout_s": reward.timeout_s if custom.path else None,  # built-in scorers are bounded
        "max_error_fraction": reward.max_error_fraction,
    }
    if reward.reward_manager == "dapo":
        buffer = reward.overlong_buffer
        kwargs.update(  # enable=false: no penalty, whatever len says (verl's DAPO manager)
            overlong_buffer_len=buffer.len if buffer.enable else 0,
            overlong_penalty_factor=buffer.penalty_factor,
            max_response_length=buffer.max_resp_len,  # resolved: null means data.max_response_length
        )
    return build_reward_manager(reward.reward_manager, compute_score, **kwargs)


@dataclass
class Models:
    policy: torch.nn.Module  # sharded with FSDP2 when there are several processes
    tokenizer: object
    reference: torch.nn.Module | None
    path: Path
    warm_start: dict | None
    rollout_model: torch.nn.Module  # what the rollout engine samples from: the policy itself in one
    # process; an unsharded copy, refreshed after every step (sapo.distributed.fsdp), in several


def build_models(config: Config, device: torch.device, needs_reference: bool, world: World) -> Models:
    path, warm = world.on_main(lambda: policy_model_path(config))  # a warm start trains on rank 0 alone
    arr = config.actor_rollout_ref
    model_cfg, actor_fsdp = arr.model, arr.actor.fsdp_config
    policy, tokenizer = load_model_and_tokenizer(
        path, dtype=actor_fsdp.model_dtype, device=device, impl=model_cfg.impl
    )
    if model_cfg.enable_gradient_checkpointing:
        policy.gradient_checkpointing_enable()
    reference = None
    if needs_reference:
        reference = copy.deepcopy(policy).to(resolve_dtype(arr.ref.fsdp_config.model_dtype)).eval()
        reference.requires_grad_(False)
        shard_model(reference, world, settings.sharding(arr.ref.fsdp_config), device)
    rollout_model = policy if world.size == 1 else copy.deepcopy(policy)
    shard_model(policy, world, settings.sharding(actor_fsdp), device)
    return Models(
        policy=policy,
        tokenizer=tokenizer,
        reference=reference,
        path=path,
        warm_start=warm,
        rollout_model=rollout_model,
    )


def build_optimizer_and_scheduler(params: Iterable[torch.nn.Parameter], optim_config, total_steps: int):
    """AdamW + schedule from a config section (``actor_rollout_ref.actor.optim`` or ``critic.optim``).
    ``optim_config.total_training_steps`` wins over ``total_steps`` when it is positive (verl's key)."""
    if optim_config.total_training_steps and optim_config.total_training_steps > 0:
        total_steps = optim_config.total_training_steps
    optimizer = build_adamw(
        params,
        lr=optim_config.lr,
        weight_decay=optim_config.weight_decay,
        betas=optim_config.betas,
        eps=optim_config.eps,
    )
    warmup = warmup_steps(optim_config.lr_warmup_steps, optim_config.lr_warmup_steps_ratio, total_steps)
    scheduler = build_scheduler(
        optimizer,
        total_steps=total_steps,
        warmup=warmup,
        schedule=optim_config.lr_scheduler_type,
        min_lr_ratio=optim_config.min_lr_ratio,
        num_cycles=optim_config.num_cycles,
    )
    return optimizer, scheduler
