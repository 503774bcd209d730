"""Hypothesis settings for the bad-input fuzz tests, and a count of the generated cases.

Profile ``sapo-fuzz`` (loaded here): ``derandomize=True`` draws the examples from a seed derived from each
test's source, so every run (a developer's, CI's) tries the same inputs and a failure reproduces by
running the same test again; ``database=None`` because with fixed draws a database of past failures adds
nothing and would leave a ``.hypothesis`` folder behind. ``deadline=None``: timing is not what is tested
(and noisy machines make deadlines flaky). Set ``SAPO_FUZZ_PROFILE=sapo-fuzz-random`` to explore new,
random inputs (a failure prints the ``@reproduce_failure`` line to paste into the test).

Each property calls ``fuzz_cases.tick(name)`` once per generated input; the session's total is printed at
the end ("fuzz: N generated cases ran").
"""

from __future__ import annotations

import collections
import os

import pytest
from hypothesis import HealthCheck, settings

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("sapo-fuzz", derandomize=True, database=None, **_COMMON)
settings.register_profile("sapo-fuzz-random", derandomize=False, database=None, **_COMMON)
settings.load_profile(os.environ.get("SAPO_FUZZ_PROFILE", "sapo-fuzz"))

_CASES: collections.Counter = collections.Counter()


class CaseCounter:
    """Counts the inputs each property was run on (session-scoped, so hypothesis accepts it)."""

    def tick(self, name: str) -> None:
        _CASES[name] += 1


@pytest.fixture(scope="session")
def fuzz_cases() -> CaseCounter:
    return CaseCounter()


def pytest_terminal_summary(terminalreporter):
    if _CASES:
        per_test = ", ".join(f"{name} {count}" for name, count in sorted(_CASES.items()))
        terminalreporter.write_line(f"fuzz: {sum(_CASES.values())} generated cases ran ({per_test})")


@pytest.fixture(scope="session")
def monkeypatch_env_nan():
    """``SAPO_FUZZ_NAN=nan`` for the session: NaN reached through an ``${oc.env:...}`` interpolation."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SAPO_FUZZ_NAN", "nan")
        yield
