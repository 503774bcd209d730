"""The actor update: the policy loss of one micro-batch, run by the shared loop of
:mod:`sapo.trainer.ppo_update` (epochs, mini-batches, micro-batch accumulation, clipping).

The loss of a micro-batch is ``policy_loss + kl_loss_coef * kl - entropy_coeff * entropy``, each term
aggregated with the same ``loss_agg_mode`` and normalised by the mini-batch's token / sequence counts.
Metrics: loss terms (``actor/pg_loss``, ``actor/entropy_loss``, ``actor/kl_loss``) are the mini-batch's
values; the loss's own diagnostics (ratio and ``actor/sapo/*`` statistics) and ``actor/entropy`` are
combined over micro-batches and optimizer steps.

Rollout correction (``algorithm.rollout_correction``, :mod:`sapo.core.rollout_correction`) reaches the
loss through the batch: ``micro.rollout_is_weights`` multiply the policy loss per token (not the entropy or
KL terms, as in verl), and rejected tokens are already 0 in ``micro.response_mask``.

The first mini-batch of the first epoch is on-policy: when the trainer did not recompute ``old_log_prob``
(it only skips it where it is provably identical, see ``needs_old_log_prob``), the current log-prob,
detached, stands in for it, which is the same number.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch

from sapo.batch import Batch
from sapo.core.aggregation import aggregate_loss
from sapo.core.kl import kl_penalty
from sapo.core.losses import get_policy_loss
from sapo.core.masked import masked_mean
from sapo.distributed.world import World
from sapo.models.logprobs import token_log_probs
from sapo.trainer.ppo_update import UpdateSchedule, ppo_update


@dataclass(frozen=True)
class PolicyLossSettings:
    """The terms of the actor's loss, from ``actor_rollout_ref.actor`` (no defaults: see trainer.settings)."""

    loss_mode: str
    loss_agg_mode: str
    loss_kwargs: dict  # the loss's own numbers (tau_pos, clip_ratio_low, ...)
    use_kl_loss: bool
    kl_loss_coef: float
    kl_loss_type: str
    entropy_coeff: float
    temperature: float  # the rollout temperature: log-probs are of logits / temperature


@dataclass(frozen=True)
class ActorUpdateSettings:
    schedule: UpdateSchedule
    loss: PolicyLossSettings


def needs_old_log_prob(num_sequences: int, schedule: UpdateSchedule) -> bool:
    """Whether ``old_log_prob`` must be computed before the update.

    It can be skipped only when the whole rollout is one mini-batch updated once: then every loss sees the
    parameters that generated the batch, and ``log_prob.detach()`` equals ``old_log_prob`` exactly.
    """
    return schedule.ppo_epochs > 1 or schedule.mini_batch_size < num_sequences


def update_actor(
    model: torch.nn.Module,
    optimizer,
    batch: Batch,
    settings: ActorUpdateSettings,
    generator: torch.Generator,
    world: World | None = None,
) -> dict[str, float]:
    """Run every epoch and mini-batch of one rollout; return metrics averaged over optimizer steps."""
    micro_loss = partial(policy_micro_loss, settings=settings.loss)
    return ppo_update(
        model, optimizer, batch, settings.schedule, generator, micro_loss, prefix="actor", world=world
    )


def policy_micro_loss(model, micro: Batch, counts: dict, *, settings: PolicyLossSettings):
    """Forward and loss of one micro-batch: ``(loss, its metrics, its loss terms)`` (see ppo_update)."""
    log_prob, entropy = token_log_probs(  # [n, R], [n, R]
        model,
        micro.input_ids,
        micro.attention_mask,
        micro.response_length,
        temperature=settings.temperature,
        compute_entropy=True,
    )
    mask = micro.response_mask
    if not bool(torch.isfinite(log_prob.detach())[mask.bool()].all()):
        # the forward gave NaN / Inf (the losses refuse those): a NaN loss that still back-propagates
        # through every layer, so FSDP's collectives stay in step and ppo_update skips the step
        return log_prob.sum() * float("nan"), {}, {}
    old_log_prob = micro.old_log_prob if micro.old_log_prob is not None else log_prob.detach()
    pg_loss, metrics = get_policy_loss(settings.loss_mode)(
        old_log_prob,
        log_prob,
        micro.advantages,
        mask,
        loss_agg_mode=settings.loss_agg_mode,
        rollout_is_weights=micro.rollout_is_weights,  # None without algorithm.rollout_correction.rollout_is
        **counts,
        **settings.loss_kwargs,
    )
    entropy_term = aggregate_loss(entropy, mask, settings.loss_agg_mode, **counts)
    loss = pg_loss - settings.entropy_coeff * entropy_term
    terms = {"actor/pg_loss": pg_loss.item(), "actor/entropy_loss": entropy_term.item()}
    if settings.use_kl_loss:
        kl = kl_penalty(log_prob, micro.ref_log_prob, settings.kl_loss_type)  # [n, R]
        kl_term = aggregate_loss(kl, mask, settings.loss_agg_mode, **counts)
        loss = loss + settings.kl_loss_coef * kl_term
        terms["actor/kl_loss"] = kl_term.item()
    metrics["actor/entropy"] = masked_mean(entropy.detach(), mask).item()
    return loss, metrics, terms
