"""The training batch: every tensor the trainer keeps about one rollout, one documented field each.

Shapes: ``N`` sequences (prompts x ``rollout.n``), ``P`` prompt tokens (left-padded), ``R`` response tokens
(right-padded). A sequence's full input is ``input_ids = [prompt | response]`` of length ``P + R``; the
response's token ``t`` is predicted from position ``P + t - 1``.

Tensors that a step has not produced yet are ``None`` (e.g. ``ref_log_prob`` without a KL term, ``values``
without a critic).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch


@dataclass
class Batch:
    input_ids: torch.Tensor  # [N, P + R] long: left-padded prompt, then right-padded response
    attention_mask: torch.Tensor  # [N, P + R] long: 1 on real prompt and response tokens
    response_mask: torch.Tensor  # [N, R] float: 1 on response tokens up to and including EOS
    group_index: torch.Tensor  # [N] long: which prompt a sequence answers (GRPO groups)
    truncated: torch.Tensor  # [N] bool: response hit the length limit without EOS
    rollout_log_probs: torch.Tensor | None = None  # [N, R] the rollout engine's own log-probs
    old_log_prob: torch.Tensor | None = None  # [N, R] policy before this step's updates
    ref_log_prob: torch.Tensor | None = None  # [N, R] reference policy (KL terms)
    values: torch.Tensor | None = None  # [N, R] critic values (gae)
    token_level_scores: torch.Tensor | None = None  # [N, R] reward-function score at the last token
    token_level_rewards: torch.Tensor | None = None  # [N, R] scores minus the in-reward KL penalty
    advantages: torch.Tensor | None = None  # [N, R]
    returns: torch.Tensor | None = None  # [N, R]
    # [N, R] detached truncated importance weights (algorithm.rollout_correction.rollout_is), computed once
    # on the whole batch before the update; they multiply the policy loss per token (0 on padding)
    rollout_is_weights: torch.Tensor | None = None

    @property
    def num_sequences(self) -> int:
        return self.input_ids.shape[0]

    @property
    def response_length(self) -> int:
        return self.response_mask.shape[1]

    def select(self, rows: torch.Tensor | list[int]) -> Batch:
        """The sub-batch of the given rows (every tensor field indexed along dim 0)."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        picked = {
            f.name: (value[rows] if isinstance(value, torch.Tensor) else value)
            for f in fields(self)
            for value in [getattr(self, f.name)]
        }
        return Batch(**picked)

    def split(self, size: int) -> list[Batch]:
        """Consecutive sub-batches of ``size`` rows (the last one may be shorter)."""
        return [
            self.select(range(i, min(i + size, self.num_sequences)))
            for i in range(0, self.num_sequences, size)
        ]

    def micro_batches(self, size: int, max_tokens: int | None = None) -> list[tuple[torch.Tensor, Batch]]:
        """``(rows, sub-batch)`` pairs covering every row once: consecutive runs of ``size`` rows, or, with
        ``max_tokens``, groups formed by :func:`token_budget_groups` over each row's real token count
        (prompt + response, padding excluded) -- verl's ``use_dynamic_bsz``."""
        if max_tokens is None:
            groups = [
                torch.arange(i, min(i + size, self.num_sequences)) for i in range(0, self.num_sequences, size)
            ]
        else:
            lengths = self.attention_mask.sum(-1).tolist()  # [N]
            groups = [torch.tensor(g) for g in token_budget_groups(lengths, max_tokens)]
        return [(rows, self.select(rows)) for rows in groups]

    def trimmed(self) -> Batch:
        """The same batch without columns that are padding in every row.

        Left columns of the prompt that no row uses and right columns of the response that no row uses
        cost compute in every forward pass of the update; dropping them changes no log-prob (a causal
        model with position ids from the attention mask sees the same tokens at the same positions).
        """
        prompt_len = self.input_ids.shape[1] - self.response_length
        prompt_used = self.attention_mask[:, :prompt_len].any(dim=0)  # [P]
        first_prompt_col = int(prompt_used.float().argmax()) if bool(prompt_used.any()) else prompt_len
        response_used = self.response_mask.any(dim=0)  # [R]
        last = int(response_used.nonzero().max()) + 1 if bool(response_used.any()) else 1
        keep = torch.cat([torch.arange(first_prompt_col, prompt_len), prompt_len + torch.arange(last)])
        changes = {"input_ids": self.input_ids[:, keep], "attention_mask": self.attention_mask[:, keep]}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor) and value.dim() == 2 and f.name not in changes:
                changes[f.name] = value[:, :last]
        return replace(self, **changes)

    def padded(self, prompt_length: int, response_length: int, pad_token_id: int) -> Batch:
        """The same batch widened to ``prompt_length`` prompt and ``response_length`` response columns:
        prompt columns added on the left, response columns on the right, as padding (id ``pad_token_id``,
        mask 0, zeros in the per-token tensors). Batches generated apart then line up as one."""
        prompt_now = self.input_ids.shape[1] - self.response_length
        left, right = prompt_length - prompt_now, response_length - self.response_length
        if left < 0 or right < 0:
            raise ValueError(f"cannot narrow a batch of widths ({prompt_now}, {self.response_length})")
        if left == 0 and right == 0:
            return self
        pad = torch.nn.functional.pad
        changes = {
            "input_ids": pad(self.input_ids, (left, right), value=pad_token_id),
            "attention_mask": pad(self.attention_mask, (left, right), value=0),
        }
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor) and value.dim() == 2 and f.name not in changes:
                changes[f.name] = pad(value, (0, right), value=0)
        return replace(self, **changes)


def token_budget_groups(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Row indices in groups whose summed length is at most ``max_tokens`` (a row longer than the budget
    gets a group of its own).

    Rows are taken longest first and each group is filled in that order (next-fit decreasing), so a group
    holds rows of similar length and its trimmed, padded block wastes little; each group lists its rows in
    ascending order. Any grouping gives the same update, because every micro-batch loss is normalised by the
    mini-batch's counts.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1 (got {max_tokens})")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    groups: list[list[int]] = []
    total = 0
    for i in order:
        if groups and total + lengths[i] <= max_tokens:
            groups[-1].append(i)
            total += lengths[i]
        else:
            groups.append([i])
            total = lengths[i]
    return [sorted(g) for g in groups]
