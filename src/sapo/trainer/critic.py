"""The value model for ``algorithm.adv_estimator=gae``: a causal LM's backbone with a scalar head.

``V(s_t)`` for response token ``t`` is read at the position that predicts it (``P + t - 1``), the same
alignment as the token log-probs. Its loss is PPO's clipped value loss
(:func:`sapo.core.value_loss.clipped_value_loss`), optimised by the same loop as the actor's
(:mod:`sapo.trainer.ppo_update`), aggregated with the critic's ``loss_agg_mode`` (token-mean by default).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from sapo.batch import Batch
from sapo.core.value_loss import clipped_value_loss
from sapo.distributed.world import World
from sapo.models.logprobs import position_ids_from_mask
from sapo.trainer.forward_pass import forward_rows
from sapo.trainer.ppo_update import UpdateSchedule, ppo_update


class ValueModel(nn.Module):
    """``backbone`` (the decoder of a causal LM, without its LM head) followed by ``Linear(hidden, 1)``."""

    def __init__(self, causal_lm: nn.Module):
        super().__init__()
        self.backbone = causal_lm.get_decoder()
        hidden = causal_lm.config.hidden_size
        self.value_head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.value_head.weight)  # start at V = 0: no prior about the rewards
        nn.init.zeros_(self.value_head.bias)
        self.value_head.to(next(self.backbone.parameters()))

    def forward(self, input_ids, attention_mask, response_length: int) -> torch.Tensor:
        out = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            use_cache=False,
        )
        hidden = out.last_hidden_state[:, -response_length - 1 : -1]  # [B, R, H]
        return self.value_head(hidden).squeeze(-1).float()  # [B, R]


def compute_values(
    critic: ValueModel,
    batch: Batch,
    micro_batch_size: int,
    max_tokens: int | None = None,
    world: World | None = None,
) -> torch.Tensor:
    """The critic's values of the batch's response tokens (no gradient), 0 on padding: ``[N, R]``."""

    def forward(micro: Batch) -> torch.Tensor:
        return critic(micro.input_ids, micro.attention_mask, micro.response_length)  # [n, r]

    values = forward_rows(critic, batch, micro_batch_size, max_tokens, forward, world)  # [N, R]
    return values * batch.response_mask


@dataclass(frozen=True)
class CriticUpdateSettings:
    """From ``critic.*`` as resolved (no defaults: see trainer.settings)."""

    schedule: UpdateSchedule
    cliprange_value: float
    loss_agg_mode: str


def update_critic(
    critic: ValueModel,
    optimizer,
    batch: Batch,
    settings: CriticUpdateSettings,
    generator: torch.Generator,
    world: World | None = None,
) -> dict[str, float]:
    """Every epoch and mini-batch of one rollout; ``critic/vf_loss``, ``critic/vf_clipfrac`` (token-weighted
    over the mini-batch) and ``critic/grad_norm``, averaged over optimizer steps."""
    micro_loss = partial(value_micro_loss, settings=settings)
    return ppo_update(
        critic, optimizer, batch, settings.schedule, generator, micro_loss, prefix="critic", world=world
    )


def value_micro_loss(critic, micro: Batch, counts: dict, *, settings: CriticUpdateSettings):
    values = critic(micro.input_ids, micro.attention_mask, micro.response_length)  # [n, r]
    loss, clip_frac = clipped_value_loss(
        values,
        micro.values,
        micro.returns,
        micro.response_mask,
        cliprange_value=settings.cliprange_value,
        loss_agg_mode=settings.loss_agg_mode,
        **counts,
    )
    weight = float(micro.response_mask.sum()) / max(counts["global_num_tokens"], 1)  # share of the tokens
    terms = {"critic/vf_loss": loss.item(), "critic/vf_clipfrac": clip_frac * weight}
    return loss, {}, terms
