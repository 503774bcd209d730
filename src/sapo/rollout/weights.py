"""Weights as a stream of ``(name, tensor)`` pairs: what every engine's ``update_weights`` takes.

A stream is the common form of FSDP2's ``full_tensor()`` gathers (one parameter at a time, never the whole
model twice in memory), vLLM's ``reload_weights(weights_iterator=...)`` and a plain ``state_dict().items()``.
Names are the Hugging Face checkpoint names (``model.layers.0.self_attn.q_proj.weight``), which both the
transformers models and sapo's native model use.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import torch

from sapo.errors import UserError

WeightStream = Iterable[tuple[str, torch.Tensor]]


def weight_stream(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The model's state as ``(name, detached tensor)`` pairs, lazily, sharing the model's storage."""
    for name, tensor in model.state_dict().items():
        yield name, tensor.detach()


def check_is_stream(weights) -> None:
    """A clear error for the pre-stream call forms (a model, a state dict)."""
    if isinstance(weights, (torch.nn.Module, Mapping)):
        raise UserError(
            f"update_weights takes (name, tensor) pairs, not a {type(weights).__name__}: pass "
            "sapo.rollout.weights.weight_stream(model) or state_dict.items()"
        )


@torch.no_grad()
def copy_weights_into(model: torch.nn.Module, weights: WeightStream) -> int:
    """Copy each streamed tensor into ``model``'s tensor of that name; return how many were copied.

    A tensor that already is the model's own storage (the engine samples from the trainer's model) is
    skipped, so on one device a full update costs a walk over the names. A name the model does not have, or
    a shape that differs, is an error naming it; names not streamed keep their values (partial updates).
    """
    check_is_stream(weights)
    own = model.state_dict()
    copied = 0
    for name, tensor in weights:
        target = own.get(name)
        if target is None:
            raise UserError(f"update_weights: {name!r} is not a weight of the engine's model")
        if target.shape != tensor.shape:
            raise UserError(
                f"update_weights: {name!r} has shape {tuple(tensor.shape)}, the engine's model "
                f"{tuple(target.shape)}: the stream is of a different architecture"
            )
        if target.data_ptr() == tensor.data_ptr() and target.device == tensor.device:
            continue
        target.copy_(tensor)
        copied += 1
    return copied
