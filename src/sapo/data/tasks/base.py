"""What a built-in task is, and how its rows are laid out.

A task generates verifiable problems from a seed with no download. Each problem becomes one row in verl's
dataset layout::

    {"data_source": "sapo/arithmetic",
     "prompt": [{"role": "user", "content": "123+456="}],
     "ability": "arithmetic",
     "reward_model": {"style": "rule", "ground_truth": "579"},
     "extra_info": {"split": "train", "index": 0, "raw_prompt": True, ...task fields}}

``extra_info["raw_prompt"] = True`` tells :class:`sapo.data.dataset.RLDataset` to feed the message content to
the model as plain text, without a chat template: the tiny models of the built-in tasks have a character
vocabulary of a few tokens that a chat template's role names would not fit in.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Knob:
    """A difficulty setting of a task, exposed as ``--name`` on ``sapo data TASK``."""

    name: str
    type: type
    default: Any
    help: str


@dataclass(frozen=True)
class Task:
    """A built-in verifiable task.

    ``make_problem(rng, **knobs)`` draws one problem and returns ``(prompt_text, ground_truth, extra)``;
    ``score(solution_str, ground_truth)`` gives 1.0 for a correct answer and 0.0 otherwise;
    ``solution(row)`` gives a correct answer text for supervised warm-start; ``chars`` is every character
    a prompt or a correct answer can contain (the vocabulary of the task's tiny model).
    """

    name: str
    data_source: str
    ability: str
    chars: str
    knobs: tuple[Knob, ...]
    make_problem: Callable[..., tuple[str, Any, dict]]
    score: Callable[[str, Any], float]
    solution: Callable[[dict], str]
    check_knobs: Callable[..., None] = field(default=lambda **_: None)
    description: str = ""

    def resolve_knobs(self, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """The task's knob values: defaults updated by ``overrides`` (unknown names are an error)."""
        from sapo.errors import DataError

        values = {knob.name: knob.default for knob in self.knobs}
        for name, value in (overrides or {}).items():
            if name not in values:
                known = ", ".join(values) or "none"
                raise DataError(f"task {self.name!r} has no knob {name!r}: its knobs are {known}")
            if value is not None:
                values[name] = value
        self.check_knobs(**values)
        return values


def make_row(task: Task, prompt_text: str, ground_truth: Any, extra: dict, split: str, index: int) -> dict:
    """One row in verl's layout (see the module docstring)."""
    return {
        "data_source": task.data_source,
        "prompt": [{"role": "user", "content": prompt_text}],
        "ability": task.ability,
        "reward_model": {"style": "rule", "ground_truth": ground_truth},
        "extra_info": {"split": split, "index": index, "raw_prompt": True, **extra},
    }


def generate_splits(
    task: Task,
    *,
    train_size: int,
    test_size: int,
    seed: int,
    knobs: dict | None = None,
    allow_fewer: bool = False,
) -> tuple[list[dict], list[dict]]:
    """Draw ``train_size + test_size`` distinct problems (by prompt) from ``seed``; the first
    ``test_size`` form the test split, the rest the train split, so the two never share a prompt.

    Deterministic: the same arguments give the same rows, in the same order. The problems of a seed (and
    knobs) form one sequence whatever the sizes, so a smaller test split is a prefix of a larger one, and
    the train split of ``test_size=R`` never holds a test prompt of any ``test_size <= R``. When the knobs
    allow fewer distinct problems than asked for, ``allow_fewer`` shortens the train split instead of
    raising.
    """
    from sapo.errors import DataError

    if train_size < 0 or test_size < 0 or train_size + test_size == 0:
        raise DataError(
            f"train_size and test_size must be >= 0 and not both 0 (got {train_size}, {test_size})"
        )
    values = task.resolve_knobs(knobs)
    rng = random.Random(f"{task.name}:{seed}")
    wanted = train_size + test_size
    seen: set[str] = set()
    problems = []
    attempts = 0
    while len(problems) < wanted:
        attempts += 1
        if attempts > 20 * wanted + 1000:
            if allow_fewer and len(problems) > test_size:
                break
            raise DataError(
                f"task {task.name!r} with knobs {values} could only produce {len(problems)} distinct "
                f"problems of the {wanted} asked for: ask for fewer rows or widen the knobs"
            )
        prompt_text, ground_truth, extra = task.make_problem(rng, **values)
        if prompt_text in seen:
            continue
        seen.add(prompt_text)
        problems.append((prompt_text, ground_truth, extra))
    test = [make_row(task, *p, split="test", index=i) for i, p in enumerate(problems[:test_size])]
    train = [make_row(task, *p, split="train", index=i) for i, p in enumerate(problems[test_size:])]
    return train, test
