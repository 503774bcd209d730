"""The critic's loss: PPO's clipped value loss (Schulman et al., arXiv 1707.06347; verl's
``compute_value_loss``), beside the policy losses so that both are pure functions on tensors::

    v_clipped = old_v + clamp(v - old_v, -cliprange_value, cliprange_value)
    loss_t    = 0.5 * max((v - R)^2, (v_clipped - R)^2)

aggregated over response tokens with the critic's ``loss_agg_mode`` and the mini-batch's global counts
(:func:`sapo.core.aggregation.aggregate_loss`), so micro-batch gradients add up to the mini-batch's.
"""

from __future__ import annotations

import torch

from sapo.core.aggregation import aggregate_loss
from sapo.core.masked import as_bool_mask
from sapo.errors import ConfigError


def clipped_value_loss(
    values, old_values, returns, response_mask, *, cliprange_value: float, loss_agg_mode: str,
    global_num_tokens=None, global_num_seqs=None, loss_scale_factor=None,
):  # fmt: skip
    """``(loss, clip_fraction)``: the aggregated clipped value loss of ``values [B, T]`` against
    ``returns [B, T]`` around ``old_values [B, T]``, and the fraction of this call's valid tokens where the
    clipped term is the larger one (a float)."""
    if not cliprange_value >= 0:
        raise ConfigError(f"critic.cliprange_value must be >= 0 (got {cliprange_value}), e.g. 0.5")
    mask = as_bool_mask(response_mask)  # [B, T]
    clipped = old_values + (values - old_values).clamp(-cliprange_value, cliprange_value)  # [B, T]
    loss_unclipped = (values - returns) ** 2  # [B, T]
    loss_clipped = (clipped - returns) ** 2  # [B, T]
    loss_mat = 0.5 * torch.maximum(loss_unclipped, loss_clipped)  # [B, T]
    loss = aggregate_loss(
        loss_mat, mask, loss_agg_mode, global_num_tokens=global_num_tokens,
        global_num_seqs=global_num_seqs, loss_scale_factor=loss_scale_factor,
    )  # fmt: skip
    clip_frac = ((loss_clipped > loss_unclipped) & mask).sum() / mask.sum().clamp(min=1)
    return loss, float(clip_frac)
