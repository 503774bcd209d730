"""The actor update: PPO-style epochs over mini-batches, each accumulated over micro-batches.

For one rollout batch of ``N`` sequences:

1. for each of ``ppo_epochs`` epochs, shuffle the rows (seeded) and cut them into mini-batches of
   ``ppo_mini_batch_size x rollout.n`` sequences; each mini-batch is one optimizer step;
2. a mini-batch is processed in micro-batches of ``ppo_micro_batch_size_per_gpu`` sequences (with
   ``use_dynamic_bsz``: groups of at most ``ppo_max_token_len_per_gpu`` real tokens); each
   micro-batch loss is normalised by the *mini-batch's* token / sequence counts, so the gradients of the
   micro-batches add up to the gradient of one pass over the whole mini-batch (SAPO.md, "Aggregation");
3. the loss of a micro-batch is ``policy_loss + kl_loss_coef * kl - entropy_coeff * entropy``, each term
   aggregated with the same ``loss_agg_mode``;
4. gradients are clipped to ``grad_clip`` (global L2 norm) and the step is skipped, not taken, when the norm
   is not finite.

Metrics: loss terms (``actor/pg_loss``, ...) are the mini-batch's values (sums of the globally normalised
micro-batch terms); the loss's own diagnostics are combined over micro-batches and optimizer steps by
:func:`sapo.core.diagnostics.reduce_metrics` (means, with min / max for the extremes).

The first mini-batch of the first epoch is on-policy: when the trainer did not recompute ``old_log_prob``
(it only skips it where it is provably identical, see ``needs_old_log_prob``), the current log-prob,
detached, stands in for it, which is the same number.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import torch

from sapo.batch import Batch
from sapo.core.aggregation import aggregate_loss, num_valid_seqs
from sapo.core.diagnostics import reduce_metrics
from sapo.core.kl import kl_penalty
from sapo.core.losses import get_policy_loss
from sapo.core.masked import masked_mean
from sapo.models.logprobs import token_log_probs
from sapo.optim import AdamW


@dataclass
class ActorUpdateSettings:
    """The numbers of one actor update, taken from ``actor_rollout_ref.actor`` by the loop."""

    loss_mode: str
    loss_agg_mode: str
    loss_kwargs: dict = field(default_factory=dict)  # the loss's own numbers (tau_pos, clip_ratio_low, ...)
    ppo_epochs: int = 1
    mini_batch_size: int = 8  # sequences (ppo_mini_batch_size x rollout.n)
    micro_batch_size: int = 8  # sequences per forward/backward
    max_token_len: int | None = None  # use_dynamic_bsz: token budget of a micro-batch (replaces the count)
    shuffle: bool = True
    use_kl_loss: bool = False
    kl_loss_coef: float = 0.0
    kl_loss_type: str = "low_var_kl"
    entropy_coeff: float = 0.0
    grad_clip: float = 1.0  # <= 0: no clipping (the norm is still measured and logged)
    loss_scale_factor: float | None = None  # seq-mean-token-sum-norm divisor (data.max_response_length)
    temperature: float = 1.0  # the rollout temperature: log-probs are of logits / temperature


def needs_old_log_prob(num_sequences: int, settings: ActorUpdateSettings) -> bool:
    """Whether ``old_log_prob`` must be computed before the update.

    It can be skipped only when the whole rollout is one mini-batch updated once: then every loss sees the
    parameters that generated the batch, and ``log_prob.detach()`` equals ``old_log_prob`` exactly.
    """
    return settings.ppo_epochs > 1 or settings.mini_batch_size < num_sequences


def update_actor(
    model: torch.nn.Module,
    optimizer: AdamW,
    batch: Batch,
    settings: ActorUpdateSettings,
    generator: torch.Generator,
) -> dict[str, float]:
    """Run every epoch and mini-batch of one rollout; return metrics averaged over optimizer steps."""
    model.train()
    history: list[dict[str, float]] = []
    for _ in range(settings.ppo_epochs):
        n = batch.num_sequences
        order = torch.randperm(n, generator=generator) if settings.shuffle else torch.arange(n)
        for rows in order.split(settings.mini_batch_size):
            history.append(_optimizer_step(model, optimizer, batch.select(rows), settings))
    return reduce_metrics(history)


def _optimizer_step(model, optimizer, mini: Batch, settings: ActorUpdateSettings) -> dict[str, float]:
    optimizer.zero_grad(set_to_none=True)
    counts = {
        "global_num_tokens": float(mini.response_mask.sum()),
        "global_num_seqs": float(num_valid_seqs(mini.response_mask)),
        "loss_scale_factor": settings.loss_scale_factor,
    }
    per_micro, loss_sums = [], defaultdict(float)
    for _, micro in mini.micro_batches(settings.micro_batch_size, settings.max_token_len):
        metrics, losses = _micro_batch_backward(model, micro.trimmed(), settings, counts)
        per_micro.append(metrics)
        for name, value in losses.items():
            loss_sums[name] += value  # globally normalised terms add up to the mini-batch's value
    params = [p for p in model.parameters() if p.requires_grad]
    max_norm = settings.grad_clip if settings.grad_clip > 0 else float("inf")
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    if math.isfinite(grad_norm):
        optimizer.step()
    else:  # verl's rule: a step with a non-finite gradient is skipped, not taken
        optimizer.zero_grad(set_to_none=True)
    return {
        **reduce_metrics(per_micro),
        **loss_sums,
        "actor/grad_norm": grad_norm,
        "actor/skipped_steps": 0.0 if math.isfinite(grad_norm) else 1.0,
    }


def _micro_batch_backward(model, micro: Batch, settings: ActorUpdateSettings, counts):
    """Forward, loss and backward of one micro-batch. Returns its own metrics (means over the micro-batch)
    and its loss terms (normalised by the mini-batch counts, to be summed over micro-batches)."""
    log_prob, entropy = token_log_probs(  # [n, R], [n, R]
        model,
        micro.input_ids,
        micro.attention_mask,
        micro.response_length,
        temperature=settings.temperature,
        compute_entropy=True,
    )
    old_log_prob = micro.old_log_prob if micro.old_log_prob is not None else log_prob.detach()
    mask = micro.response_mask
    pg_loss, metrics = get_policy_loss(settings.loss_mode)(
        old_log_prob,
        log_prob,
        micro.advantages,
        mask,
        loss_agg_mode=settings.loss_agg_mode,
        **counts,
        **settings.loss_kwargs,
    )
    entropy_term = aggregate_loss(entropy, mask, settings.loss_agg_mode, **counts)
    loss = pg_loss - settings.entropy_coeff * entropy_term
    losses = {"actor/pg_loss": pg_loss.item(), "actor/entropy_loss": entropy_term.item()}
    if settings.use_kl_loss:
        kl = kl_penalty(log_prob, micro.ref_log_prob, settings.kl_loss_type)  # [n, R]
        kl_term = aggregate_loss(kl, mask, settings.loss_agg_mode, **counts)
        loss = loss + settings.kl_loss_coef * kl_term
        losses["actor/kl_loss"] = kl_term.item()
    loss.backward()
    metrics["actor/entropy"] = masked_mean(entropy.detach(), mask).item()
    return metrics, losses
