"""Rollout engines behind one protocol (`RolloutEngine`): ``hf`` (default) and ``vllm`` (optional)."""

from __future__ import annotations

from sapo.errors import UserError
from sapo.rollout.base import RolloutBatch, RolloutEngine, SamplingParams

ENGINE_NAMES = ("hf", "vllm")


def make_rollout_engine(name: str, model, tokenizer, **kwargs) -> RolloutEngine:
    """The engine called ``name`` (``hf`` or ``vllm``), built on ``model`` and ``tokenizer``.

    ``kwargs`` go to the engine class: `sapo.rollout.hf.HFRolloutEngine` or
    `sapo.rollout.vllm_engine.VLLMRolloutEngine`.
    """
    if name == "hf":
        from sapo.rollout.hf import HFRolloutEngine

        return HFRolloutEngine(model, tokenizer, **kwargs)
    if name == "vllm":
        from sapo.rollout.vllm_engine import VLLMRolloutEngine

        return VLLMRolloutEngine(model, tokenizer, **kwargs)
    raise UserError(
        f"unknown rollout engine {name!r}: set actor_rollout_ref.rollout.name to one of "
        f"{', '.join(ENGINE_NAMES)}"
    )


__all__ = ["ENGINE_NAMES", "RolloutBatch", "RolloutEngine", "SamplingParams", "make_rollout_engine"]
