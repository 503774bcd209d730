"""Turning a per-token loss matrix ``[B, T]`` into the scalar a trainer differentiates (``loss_agg_mode``).

Modes (verl's names). With ``l_it`` the per-token loss, ``m_it`` the response mask, ``L_i = sum_t m_it``,
``N`` the mini-batch's token count and ``S`` its sequence count (both *global*, see below):

- ``token-mean``               ``sum_it m_it l_it / N``                        (DAPO, arXiv 2503.14476)
- ``seq-mean-token-sum``       ``sum_i (sum_t m_it l_it) / S``
- ``seq-mean-token-mean``      ``sum_i (sum_t m_it l_it / L_i) / S``   (GRPO, arXiv 2402.03300; SAPO)
- ``seq-mean-token-sum-norm``  ``sum_i (sum_t m_it l_it) / (S * C)``,  ``C = loss_scale_factor``
                               (Dr. GRPO's constant normaliser, arXiv 2503.20783: C = max response length)
- ``token-sum``                ``sum_it m_it l_it``  (no normalisation)

Global normalisation (why the counts are arguments)
---------------------------------------------------
A mini-batch is cut into micro-batches (gradient accumulation) and spread over data-parallel ranks. The
gradient of the mini-batch loss must not depend on the cut. So every call divides by the counts of the
whole mini-batch, not of the rows it is given:

- ``global_num_tokens``: valid tokens in the mini-batch, summed over all micro-batches and all DP ranks;
- ``global_num_seqs``: sequences with at least one valid token, summed the same way.

Both default to this call's own counts (right for a single pass over the whole mini-batch). Because each
micro-batch loss is already divided by the global count, the trainer

1. SUMS the micro-batch losses of a mini-batch (``loss.backward()`` on each, no ``1 / n_micro`` factor);
2. under DDP/FSDP gradient *averaging* over ``W`` ranks, multiplies each micro-batch loss by ``W`` before
   ``backward`` (averaging divides by ``W``; the sum over ranks is what equals the one-pass gradient).

A sequence row whose mask is all zero contributes 0 and is not counted in ``S`` by default. An all-masked
call returns an exact 0 (connected to the graph, so ``backward`` works and yields zero gradients).

``seq-mean-token-sum-norm`` needs the constant ``C``. verl uses the padded response length of the tensor
(``loss_mask.shape[-1]``) and divides only by ``C``; here the mean over sequences is kept (Dr. GRPO's
formula) and ``C`` is taken from ``loss_scale_factor``, falling back to ``T`` of the tensor given. The
trainer should pass ``data.max_response_length`` so micro-batches padded differently agree.
"""

from __future__ import annotations

import torch

from sapo.core.masked import as_bool_mask, masked_count, masked_sum
from sapo.errors import ConfigError

LOSS_AGG_MODES: tuple[str, ...] = (
    "token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-mean",
    "seq-mean-token-sum-norm",
    "token-sum",
)


def check_loss_agg_mode(loss_agg_mode: str) -> str:
    """Return ``loss_agg_mode`` or raise a ConfigError that lists the valid modes."""
    if loss_agg_mode not in LOSS_AGG_MODES:
        raise ConfigError(
            f"unknown loss_agg_mode {loss_agg_mode!r}: set actor_rollout_ref.actor.loss_agg_mode to one of "
            f"{', '.join(LOSS_AGG_MODES)}"
        )
    return loss_agg_mode


def num_valid_seqs(mask: torch.Tensor) -> int:
    """Rows with at least one valid token (the default ``global_num_seqs``)."""
    return int((masked_count(mask, dim=-1) > 0).sum())


def aggregate_loss(
    loss_mat: torch.Tensor,
    mask: torch.Tensor,
    loss_agg_mode: str,
    *,
    global_num_tokens: float | int | None = None,
    global_num_seqs: float | int | None = None,
    loss_scale_factor: float | int | None = None,
) -> torch.Tensor:
    """Aggregate ``loss_mat [B, T]`` over ``mask [B, T]`` into a scalar (formulas in the module docstring).

    ``global_num_tokens`` / ``global_num_seqs`` are the whole mini-batch's counts across micro-batches and
    data-parallel ranks (default: this call's). ``loss_scale_factor`` is the constant of
    ``seq-mean-token-sum-norm`` (default: ``loss_mat.shape[-1]``). Counts below 1 are treated as 1, so an
    empty batch gives 0, never NaN.
    """
    check_loss_agg_mode(loss_agg_mode)
    if loss_mat.shape != mask.shape or loss_mat.dim() != 2:
        raise ValueError(f"loss_mat {tuple(loss_mat.shape)} and mask {tuple(mask.shape)} must both be [B, T]")
    mask = as_bool_mask(mask)
    if loss_agg_mode == "token-sum":
        return masked_sum(loss_mat, mask)
    if loss_agg_mode == "token-mean":
        n_tokens = int(masked_count(mask)) if global_num_tokens is None else global_num_tokens
        return masked_sum(loss_mat, mask) / max(float(n_tokens), 1.0)

    n_seqs = num_valid_seqs(mask) if global_num_seqs is None else global_num_seqs
    n_seqs = max(float(n_seqs), 1.0)
    seq_sums = masked_sum(loss_mat, mask, dim=-1)  # [B]
    if loss_agg_mode == "seq-mean-token-sum":
        return seq_sums.sum() / n_seqs
    if loss_agg_mode == "seq-mean-token-mean":
        seq_lengths = masked_count(mask, dim=-1).clamp(min=1).to(loss_mat.dtype)  # [B]
        return (seq_sums / seq_lengths).sum() / n_seqs
    # seq-mean-token-sum-norm
    scale = loss_mat.shape[-1] if loss_scale_factor is None else loss_scale_factor
    if scale <= 0:
        raise ConfigError(f"loss_scale_factor must be > 0 (got {scale}): pass the max response length")
    return seq_sums.sum() / (n_seqs * float(scale))
