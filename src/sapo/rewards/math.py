"""Scoring of math answers written as ``\\boxed{...}`` (MATH, DAPO-Math, AIME style data).

The prediction is the content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in the response; a response
without one scores 0. The ground truth is the bare answer (``"\\frac{1}{2}"``) or itself boxed.

Equivalence:

- with ``math-verify`` installed (``pip install sapo-rl[math]``): both are parsed with ``math_verify.parse``
  and compared with ``math_verify.verify`` (symbolic and numeric equality: ``0.5`` equals ``\\frac12``);
- otherwise (or with ``use_math_verify=False``): the normalised string comparison below, a version of the
  Hendrycks MATH normalisation (arXiv 2103.03874) that verl's ``math_reward.py`` also uses. Both sides are
  normalised, then equal strings, or equal numbers when both parse as plain decimals, score 1.0:

  1. drop whitespace, ``$`` and ``\\$``, ``\\!``, ``\\left``/``\\right``, ``^\\circ``/``^{\\circ}``,
     ``\\%`` and ``%``, a trailing ``.``; ``\\text{...}`` and ``\\mbox{...}`` keep only their content;
  2. ``\\dfrac``/``\\tfrac`` -> ``\\frac``; ``\\frac12`` -> ``\\frac{1}{2}``; ``\\sqrt2`` -> ``\\sqrt{2}``;
  3. a plain ``a/b`` of integers -> ``\\frac{a}{b}``; ``.5`` -> ``0.5``; ``1,000`` -> ``1000``;
  4. a single-letter assignment ``x=3`` -> ``3``.

  It misses equivalences math-verify finds (``\\frac{1}{2}`` vs ``0.5``, reordered sums) and never calls
  different answers equal.
"""

from __future__ import annotations

import re
import threading

_BOX_STARTS = ("\\boxed", "\\fbox")


def last_boxed_content(text: str) -> str | None:
    """The content of the last ``\\boxed{...}``/``\\fbox{...}`` (braces balanced), or of ``\\boxed x``."""
    start = max(text.rfind(marker) for marker in _BOX_STARTS)
    if start < 0:
        return None
    rest = text[start:]
    brace = rest.find("{")
    head = rest[: brace if brace >= 0 else len(rest)]
    if brace < 0 or head.strip() not in _BOX_STARTS:  # "\boxed 5" form
        match = re.match(r"\\(?:boxed|fbox) +([^\s$]+)", rest)
        return match.group(1) if match else None
    depth = 0
    for i in range(brace, len(rest)):
        depth += {"{": 1, "}": -1}.get(rest[i], 0)
        if depth == 0:
            return rest[brace + 1 : i]
    return None  # unbalanced braces: no answer


def normalize_answer(answer: str) -> str:
    """The normalised string of the fallback comparison (steps listed in the module docstring)."""
    s = answer.strip()
    s = re.sub(r"\\(?:text|mbox|textbf|mathrm)\{([^{}]*)\}", r"\1", s)
    for token in ("\\left", "\\right", "\\!", "^{\\circ}", "^\\circ", "\\%", "%", "\\$", "$"):
        s = s.replace(token, "")
    s = re.sub(r"\s+", "", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac(\d)\{", r"\\frac{\1}{", s)
    s = re.sub(r"\\sqrt(\d+)", r"\\sqrt{\1}", s)
    s = s.rstrip(".")
    s = re.sub(r"^[a-zA-Z]=", "", s)
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    s = re.sub(r"^(-?)\.(\d)", r"\g<1>0.\2", s)
    match = re.fullmatch(r"(-?\d+)/(\d+)", s)
    if match:
        s = f"\\frac{{{match.group(1)}}}{{{match.group(2)}}}"
    return s


def strings_equivalent(prediction: str, ground_truth: str) -> bool:
    a, b = normalize_answer(prediction), normalize_answer(ground_truth)
    if a == b:
        return True
    number = r"-?\d+(\.\d+)?"
    return bool(re.fullmatch(number, a) and re.fullmatch(number, b) and float(a) == float(b))


def math_verify_available() -> bool:
    try:
        import math_verify  # noqa: F401
    except ImportError:
        return False
    return True


def _math_verify_equivalent(prediction: str, ground_truth: str) -> bool:
    from math_verify import parse, verify

    # math-verify's own timeouts use signal.alarm, which only works in the main thread.
    seconds = 5 if threading.current_thread() is threading.main_thread() else None
    gold = parse(f"\\boxed{{{ground_truth}}}", parsing_timeout=seconds)
    pred = parse(f"\\boxed{{{prediction}}}", parsing_timeout=seconds)
    return bool(gold and pred and verify(gold, pred, timeout_seconds=seconds))


def compute_score(solution_str: str, ground_truth, use_math_verify: bool | None = None) -> float:
    """1.0 when the last boxed answer of ``solution_str`` is equivalent to ``ground_truth``, else 0.0.
    ``use_math_verify=None`` uses math-verify when it is installed."""
    prediction = last_boxed_content(solution_str)
    if prediction is None:
        return 0.0
    truth = str(ground_truth)
    truth = last_boxed_content(truth) or truth
    if use_math_verify is None:
        use_math_verify = math_verify_available()
    if use_math_verify and _math_verify_equivalent(prediction, truth):
        return 1.0
    return 1.0 if strings_equivalent(prediction, truth) else 0.0
