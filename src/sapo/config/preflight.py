"""Checks of a configuration against this machine and the model's files, run by ``sapo config`` and at the
start of ``sapo train`` (before any warm start or model load), so the two refuse the same things.

The config layer (`sapo.config.validate`) checks values against each other; this module checks what only
the environment can tell, cheaply (no model is built, no weights are read):

- the rollout engine can be built here (``rollout.name=vllm`` needs the vllm package);
- ``trainer.device=cuda`` has a CUDA device;
- the run directory (``trainer.default_local_dir``) is not a file and can be written;
- the policy's directory holds a model (config.json, readable weights), for a local path;
- ``data.max_response_length`` leaves room for a prompt in the model's context (its
  ``max_position_embeddings``, or ``rollout.max_model_len`` for vllm). The longest actual prompt is checked
  when the data is loaded (`check_context`), where the lengths are known.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from sapo.config.schema import Config
from sapo.errors import ConfigError, UserError


def preflight(config: Config) -> None:
    """Raise one ConfigError listing every problem (see the module docstring)."""
    problems = _engine_problems(config) + _device_problems(config) + _run_dir_problems(config)
    model_config, model_problems = _model_config(config)
    problems += model_problems
    context, source = model_context(config, model_config)
    response = config.data.max_response_length
    if context is not None and response >= context:
        problems.append(
            f"data.max_response_length={response} leaves no room for a prompt in the model's context of "
            f"{context} tokens ({source}): lower it below {context}, leaving room for the longest prompt, "
            f"e.g. data.max_response_length={max(1, context // 2)}"
        )
    if problems:
        raise ConfigError("this run cannot start here:\n  " + "\n  ".join(problems))


def _engine_problems(config: Config) -> list[str]:
    if config.actor_rollout_ref.rollout.name == "vllm" and importlib.util.find_spec("vllm") is None:
        return [
            "actor_rollout_ref.rollout.name=vllm but the vllm package is not installed in this Python: "
            'pip install -e ".[vllm]" (docs/vllm.md has the CPU and GPU pins), or set '
            "actor_rollout_ref.rollout.name=hf"
        ]
    return []


def _run_dir_problems(config: Config) -> list[str]:
    """The run directory can be created and written (checked without writing: ``sapo config`` writes
    nothing; ``sapo train`` still probes with a real write when it creates it)."""
    path = Path(config.trainer.default_local_dir).expanduser()
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    fix = "set trainer.default_local_dir to a writable directory (a path that is not a file)"
    if existing is not None and not existing.is_dir():
        return [f"cannot use {str(path)!r} as the run directory ({str(existing)!r} is a file): {fix}"]
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        return [f"cannot use {str(path)!r} as the run directory ({str(existing)!r} is not writable): {fix}"]
    return []


def _device_problems(config: Config) -> list[str]:
    if config.trainer.device != "cuda":
        return []
    import torch

    if torch.cuda.is_available():
        return []
    return ["trainer.device=cuda but no CUDA device is visible: use trainer.device=cpu (or auto)"]


def _model_config(config: Config) -> tuple[dict | None, list[str]]:
    """The policy's parsed config.json (None for the built-in warm-started model and for a path that is
    not a local directory, e.g. a hub id the loader will refuse with its own message)."""
    path = config.actor_rollout_ref.model.path
    if path is None or not Path(path).exists():
        return None, []
    from sapo.models.loading import check_model_dir, check_weights

    try:
        model_config = check_model_dir(Path(path))
        check_weights(Path(path))
    except UserError as err:
        return None, [str(err)]
    return model_config, []


def model_context(config: Config, model_config: dict | None) -> tuple[int | None, str]:
    """The context the rollout engine will allow, and where that number comes from."""
    rollout = config.actor_rollout_ref.rollout
    if rollout.name == "vllm" and rollout.max_model_len is not None:
        return rollout.max_model_len, "actor_rollout_ref.rollout.max_model_len"
    if config.actor_rollout_ref.model.path is None:  # the built-in tiny model, warm-started on demand
        from sapo.demo.warm_start import DEFAULT_SPEC

        return DEFAULT_SPEC.max_position_embeddings, "the built-in model's max_position_embeddings"
    if model_config is None:
        return None, ""
    context = model_config.get("max_position_embeddings")
    if not isinstance(context, int):
        return None, ""
    return context, f"max_position_embeddings in {Path(config.actor_rollout_ref.model.path) / 'config.json'}"


def engine_context(config: Config, rollout_model) -> int | None:
    """The context the built engine allows: vllm's ``max_model_len`` when set, else the model's
    ``max_position_embeddings`` (what both engines check each prompt against)."""
    rollout = config.actor_rollout_ref.rollout
    if rollout.name == "vllm" and rollout.max_model_len is not None:
        return rollout.max_model_len
    return getattr(rollout_model.config, "max_position_embeddings", None)


def check_context(config: Config, context: int | None, datasets: dict) -> None:
    """The longest prompt of each dataset (``config key -> dataset or None``) plus
    ``data.max_response_length`` must fit in ``context``; the error says by how much and gives fixes
    that fit (never a negative length)."""
    if context is None:
        return
    response = config.data.max_response_length
    for key, dataset in datasets.items():
        if dataset is None or len(dataset) == 0:
            continue
        longest = max(dataset.prompt_lengths())
        if longest + response <= context:
            continue
        fixes = []
        if context - response >= 1:
            fixes.append(
                f"data.max_prompt_length={context - response} with data.filter_overlong_prompts=true (drops "
                "the longer prompts) or data.truncation=left"
            )
        if context - longest >= 1:
            fixes.append(f"data.max_response_length={context - longest}")
        raise ConfigError(
            f"the longest prompt in {key} has {longest} tokens, and with data.max_response_length={response} "
            f"that is {longest + response} tokens, more than the model's context of {context}: set "
            + (" or ".join(fixes) if fixes else "shorter prompts and a shorter response length")
        )
