"""``default_compute_score``: the scoring function for a row, chosen by its ``data_source``.

- ``openai/gsm8k``: :mod:`sapo.rewards.gsm8k` (strict ``#### answer``), 1.0 / 0.0;
- ``lighteval/MATH``, ``DigitalLearningGmbH/MATH-lighteval``, ``HuggingFaceH4/MATH-500``, ``math_dapo``,
  ``math``, ``aime*``: :mod:`sapo.rewards.math` (last ``\\boxed{}``), 1.0 / 0.0;
- ``sapo/arithmetic``, ``sapo/countdown``: the built-in task's scorer (:mod:`sapo.data.tasks`), 1.0 / 0.0.

``math_dapo`` and ``aime*`` differ from verl, whose DAPO scorer reads an ``Answer:`` line and scores
+1 / -1: here they are boxed-answer data like MATH, scored 1 / 0. Pass a custom reward function to get
other rules.
"""

from __future__ import annotations

from sapo.errors import RewardError

MATH_DATA_SOURCES = frozenset(
    {
        "lighteval/MATH",
        "DigitalLearningGmbH/MATH-lighteval",
        "HuggingFaceH4/MATH-500",
        "math_dapo",
        "math",
    }
)


def builtin_scorer(data_source: str):
    """The built-in ``score(solution_str, ground_truth)`` for ``data_source``, or None if there is none."""
    if data_source == "openai/gsm8k":
        from sapo.rewards import gsm8k

        return gsm8k.compute_score
    if data_source in MATH_DATA_SOURCES or data_source.startswith("aime"):
        from sapo.rewards import math

        return math.compute_score
    from sapo.data.tasks import TASKS_BY_DATA_SOURCE

    task = TASKS_BY_DATA_SOURCE.get(data_source)
    return None if task is None else task.score


def known_data_sources() -> list[str]:
    from sapo.data.tasks import TASKS_BY_DATA_SOURCE

    return ["openai/gsm8k", *sorted(MATH_DATA_SOURCES), "aime*", *TASKS_BY_DATA_SOURCE]


FIX = (
    "write a reward function and pass it with custom_reward_function.path=FILE.py "
    "custom_reward_function.name=FUNCTION"
)


def default_compute_score(data_source: str, solution_str: str, ground_truth, extra_info=None) -> float:
    """Score ``solution_str`` against ``ground_truth`` with the scorer registered for ``data_source``."""
    score = builtin_scorer(data_source)
    if score is None:
        raise RewardError(
            f"no built-in scorer for data_source {data_source!r} (known: {', '.join(known_data_sources())}): "
            + FIX
        )
    return score(solution_str, ground_truth)
