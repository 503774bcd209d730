"""``SamplingParams`` fuzzed with every type a caller might pass: values inside the documented ranges are
accepted, everything else is a ``UserError`` naming the parameter (the config keys
temperature/top_p/top_k/n are fuzzed through ``validate`` in test_fuzz_config.py)."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sapo.errors import UserError
from sapo.rollout.base import SamplingParams

ANY = st.one_of(
    st.integers(-5, 10),
    st.sampled_from([10**30, -(10**30), True, False, None, "", "1", "1.0", "greedy", [1], (0.5,), {"n": 1}]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-2, 2).map(np.float64),
    st.integers(-2, 8).map(np.int64),
)
FIELDS = ("n", "temperature", "top_p", "top_k", "max_new_tokens", "do_sample", "seed")


def is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_real(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )


def valid(name: str, value) -> bool:
    """The documented range of each parameter (SamplingParams' docstring), written independently."""
    if name in ("n", "max_new_tokens"):
        return is_int(value) and value >= 1
    if name == "temperature":
        return is_real(value) and math.isfinite(value) and value >= 0
    if name == "top_p":
        return is_real(value) and 0 < value <= 1
    if name == "top_k":
        return is_int(value) and value >= -1
    if name == "do_sample":
        return isinstance(value, (bool, np.bool_))
    return value is None or is_int(value)  # seed


@settings(max_examples=400)
@given(values=st.fixed_dictionaries({}, optional={name: ANY for name in FIELDS}))
def test_sampling_params_accept_valid_values_and_name_bad_ones(fuzz_cases, values):
    fuzz_cases.tick("sampling: SamplingParams")
    bad = [name for name, value in values.items() if not valid(name, value)]
    try:
        params = SamplingParams(**values)
    except UserError as err:
        assert bad, f"{values} refused: {err}"
        assert any(str(err).startswith(name) for name in bad), (values, str(err))
        return
    assert not bad, f"{values} accepted, but {bad} are outside their ranges"
    assert params.greedy == (not params.do_sample or params.temperature == 0)
