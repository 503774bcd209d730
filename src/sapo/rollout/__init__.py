"""Rollout engines behind one protocol (`RolloutEngine`): ``hf`` (default) and ``vllm`` (optional).

Each engine registers itself (:mod:`sapo.rollout.registry`) in its own module; importing this package
registers the built-in ones.
"""

from __future__ import annotations

from sapo.rollout import hf, vllm_engine  # noqa: F401  (register the built-in engines)
from sapo.rollout.base import RolloutBatch, RolloutEngine, SamplingParams
from sapo.rollout.registry import ROLLOUT_ENGINES, register_rollout_engine, rollout_engine_entry


def make_rollout_engine(name: str, model, tokenizer, **settings) -> RolloutEngine:
    """The engine registered as ``name`` (``hf``, ``vllm``, ...), built on ``model`` and ``tokenizer``;
    ``settings`` are its own keyword arguments (the trainer passes those its entry names)."""
    return rollout_engine_entry(name).load()(model, tokenizer, **settings)


__all__ = [
    "ROLLOUT_ENGINES",
    "RolloutBatch",
    "RolloutEngine",
    "SamplingParams",
    "make_rollout_engine",
    "register_rollout_engine",
]
