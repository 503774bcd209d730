"""A no-gradient pass over a batch's rows, in micro-batches, split over the ranks: what ``old_log_prob``,
``ref_log_prob`` and the critic's ``values`` are computed by.

Each rank takes its share of the rows (`World.share`), runs them in micro-batches, and the results are
gathered back in row order. Under FSDP every forward is a collective (each layer's weights are gathered
from all ranks), so every rank runs the same number of forwards: a rank with fewer micro-batches (token
budgets, ``use_dynamic_bsz``, can group its rows into fewer) repeats its last one and drops the result.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from sapo.batch import Batch
from sapo.distributed.world import World


@torch.no_grad()
def forward_rows(
    model: torch.nn.Module,
    batch: Batch,
    micro_batch_size: int,
    max_tokens: int | None,
    forward: Callable[[Batch], torch.Tensor],
    world: World | None = None,
) -> torch.Tensor:
    """``forward(trimmed micro-batch) -> [n, r]`` over every row, as one ``[N, R]`` tensor (zeros past
    each micro-batch's trimmed width)."""
    world = world or World()
    was_training = model.training
    model.eval()
    local = batch.select(list(world.share(batch.num_sequences)))
    micro_batches = local.micro_batches(micro_batch_size, max_tokens)
    out = local.response_mask.new_zeros(local.num_sequences, local.response_length, dtype=torch.float32)
    for i in range(world.max(len(micro_batches))):
        rows, micro = micro_batches[min(i, len(micro_batches) - 1)]
        values = forward(micro.trimmed())  # [n, r]
        if i < len(micro_batches):
            out[rows, : values.shape[1]] = values.float()
    model.train(was_training)
    return world.gather_rows(out)  # [N, R]
