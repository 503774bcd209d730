"""The value model for ``algorithm.adv_estimator=gae``: a causal LM's backbone with a scalar head.

``V(s_t)`` for response token ``t`` is read at the position that predicts it (``P + t - 1``), the same
alignment as the token log-probs. Its loss is PPO's clipped value loss (Schulman et al., arXiv 1707.06347;
verl's ``compute_value_loss``)::

    v_clipped = old_v + clamp(v - old_v, -cliprange_value, cliprange_value)
    loss_t    = 0.5 * max((v - R)^2, (v_clipped - R)^2)

aggregated over response tokens with the critic's ``loss_agg_mode`` (token-mean by default).
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn

from sapo.batch import Batch
from sapo.core.aggregation import aggregate_loss
from sapo.models.logprobs import position_ids_from_mask


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


@torch.no_grad()
def compute_values(
    critic: ValueModel, batch: Batch, micro_batch_size: int, max_tokens: int | None = None
) -> torch.Tensor:
    critic.eval()
    out = batch.response_mask.new_zeros(batch.num_sequences, batch.response_length)  # [N, R]
    for rows, micro in batch.micro_batches(micro_batch_size, max_tokens):
        trimmed = micro.trimmed()
        values = critic(trimmed.input_ids, trimmed.attention_mask, trimmed.response_length)  # [n, r]
        out[rows, : values.shape[1]] = values
    return out * batch.response_mask  # [N, R]


def value_loss(values, old_values, returns, mask, *, cliprange_value: float, loss_agg_mode: str, **counts):
    """The clipped value loss (module docstring) and its clip fraction."""
    clipped = old_values + (values - old_values).clamp(-cliprange_value, cliprange_value)  # [B, R]
    loss_unclipped = (values - returns) ** 2  # [B, R]
    loss_clipped = (clipped - returns) ** 2  # [B, R]
    loss_mat = 0.5 * torch.maximum(loss_unclipped, loss_clipped)  # [B, R]
    loss = aggregate_loss(loss_mat, mask, loss_agg_mode, **counts)
    clip_frac = ((loss_clipped > loss_unclipped).float() * mask).sum() / mask.sum().clamp(min=1)
    return loss, float(clip_frac)


def update_critic(critic, optimizer, batch: Batch, settings, generator: torch.Generator) -> dict[str, float]:
    """Epochs over mini-batches, micro-batch accumulation and gradient clipping, as the actor's update."""
    critic.train()
    history: dict[str, list[float]] = defaultdict(list)
    for _ in range(settings.ppo_epochs):
        n = batch.num_sequences
        order = torch.randperm(n, generator=generator) if settings.shuffle else torch.arange(n)
        for rows in order.split(settings.mini_batch_size):
            mini = batch.select(rows)
            optimizer.zero_grad(set_to_none=True)
            counts = {
                "global_num_tokens": float(mini.response_mask.sum()),
                "global_num_seqs": float(len(rows)),
            }
            loss_total, clip_weighted = 0.0, 0.0
            for _, micro in mini.micro_batches(settings.micro_batch_size, settings.max_token_len):
                micro = micro.trimmed()
                values = critic(micro.input_ids, micro.attention_mask, micro.response_length)  # [n, r]
                loss, clip_frac = value_loss(
                    values,
                    micro.values,
                    micro.returns,
                    micro.response_mask,
                    cliprange_value=settings.cliprange_value,
                    loss_agg_mode=settings.loss_agg_mode,
                    **counts,
                )
                loss.backward()
                loss_total += float(loss)
                clip_weighted += (
                    clip_frac * float(micro.response_mask.sum()) / max(counts["global_num_tokens"], 1)
                )
            grad_norm = float(torch.nn.utils.clip_grad_norm_(critic.parameters(), settings.grad_clip))
            if torch.isfinite(torch.tensor(grad_norm)):
                optimizer.step()
            history["critic/vf_loss"].append(loss_total)
            history["critic/vf_clipfrac"].append(clip_weighted)
            history["critic/grad_norm"].append(grad_norm)
    return {name: sum(v) / len(v) for name, v in history.items()}
