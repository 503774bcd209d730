"""Countdown: reach the target with these numbers, ``"3,7,5>26:"`` -> ``"3*7+5"``.

Each number must be used exactly once, with the operators allowed by the task (``+``, ``-``, ``*`` and
parentheses; no division, so every value is an integer). The response is the expression alone: ``"3*7+5"``
scores 1.0, ``"3*7+5=26"``, an expression that reuses or leaves out a number, or one with another value
scores 0.0 (the rule of TinyZero's countdown scorer, without its 0.1 format score).

Problems are built backwards so that every target is reachable: draw the numbers, shuffle them, join them
with random operators, and take the expression's value (>= 0) as the target; that expression is the
reference solution. Knobs: how many numbers, their range, the operators.
"""

from __future__ import annotations

import random
import re
from collections import Counter

from sapo.data.tasks.base import Knob, Task

CHARS = "0123456789+-*()>,:"
_TOKEN = re.compile(r"\s*(?:(\d+)|(.))")


def make_problem(rng: random.Random, *, num_numbers: int, min_number: int, max_number: int, ops: str):
    while True:
        numbers = [rng.randint(min_number, max_number) for _ in range(num_numbers)]
        order = numbers[:]
        rng.shuffle(order)
        expression = str(order[0])
        for value in order[1:]:
            expression += rng.choice(ops) + str(value)
        target = evaluate(expression)
        if target is not None and target >= 0:
            break
    prompt = ",".join(map(str, numbers)) + f">{target}:"
    ground_truth = {"target": target, "numbers": numbers}
    return prompt, ground_truth, {"solution": expression}


def evaluate(expression: str) -> int | None:
    """The value of an expression of non-negative integers, ``+ - *`` and parentheses, with the usual
    precedence; None when it does not parse (any other character, unary minus, unbalanced parentheses)."""
    return _evaluate_with_numbers(expression, [])


def _tokens(expression: str) -> list[str] | None:
    tokens = []
    for number, other in _TOKEN.findall(expression.strip()):
        if number:
            tokens.append(number)
        elif other in "+-*()":
            tokens.append(other)
        else:
            return None
    return tokens


def _evaluate_with_numbers(expression: str, numbers: list[int]) -> int | None:
    """Recursive descent over ``expr := term (('+'|'-') term)*``, ``term := factor ('*' factor)*``,
    ``factor := NUMBER | '(' expr ')'``; appends every number literal to ``numbers``."""
    tokens = _tokens(expression)
    if not tokens or len(expression) > 200:
        return None
    pos = 0

    def expr() -> int:
        nonlocal pos
        value = term()
        while pos < len(tokens) and tokens[pos] in "+-":
            op = tokens[pos]
            pos += 1
            value = value + term() if op == "+" else value - term()
        return value

    def term() -> int:
        nonlocal pos
        value = factor()
        while pos < len(tokens) and tokens[pos] == "*":
            pos += 1
            value *= factor()
        return value

    def factor() -> int:
        nonlocal pos
        if pos >= len(tokens):
            raise ValueError("unexpected end")
        token = tokens[pos]
        pos += 1
        if token.isdigit():
            numbers.append(int(token))
            return int(token)
        if token == "(":
            value = expr()
            if pos >= len(tokens) or tokens[pos] != ")":
                raise ValueError("missing )")
            pos += 1
            return value
        raise ValueError(f"unexpected {token!r}")

    try:
        value = expr()
    except ValueError:
        return None
    return value if pos == len(tokens) else None


def score(solution_str: str, ground_truth) -> float:
    """1.0 when the response is an expression that uses each given number exactly once and equals the
    target, else 0.0."""
    used: list[int] = []
    value = _evaluate_with_numbers(solution_str, used)
    if value is None:
        return 0.0
    same_numbers = Counter(used) == Counter(int(n) for n in ground_truth["numbers"])
    return 1.0 if same_numbers and value == int(ground_truth["target"]) else 0.0


def solution(row: dict) -> str:
    return str(row["extra_info"]["solution"])


def check_knobs(*, num_numbers: int, min_number: int, max_number: int, ops: str) -> None:
    from sapo.errors import DataError

    if num_numbers < 2:
        raise DataError(f"countdown needs num_numbers >= 2 (got {num_numbers})")
    if min_number < 0 or max_number < min_number:
        raise DataError(
            f"countdown needs 0 <= min_number <= max_number (got {min_number}, {max_number}): "
            "pass e.g. --min-number 1 --max-number 20"
        )
    if not ops or set(ops) - set("+-*"):
        raise DataError(f"countdown ops must be a non-empty subset of '+-*' (got {ops!r})")
    if "+" not in ops and "*" not in ops:
        raise DataError("countdown ops must include '+' or '*' so that targets >= 0 exist")


TASK = Task(
    name="countdown",
    data_source="sapo/countdown",
    ability="countdown",
    chars=CHARS,
    knobs=(
        Knob("num_numbers", int, 3, "how many numbers each problem gives (all must be used)"),
        Knob("min_number", int, 1, "smallest number"),
        Knob("max_number", int, 20, "largest number"),
        Knob("ops", str, "+-", "operators the reference solutions use, a subset of '+-*'"),
    ),
    make_problem=make_problem,
    score=score,
    solution=solution,
    check_knobs=check_knobs,
    description=__doc__.strip().splitlines()[0],
)
