"""Choosing the next token from last-position logits: greedy, temperature, top-k, top-p.

Order as in vLLM and transformers: divide by the temperature, keep the ``top_k`` largest logits, then the
smallest set of tokens whose probability reaches ``top_p`` (nucleus sampling, Holtzman et al.,
arXiv 1904.09751), renormalise, draw. The full sort that top-p needs is skipped when top-p is off.

The draw is by inverse CDF from one uniform number ``u`` in [0, 1) per row: with ``probs`` the filtered,
renormalised distribution and ``cdf = probs.cumsum(-1)``, ``token = min{v : cdf[v] > u * cdf[-1]}``
(``searchsorted(..., right=True)``; scaling by ``cdf[-1]`` absorbs the float sum's distance from 1), then
clamped to the last token of positive probability, so a token the filters removed (probability 0) is
never chosen even when ``u * cdf[-1]`` rounds up to the total. Token ``v`` is chosen for ``u`` in an
interval of length ``probs[v]``, so the draw follows ``probs`` exactly. The engines give each row its own
seeded uniforms (`sapo.rollout.seeds`): a row's token depends on its logits and its own stream only,
never on the other rows of the batch. All rows are sampled with batched tensor ops (no loop over rows).
"""

from __future__ import annotations

import torch

from sapo.rollout.base import SamplingParams


def _keep_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[:, -1:]  # [B, 1]
    return logits.masked_fill(logits < kth, float("-inf"))


def _keep_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # [B, V]
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = probs.cumsum(-1) - probs  # [B, V] probability of the strictly more likely tokens
    drop_sorted = mass_before >= p  # the most likely token always stays (mass_before = 0 < p)
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_next_token(
    logits: torch.Tensor,
    sampling: SamplingParams,
    uniforms: torch.Tensor | torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tokens [B], log_probs [B])`` from last-position logits ``[B, V]`` and one uniform number in
    [0, 1) per row (``uniforms [B]``; unused when greedy).

    ``uniforms`` may also be a ``torch.Generator`` (or None: torch's global generator) that the ``B``
    uniforms are drawn from, as the earlier ``generator`` argument was; then the rows share one stream and
    a row's token depends on its place in the batch, which the engines avoid by passing per-row uniforms.

    ``log_probs`` is ``log softmax(logits / T)[token]`` over the full vocabulary (see `sapo.rollout.base`).
    """
    scaled = logits.float() / sampling.logprob_temperature  # [B, V]
    log_probs_all = torch.log_softmax(scaled, dim=-1)  # [B, V]
    if sampling.greedy:
        tokens = scaled.argmax(-1)  # [B]
    else:
        if uniforms is None or isinstance(uniforms, torch.Generator):
            device = uniforms.device if uniforms is not None else "cpu"
            uniforms = torch.rand(scaled.shape[0], generator=uniforms, device=device)  # [B]
        elif uniforms.shape != scaled.shape[:1]:
            raise ValueError(
                f"uniforms {tuple(uniforms.shape)} must be one per row of logits {tuple(logits.shape)}"
            )
        filtered = _keep_top_p(_keep_top_k(scaled, sampling.top_k), sampling.top_p)
        probs = torch.softmax(filtered, dim=-1)  # [B, V]
        tokens = inverse_cdf(probs, uniforms.to(probs.device))  # [B]
    return tokens, log_probs_all.gather(-1, tokens[:, None]).squeeze(-1)


def inverse_cdf(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """The token of each row whose cumulative probability first exceeds ``u x total``: ``[B]``. A token of
    probability 0 is never returned (rounding of ``u x total`` up to the total falls back to the last
    token of positive probability)."""
    cdf = probs.cumsum(-1)  # [B, V]
    target = uniforms[:, None].to(cdf.dtype) * cdf[:, -1:]  # [B, 1]
    tokens = torch.searchsorted(cdf, target, right=True).squeeze(-1)  # [B]
    vocab = torch.arange(probs.shape[-1], device=probs.device)
    last_positive = torch.where(probs > 0, vocab, 0).max(-1).values  # [B]
    return torch.minimum(tokens, last_positive)
