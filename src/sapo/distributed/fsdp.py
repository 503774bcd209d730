"""Sharding the actor, reference and critic with FSDP2 (``torch.distributed.fsdp.fully_shard``).

One FSDP unit per decoder layer plus the root (embeddings, final norm, LM or value head), as torchtitan and
verl's FSDP2 engine wrap: a layer's parameters are all-gathered just before its forward (and again for its
backward), then freed, so a process holds ``1/W`` of the weights, gradients and AdamW moments plus one
layer's full weights at a time.

Three choices make ``W`` processes compute what one computes (docs/distributed.md):

* every micro-batch loss is already divided by the token / sequence count of the whole global mini-batch
  (SAPO.md, "Aggregation"), so the single-process gradient is the **sum** of the ranks' gradients; FSDP
  averages them (divides by ``W``), so the update loop multiplies each loss by ``W`` (gloo has no
  pre-multiplied sum, which ``set_gradient_divide_factor(1)`` would need);
* the log-prob pass (`sapo.models.logprobs.token_log_probs`) reads the decoder and the LM head's weight
  directly instead of calling ``forward``; it is registered as an FSDP forward method so the root's
  parameters are gathered for it too;
* the rollout engine samples from its own unsharded copy of the policy, refreshed after every optimizer
  step by :func:`full_weights` (one ``full_tensor()`` gather per parameter), because sampling runs outside
  the lock-step forward passes FSDP needs.
"""

from __future__ import annotations

import types
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from sapo.distributed.world import World
from sapo.models.dtypes import resolve_dtype
from sapo.models.logprobs import SHARDED_LOG_PROBS, compute_token_log_probs
from sapo.rollout.weights import weight_stream


@dataclass(frozen=True)
class ShardingSettings:
    """verl's ``fsdp_config`` keys that FSDP2 honours (``actor_rollout_ref.actor.fsdp_config``, ...)."""

    reshard_after_forward: bool = True
    offload: bool = False  # param_offload or optimizer_offload: CPUOffloadPolicy (GPU only)
    param_dtype: str | None = None  # mixed_precision.param_dtype: compute dtype of the gathered weights
    reduce_dtype: str | None = None  # mixed_precision.reduce_dtype: dtype gradients are reduced in


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The decoder layers of a causal LM or a value model: the first ``ModuleList`` named ``layers``."""
    for name, module in model.named_modules():
        if name.split(".")[-1] == "layers" and isinstance(module, nn.ModuleList):
            return list(module)
    raise ValueError(f"{type(model).__name__} has no ModuleList named 'layers' to shard layer by layer")


def shard_model(
    model: nn.Module, world: World, settings: ShardingSettings, device: torch.device
) -> nn.Module:
    """Wrap ``model`` in place with FSDP2 over ``world.mesh`` (nothing to do in a world of one process)."""
    if world.size == 1:
        if settings.param_dtype or settings.reduce_dtype:  # e.g. resuming a multi-GPU run on one GPU
            warnings.warn(
                "fsdp_config.mixed_precision is ignored in a run of one process (FSDP2 does not wrap the "
                "model): the model computes in its own dtype (actor_rollout_ref.model.dtype / "
                "fsdp_config.model_dtype)",
                stacklevel=2,
            )
        return model
    from torch.distributed.fsdp import (
        CPUOffloadPolicy,
        FSDPModule,
        MixedPrecisionPolicy,
        fully_shard,
        register_fsdp_forward_method,
    )

    options = {"mesh": world.mesh, "reshard_after_forward": settings.reshard_after_forward}
    if settings.param_dtype or settings.reduce_dtype:
        options["mp_policy"] = MixedPrecisionPolicy(
            param_dtype=resolve_dtype(settings.param_dtype) if settings.param_dtype else None,
            reduce_dtype=resolve_dtype(settings.reduce_dtype) if settings.reduce_dtype else None,
        )
    if settings.offload and device.type == "cuda":  # on CPU the parameters already live in host memory
        options["offload_policy"] = CPUOffloadPolicy(pin_memory=True)
    for layer in decoder_layers(model):
        fully_shard(layer, **options)
    fully_shard(model, **options)
    for module in model.modules():  # an MoE expert no token reached on one rank still takes part in the
        if isinstance(module, FSDPModule):  # gradient reduce-scatter, or the ranks' buffers would differ
            module.set_reduce_scatter_unused_params(True)
    if hasattr(model, "get_decoder"):  # a causal LM (the critic's ValueModel goes through forward)
        setattr(model, SHARDED_LOG_PROBS, types.MethodType(compute_token_log_probs, model))
        register_fsdp_forward_method(model, SHARDED_LOG_PROBS)
    return model


def full_weights(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The model's full ``(name, tensor)`` pairs: sharded tensors gathered one at a time (a collective:
    every rank must consume the stream), plain tensors as they are."""
    from torch.distributed.tensor import DTensor

    for name, tensor in weight_stream(model):
        yield name, tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def local_scalar(value: torch.Tensor) -> float:
    """A reduced scalar (``clip_grad_norm_``'s total norm is a DTensor under FSDP) as a float."""
    from torch.distributed.tensor import DTensor

    return float(value.full_tensor() if isinstance(value, DTensor) else value)
