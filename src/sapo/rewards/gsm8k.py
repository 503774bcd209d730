"""GSM8K scoring: the reference answer follows ``#### `` at the end of the solution.

Semantics of verl's ``gsm8k.py`` scorer:

- only the last 300 characters of the response are searched (long responses make regexes slow);
- ``strict`` (the default): the answer is the last ``#### <number>`` in the response, where ``<number>``
  is an optional ``-`` then digits, dots and commas; commas and ``$`` are removed. No ``####``: no answer.
- ``flexible``: the answer is the last number anywhere in the response that is not ``""`` or ``"."``
  (taken as written: ``"1,000"`` stays ``"1,000"``).
- score: ``score`` (1.0) when the answer equals the ground truth string exactly, ``format_score`` (0.0)
  when an answer was found but differs, 0 when none was found.
"""

from __future__ import annotations

import re

CLIP_CHARS = 300
_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
_FLEXIBLE = re.compile(r"(\-?[0-9\.\,]+)")


def extract_solution(solution_str: str, method: str = "strict") -> str | None:
    if method not in ("strict", "flexible"):
        raise ValueError(f"method must be 'strict' or 'flexible' (got {method!r})")
    tail = solution_str[-CLIP_CHARS:]
    if method == "strict":
        found = _STRICT.findall(tail)
        return found[-1].replace(",", "").replace("$", "") if found else None
    for candidate in reversed(_FLEXIBLE.findall(tail)):
        if candidate not in ("", "."):
            return candidate
    return None


def compute_score(
    solution_str: str,
    ground_truth: str,
    method: str = "strict",
    format_score: float = 0.0,
    score: float = 1.0,
) -> float:
    answer = extract_solution(solution_str, method=method)
    if answer is None:
        return 0.0
    return score if answer == str(ground_truth) else format_score
