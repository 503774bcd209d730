"""Place one score per response on its last valid token: verl's ``token_level_scores``."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def token_level_scores(scores: Sequence[float] | torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """``out[i, j] = scores[i]`` where ``j`` is the last position with ``response_mask[i, j] == 1``,
    0 elsewhere. ``response_mask`` is ``[N, R]`` (1 on valid response tokens, EOS included); the result
    has its shape and float32 dtype. Every response needs at least one valid token."""
    mask = response_mask.bool()  # [N, R]
    scores = torch.as_tensor(scores, dtype=torch.float32, device=response_mask.device)  # [N]
    if scores.shape != (mask.shape[0],):
        raise ValueError(
            f"need one score per response: scores {tuple(scores.shape)}, mask {tuple(mask.shape)}"
        )
    if not mask.any(dim=1).all():
        empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
        raise ValueError(f"responses {empty} have no valid token to carry their score")
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)  # [N, R]
    last = torch.where(mask, positions, -1).max(dim=1).values  # [N]
    out = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)  # [N, R]
    out[torch.arange(mask.shape[0], device=mask.device), last] = scores
    return out
