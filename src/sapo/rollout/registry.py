"""The rollout-engine registry: each engine registers its class loader, the config keys it takes and its
own checks of their values, in the engine's own module.

An entry's ``settings`` maps the engine's keyword argument to the config key it is read from (e.g.
``{"gpu_memory_utilization": "actor_rollout_ref.rollout.gpu_memory_utilization", "seed": "trainer.seed"}``);
``check(settings)`` returns problems (text naming the key and the fix) for values the engine cannot use.
The config layer reads the keys and runs the check before any compute; this module never sees a config.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sapo.errors import unknown_name


@dataclass(frozen=True)
class RolloutEngineEntry:
    name: str
    load: Callable[[], type]  # returns the engine class; heavy imports (vLLM) happen when it is built
    settings: dict[str, str] = field(default_factory=dict)  # keyword argument -> config key
    check: Callable[[dict], list[str]] | None = None  # problems with the settings' values


ROLLOUT_ENGINES: dict[str, RolloutEngineEntry] = {}


def register_rollout_engine(
    name: str,
    load: Callable[[], type],
    *,
    settings: dict[str, str] | None = None,
    check: Callable[[dict], list[str]] | None = None,
) -> None:
    """Register an engine (replaces an earlier one of that name)."""
    ROLLOUT_ENGINES[name] = RolloutEngineEntry(name, load, dict(settings or {}), check)


def rollout_engine_entry(name: str) -> RolloutEngineEntry:
    if name not in ROLLOUT_ENGINES:
        raise unknown_name("rollout engine", name, "actor_rollout_ref.rollout.name", ROLLOUT_ENGINES)
    return ROLLOUT_ENGINES[name]


def engine_setting_problems(name: str, settings: dict) -> list[str]:
    entry = rollout_engine_entry(name)
    return entry.check(settings) if entry.check is not None else []
