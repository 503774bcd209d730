"""Custom reward functions, exactly as verl users write them: a ``.py`` file defining
``fn(data_source, solution_str, ground_truth, extra_info) -> float | dict`` (a dict carries ``"score"`` and
any extra values to log), selected with ``custom_reward_function.path`` and ``.name``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from sapo.errors import RewardError

DEFAULT_FUNCTION_NAME = "compute_score"  # verl's default for custom_reward_function.name


class CustomRewardFunction:
    """A function loaded from a file. Callable like the function itself, and picklable (it pickles as
    ``(path, name)`` and reloads the file), so it can run in the reward worker processes that enforce
    timeouts."""

    def __init__(self, path: str | Path, name: str = DEFAULT_FUNCTION_NAME):
        self.path = str(Path(path).resolve())
        self.name = name
        self.function = _load(self.path, name)

    def __call__(self, *args, **kwargs):
        return self.function(*args, **kwargs)

    def __reduce__(self):
        return (CustomRewardFunction, (self.path, self.name))

    def __repr__(self) -> str:
        return f"{self.name} from {self.path}"


def load_custom_reward_function(path: str | Path, name: str | None = DEFAULT_FUNCTION_NAME):
    """Load function ``name`` (default ``compute_score``) from the Python file ``path``."""
    return CustomRewardFunction(path, name or DEFAULT_FUNCTION_NAME)


def _load(path: str, name: str):
    file = Path(path)
    if not file.is_file():
        raise RewardError(
            f"custom reward function file {path} does not exist: set custom_reward_function.path to an "
            "existing .py file"
        )
    module_name = f"sapo_custom_reward_{abs(hash(path))}"
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise RewardError(f"cannot import {path} as Python: custom_reward_function.path must be a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as err:  # a script's sys.exit() at import must not end the run silently
        del sys.modules[module_name]
        raise RewardError(
            f"importing custom reward file {path} failed with {type(err).__name__}: {err}: fix the file"
        ) from err
    function = getattr(module, name, None)
    if not callable(function):
        defined = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        raise RewardError(
            f"{path} defines no function {name!r} (callables there: {', '.join(defined) or 'none'}): set "
            "custom_reward_function.name to the function's name"
        )
    return function
