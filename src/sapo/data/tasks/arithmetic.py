"""Multi-digit arithmetic: ``"123+456="`` -> ``"579"``.

Default: addition of two operands drawn uniformly from 0-99 (10,000 distinct problems), answers written most
significant digit first. A ~1M-parameter model learns it on a CPU: its supervised warm start reaches 20%
greedy accuracy in a few hundred steps, and SAPO then adds 40-60 points in the demo. With operands up to
999 (the prototype in DESIGN.md) the warm start needs 550-1250 steps and SAPO added only 20-30 points in
our runs (docs/benchmarks.md). Knobs: the operand range and the operators (``+``, ``-``, ``*``).
"""

from __future__ import annotations

import random

from sapo.data.tasks.base import Knob, Task

CHARS = "0123456789+-*="  # with the 4 special tokens of the char tokenizer: an 18-token vocabulary


def make_problem(rng: random.Random, *, min_value: int, max_value: int, ops: str):
    a = rng.randint(min_value, max_value)
    b = rng.randint(min_value, max_value)
    op = rng.choice(ops)
    result = {"+": a + b, "-": a - b, "*": a * b}[op]
    return f"{a}{op}{b}=", str(result), {"a": a, "b": b, "op": op}


def score(solution_str: str, ground_truth) -> float:
    """1.0 when the response, stripped of surrounding whitespace, is exactly the answer's decimal text
    ("579"; not "0579", "579=", "57 9" or "+579"), else 0.0."""
    return 1.0 if solution_str.strip() == str(ground_truth).strip() else 0.0


def solution(row: dict) -> str:
    return str(row["reward_model"]["ground_truth"])


def check_knobs(*, min_value: int, max_value: int, ops: str) -> None:
    from sapo.errors import DataError

    if min_value < 0 or max_value < min_value:
        raise DataError(
            f"arithmetic needs 0 <= min_value <= max_value (got {min_value}, {max_value}): "
            "pass e.g. --min-value 0 --max-value 99"
        )
    if not ops or set(ops) - set("+-*"):
        raise DataError(f"arithmetic ops must be a non-empty subset of '+-*' (got {ops!r})")


TASK = Task(
    name="arithmetic",
    data_source="sapo/arithmetic",
    ability="arithmetic",
    chars=CHARS,
    knobs=(
        Knob("min_value", int, 0, "smallest operand"),
        Knob("max_value", int, 99, "largest operand (99: up to 2-digit numbers; 999: up to 3 digits)"),
        Knob("ops", str, "+", "operators to draw from, a subset of '+-*'"),
    ),
    make_problem=make_problem,
    score=score,
    solution=solution,
    check_knobs=check_knobs,
    description=__doc__.strip().splitlines()[0],
)
