"""The rollout protocol: sampling parameters, the batch an engine returns, and the engine interface.

An engine turns token-id prompts into ``n`` sampled responses per prompt and reports, per response token,
its own log-probability of the token it sampled. Everything here is plain data plus checks that run before
any compute, so a bad number fails fast with a message that names the fix.

Log-prob convention (verl's): ``rollout_log_probs[i, t] = log softmax(logits / temperature)[token]`` over
the FULL vocabulary, also when top-k / top-p restricted the set the token was drawn from. That is the
quantity the trainer recomputes with `sapo.models.logprobs.token_log_probs(..., temperature=temperature)`,
so the two can be compared token by token. The log-prob of the truncated distribution the sampler really
drew from is larger by ``-log(kept probability mass)``; with ``top_k`` off and ``top_p == 1`` they coincide.
Greedy decoding (``do_sample=False`` or ``temperature == 0``) reports ``log softmax(logits)`` (temperature 1).

Seeds: ``generate`` takes one seed per prompt, and sample ``j`` of prompt ``i`` depends only on that
prompt's tokens, ``seeds[i]``, ``j``, the weights and the sampling numbers, never on the other prompts of
the call, their order or their number (`sapo.rollout.seeds`): several processes, each generating its share
of a step's prompts, draw what one process would have drawn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from sapo.errors import UserError
from sapo.rollout.seeds import TRAIN_STREAM, rollout_seeds


def _is_int(value) -> bool:
    """An integer (numpy's too), not a bool: ``n=True`` is a mistake, not 1."""
    return isinstance(value, Integral) and not isinstance(value, (bool, np.bool_))


def _is_real(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, (bool, np.bool_))


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. Names follow verl's ``actor_rollout_ref.rollout.*`` keys where they exist.

    ``top_k`` of -1 or 0 means off (verl uses -1). ``temperature == 0`` or ``do_sample=False`` is greedy.
    ``seed`` makes sampling reproducible when ``generate`` gets no per-prompt seeds (the prompts' seeds are
    then derived from it and their positions); None draws one from torch's global generator (so
    ``torch.manual_seed`` still makes a run reproducible). Per-prompt seeds passed to ``generate`` win.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_new_tokens: int = 32
    do_sample: bool = True
    seed: int | None = None

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """A UserError naming the first parameter of the wrong type or outside its range."""
        if not _is_int(self.n) or self.n < 1:
            raise UserError(f"n (samples per prompt) must be an integer >= 1 (got {self.n!r}): set rollout.n")
        if not _is_real(self.temperature) or not math.isfinite(self.temperature) or self.temperature < 0:
            raise UserError(
                f"temperature must be a finite number >= 0 (got {self.temperature!r}): use 1.0 to sample "
                "from the model's distribution, 0 for greedy decoding"
            )
        if not _is_real(self.top_p) or not 0.0 < self.top_p <= 1.0:
            raise UserError(
                f"top_p must be a number in (0, 1] (got {self.top_p!r}): use 1.0 to switch top-p off"
            )
        if not _is_int(self.top_k) or self.top_k < -1:
            raise UserError(f"top_k must be an integer >= 1, or -1 / 0 for off (got {self.top_k!r})")
        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            raise UserError(
                f"max_new_tokens must be an integer >= 1 (got {self.max_new_tokens!r}): set "
                "rollout.response_length / data.max_response_length"
            )
        if not isinstance(self.do_sample, (bool, np.bool_)):  # 0 / "false" would pass an `if do_sample`
            raise UserError(f"do_sample must be true or false (got {self.do_sample!r})")
        if self.seed is not None and not _is_int(self.seed):
            raise UserError(f"seed must be an integer or None (got {self.seed!r})")

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature == 0

    @property
    def logprob_temperature(self) -> float:
        """The temperature the reported log-probs use (1.0 for greedy decoding)."""
        return 1.0 if self.greedy else float(self.temperature)


