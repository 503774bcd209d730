"""Choosing the next token from last-position logits: greedy, temperature, top-k, top-p.

Order as in vLLM and transformers: divide by the temperature, keep the ``top_k`` largest logits, then the
smallest set of tokens whose probability reaches ``top_p`` (nucleus sampling, Holtzman et al.,
arXiv 1904.09751), renormalise, draw. The full sort that top-p needs is skipped when top-p is off.
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
    logits: torch.Tensor, sampling: SamplingParams, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tokens [B], log_probs [B])`` from last-position logits ``[B, V]``.

    ``log_probs`` is ``log softmax(logits / T)[token]`` over the full vocabulary (see `sapo.rollout.base`).
    """
    scaled = logits.float() / sampling.logprob_temperature  # [B, V]
    log_probs_all = torch.log_softmax(scaled, dim=-1)  # [B, V]
    if sampling.greedy:
        tokens = scaled.argmax(-1)  # [B]
    else:
        filtered = _keep_top_p(_keep_top_k(scaled, sampling.top_k), sampling.top_p)
        probs = torch.softmax(filtered, dim=-1)  # [B, V]
        tokens = torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # [B]
    return tokens, log_probs_all.gather(-1, tokens[:, None]).squeeze(-1)
