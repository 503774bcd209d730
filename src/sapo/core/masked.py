"""Masked reductions over the response tokens of a batch.

Every tensor here is ``[B, T]`` (rows = sequences, columns = response positions) with a mask that is 1 on
real response tokens and 0 on padding. Masked-out positions never reach a result, even when they hold NaN
or inf: values are selected with ``torch.where`` rather than multiplied by the mask (``nan * 0`` is nan).

Conventions for degenerate inputs (so an all-padding micro-batch is harmless):

- the mean over zero tokens is 0;
- the variance over fewer than 2 tokens is 0 (the unbiased estimate is undefined there);
- whitening therefore maps a single valid token to 0 (``shift_mean=True``).
"""

from __future__ import annotations

import torch


def as_bool_mask(mask: torch.Tensor) -> torch.Tensor:
    """The response mask as a boolean tensor (accepts bool, integer or 0/1 float masks)."""
    return mask if mask.dtype == torch.bool else mask != 0


def masked_zero(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``values`` where the mask is set, exact zeros elsewhere (gradient flows only through kept entries)."""
    return torch.where(as_bool_mask(mask), values, torch.zeros((), dtype=values.dtype, device=values.device))


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``values`` over masked-in entries (all entries, or along ``dim``)."""
    kept = masked_zero(values, mask)
    return kept.sum() if dim is None else kept.sum(dim=dim)


def masked_count(mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Number of masked-in entries, as an integer tensor."""
    kept = as_bool_mask(mask)
    return kept.sum() if dim is None else kept.sum(dim=dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean over masked-in entries; 0 where there are none."""
    total = masked_sum(values, mask, dim)
    count = masked_count(mask, dim).clamp(min=1).to(values.dtype)
    return total / count


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance over all masked-in entries (Bessel-corrected by default, as verl's ``masked_var``).

    ``var = sum_m (x - mean)^2 / (n - 1)``; 0 when fewer than 2 entries are masked in.
    """
    mean = masked_mean(values, mask)
    squares = masked_sum((values - mean) ** 2, mask)
    n = masked_count(mask)
    denominator = (n - 1) if unbiased else n
    if int(denominator) <= 0:
        return torch.zeros((), dtype=values.dtype, device=values.device)
    return squares / denominator.to(values.dtype)


def masked_whiten(
    values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """Normalise to unit variance over masked-in entries: ``(x - mean) / sqrt(var + eps)``.

    With ``shift_mean=False`` the mean is added back (only the scale changes). Masked-out entries of the
    result are 0. Same semantics as verl's ``masked_whiten`` (unbiased variance, eps = 1e-8).
    """
    mean = masked_mean(values, mask)
    var = masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return masked_zero(whitened, mask)
