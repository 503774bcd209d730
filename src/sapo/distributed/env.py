"""What a launcher (torchrun, `sapo.distributed.launch`) tells a process through its environment. No torch
import here: the CLI reads it before deciding whether to start processes."""

from __future__ import annotations

import os

from sapo.errors import ConfigError


def env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None:
        return default
    if not text.strip().isdigit():
        raise ConfigError(f"{name}={text!r} is not a number: unset it or launch with torchrun")
    return int(text)


def launched_world_size() -> int:
    """The process count a launcher announces in ``WORLD_SIZE``; 1 without one."""
    return env_int("WORLD_SIZE", 1)
