"""One update loop for the actor and the critic: PPO epochs over mini-batches, each accumulated over
micro-batches.

For one rollout batch of ``N`` sequences:

1. for each of ``ppo_epochs`` epochs, shuffle the rows (seeded, when ``shuffle``) and cut them into
   mini-batches of ``mini_batch_size`` sequences; each mini-batch is one optimizer step;
2. count the mini-batch's valid tokens and sequences (:func:`mini_batch_counts`);
3. process it in micro-batches of ``micro_batch_size`` sequences (with a token budget ``max_token_len``:
   groups of at most that many real tokens); each micro-batch's loss is normalised by the mini-batch's
   counts, so the micro-batch gradients add up to the gradient of one pass over the whole mini-batch
   (SAPO.md, "Aggregation"), whatever the split;
4. clip the gradients to ``grad_clip`` (global L2 norm; ``<= 0``: no clipping, the norm is still logged) and
   skip the step, rather than take it, when the norm is not finite (verl's rule; a NaN / Inf loss makes
   it so), counting it in ``<prefix>/skipped_steps`` and the non-finite micro-batch losses in
   ``<prefix>/nonfinite_losses`` (`sapo.trainer.nonfinite`).

In a world of several processes every rank holds the whole batch and draws the same shuffle; of each
mini-batch it processes its share of the rows (`World.share`), with the counts of step 2 taken over the
whole mini-batch, and the gradients of the ranks add up (each loss is scaled by the world size, which
FSDP's averaging divides out, `sapo.distributed.fsdp`): the update is the single-process one, whatever
the world size and micro-batch size (verl #5798 is this bug). Every rank runs the same number of
micro-batches (a rank with fewer repeats its last one with zero weight), because each forward and
backward is a collective under FSDP.

What is optimised is the caller's ``micro_loss(model, micro, counts) -> (loss, metrics, terms)``: ``loss``
is back-propagated; ``metrics`` are that micro-batch's own statistics (combined over micro-batches and
optimizer steps by :func:`sapo.core.diagnostics.reduce_metrics`: means, min / max for extremes); ``terms``
are already normalised by the mini-batch counts, so they are summed over micro-batches to give the
mini-batch's value (``actor/pg_loss``, ``critic/vf_loss``, ...).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import torch

from sapo.batch import Batch
from sapo.core.aggregation import num_valid_seqs
from sapo.core.diagnostics import reduce_metrics
from sapo.distributed.fsdp import local_scalar
from sapo.distributed.world import World

# (model, trimmed micro-batch, mini-batch counts) -> (loss, micro-batch metrics, additive loss terms)
MicroLoss = Callable[[torch.nn.Module, Batch, dict], tuple[torch.Tensor, dict, dict]]


@dataclass(frozen=True)
class UpdateSchedule:
    """How one rollout batch is cut into optimizer steps and passes. Built from the resolved config only
    (``trainer.settings``); no field has a default of its own."""

    ppo_epochs: int
    mini_batch_size: int  # sequences per optimizer step (ppo_mini_batch_size x rollout.n)
    micro_batch_size: int  # sequences per forward/backward pass
    max_token_len: int | None  # use_dynamic_bsz: token budget of a micro-batch (replaces the count)
    shuffle: bool
    grad_clip: float  # <= 0: no clipping
    loss_scale_factor: float  # seq-mean-token-sum-norm divisor (data.max_response_length)


def mini_batch_counts(mini: Batch, loss_scale_factor: float) -> dict[str, float]:
    """The normalisers every micro-batch loss of ``mini`` is divided by: its valid tokens and sequences
    (sequences with at least one valid token). The one place they are counted."""
    return {
        "global_num_tokens": float(mini.response_mask.sum()),
        "global_num_seqs": float(num_valid_seqs(mini.response_mask)),
        "loss_scale_factor": loss_scale_factor,
    }


def ppo_update(
    model: torch.nn.Module,
    optimizer,
    batch: Batch,
    schedule: UpdateSchedule,
    generator: torch.Generator,
    micro_loss: MicroLoss,
    *,
    prefix: str,
    world: World | None = None,
) -> dict[str, float]:
    """Every epoch and mini-batch of one rollout; metrics combined over optimizer steps. ``prefix``
    (``actor`` / ``critic``) names the gradient-norm and skipped-step metrics."""
    world = world or World()
    model.train()
    history: list[dict[str, float]] = []
    for _ in range(schedule.ppo_epochs):
        n = batch.num_sequences
        order = torch.randperm(n, generator=generator) if schedule.shuffle else torch.arange(n)
        for rows in order.split(schedule.mini_batch_size):
            mini = batch.select(rows)
            history.append(_optimizer_step(model, optimizer, mini, schedule, micro_loss, prefix, world))
    return reduce_metrics(history)


def _optimizer_step(model, optimizer, mini: Batch, schedule: UpdateSchedule, micro_loss, prefix, world):
    optimizer.zero_grad(set_to_none=True)
    counts = mini_batch_counts(mini, schedule.loss_scale_factor)  # over the whole mini-batch
    local = mini.select(list(world.share(mini.num_sequences)))
    micro_batches = local.micro_batches(schedule.micro_batch_size, schedule.max_token_len)
    per_micro, term_sums = [], defaultdict(float)  # per_micro: (metrics, valid tokens) pairs
    nonfinite_losses = 0
    for i in range(world.max(len(micro_batches))):
        _, micro = micro_batches[min(i, len(micro_batches) - 1)]
        loss, metrics, terms = micro_loss(model, micro.trimmed(), counts)
        if i >= len(micro_batches):  # a repeat that keeps the ranks' collectives in step (its backward
            # must go through the layers' FSDP hooks, so it uses the loss itself). It repeats a micro-batch
            # this rank already back-propagated with the same weights, so it can only be non-finite (0 x
            # inf) where that pass already was, and such a step is skipped anyway.
            (loss * 0.0).backward()
            continue
        (loss * world.size).backward()  # FSDP averages over ranks; the losses are already global
        nonfinite_losses += int(not torch.isfinite(loss.detach()))
        per_micro.append((metrics, float(micro.response_mask.sum())))  # tokens: its means' weight
        for name, value in terms.items():
            term_sums[name] += value  # globally normalised terms add up to the mini-batch's value
    params = [p for p in model.parameters() if p.requires_grad]
    max_norm = schedule.grad_clip if schedule.grad_clip > 0 else float("inf")
    grad_norm = local_scalar(torch.nn.utils.clip_grad_norm_(params, max_norm))
    if math.isfinite(grad_norm):
        optimizer.step()
    else:
        optimizer.zero_grad(set_to_none=True)
    every_micro = world.gather_lists(per_micro)  # all ranks' micro-batches
    return {
        **reduce_metrics([m for m, _ in every_micro], [tokens for _, tokens in every_micro]),
        **world.sum({**term_sums, f"{prefix}/nonfinite_losses": nonfinite_losses}),
        f"{prefix}/grad_norm": grad_norm,
        f"{prefix}/skipped_steps": 0.0 if math.isfinite(grad_norm) else 1.0,
    }