@dataclass
class RolloutBatch:
    """``N = num_prompts * n`` responses; the ``n`` samples of prompt ``i`` are rows ``i*n .. i*n+n-1``."""

    prompt_ids: torch.Tensor  # [N, P] long, left-padded with pad_token_id
    prompt_mask: torch.Tensor  # [N, P] long, 1 on real prompt tokens
    response_ids: torch.Tensor  # [N, R] long, right-padded with pad_token_id after EOS
    response_mask: torch.Tensor  # [N, R] long, 1 up to and including the EOS token
    rollout_log_probs: torch.Tensor  # [N, R] float32, engine's log-prob of each sampled token, 0 on padding
    truncated: torch.Tensor  # [N] bool, hit max_new_tokens without sampling EOS
    prompt_index: torch.Tensor  # [N] long, index into the list of prompts given to generate
    pad_token_id: int = 0

    @property
    def response_lengths(self) -> torch.Tensor:
        return self.response_mask.sum(-1)  # [N]

    def input_ids(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``[prompt | response]`` ids and attention mask ``[N, P + R]``, ready for `token_log_probs`."""
        ids = torch.cat([self.prompt_ids, self.response_ids], dim=1)  # [N, P + R]
        mask = torch.cat([self.prompt_mask, self.response_mask], dim=1)  # [N, P + R]
        return ids, mask


@runtime_checkable
class RolloutEngine(Protocol):
    """What the trainer needs from a generation backend."""

    def generate(
        self, prompts: list[list[int]], sampling: SamplingParams, seeds: list[int] | None = None
    ) -> RolloutBatch:
        """Sample ``sampling.n`` responses for each prompt (token ids, no padding). ``seeds``: one int per
        prompt (`sapo.rollout.seeds.rollout_seeds`); sample ``j`` of prompt ``i`` depends on ``seeds[i]``
        and ``j``, not on the other prompts. None: derived as `prompt_seeds` says."""
        ...

    def update_weights(self, weights) -> None:
        """Make the engine sample from new policy weights, given as ``(name, tensor)`` pairs
        (`sapo.rollout.weights.weight_stream(model)`, FSDP's gathered full tensors, ...)."""
        ...


def check_prompts(prompts, vocab_size: int, max_new_tokens: int, context_length: int | None) -> None:
    """UserError for an empty batch, an empty prompt, an id outside the vocabulary, or a prompt that leaves
    no room for ``max_new_tokens`` in the model's context."""
    if not isinstance(prompts, (list, tuple)) or len(prompts) == 0:
        raise UserError("generate() got no prompts: pass a non-empty list of token-id lists")
    for i, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise UserError(f"prompt {i} is empty: every prompt needs at least one token (e.g. a BOS token)")
        low, high = min(prompt), max(prompt)
        if low < 0 or high >= vocab_size:
            raise UserError(
                f"prompt {i} has token id {low if low < 0 else high} outside the vocabulary "
                f"[0, {vocab_size}): tokenize prompts with the model's own tokenizer"
            )
        if context_length is not None and len(prompt) + max_new_tokens > context_length:
            fixes = []
            if context_length - max_new_tokens >= 1:
                fixes.append(
                    f"shorten prompts (data.max_prompt_length <= {context_length - max_new_tokens}, "
                    "data.filter_overlong_prompts)"
                )
            if context_length - len(prompt) >= 1:
                fixes.append(f"lower the response length to <= {context_length - len(prompt)}")
            raise UserError(
                f"prompt {i} has {len(prompt)} tokens, and with max_new_tokens={max_new_tokens} that exceeds "
                f"the model's context of {context_length} tokens: "
                + (" or ".join(fixes) or "use shorter prompts and responses")
            )


def prompt_seeds(num_prompts: int, sampling: SamplingParams, seeds=None) -> list[int]:
    """The per-prompt seeds of one ``generate`` call: ``seeds`` as given (checked: one int per prompt), or,
    for None, ``rollout_seeds(base, TRAIN_STREAM, 0, range(num_prompts))`` with ``base = sampling.seed``,
    else one draw of torch's global generator (so ``torch.manual_seed`` still makes a run reproducible)."""
    if seeds is None:
        base = sampling.seed if sampling.seed is not None else int(torch.randint(0, 2**62, ()).item())
        return rollout_seeds(base, TRAIN_STREAM, 0, range(num_prompts))
    if isinstance(seeds, (str, bytes)) or not hasattr(seeds, "__len__"):
        raise UserError(
            f"generate() got seeds={seeds!r}: pass a list with one integer seed per prompt "
            "(sapo.rollout.seeds.rollout_seeds), or None"
        )
    if len(seeds) != num_prompts:
        raise UserError(
            f"generate() got {len(seeds)} seeds for {num_prompts} prompts: pass one integer seed per prompt "
            "(sapo.rollout.seeds.rollout_seeds), or None"
        )
    out = []
    for i, seed in enumerate(seeds):
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise UserError(
                f"seed {i} of generate() is {seed!r}: seeds must be non-negative integers, one per prompt "
                "(sapo.rollout.seeds.rollout_seeds)"
            )
        out.append(int(seed))
    return out


def left_pad(prompts: list[list[int]], pad_token_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids [B, P], mask [B, P])`` with each prompt right-aligned (left padding)."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt) :] = 1
    return ids.to(device), mask.to(device)
