"""The default rollout engine: sampling from the policy model itself, on CPU or one GPU.

Algorithm of `HFRolloutEngine.generate`:

1. check prompts, sampling numbers and seeds (before any compute); left-pad the prompts;
2. draw the noise: output row ``i * n + j`` (sample ``j`` of prompt ``i``) gets ``max_new_tokens`` uniforms
   from its own generator, seeded with ``sample_seed(seeds[i], j)`` (`sapo.rollout.seeds`), once per call;
3. prefill the prompts (one forward over ``[B, P]``), which fills a KV cache, repeated ``n`` times;
4. per step: sample a token per active row (`sample_next_token`: inverse CDF of the filtered distribution
   at the row's uniform for this step), record it and its log-prob; rows that sampled EOS are finished;
   once finished rows make up a quarter of the batch, drop them from the batch and the cache (they stop
   costing compute; the map from batch rows to output rows carries each row's noise along); decode;
5. assemble a `RolloutBatch` (responses right-padded to the longest one).

A row's tokens are a function of its prompt, its seed, the weights and the sampling numbers only, not of
the other prompts in the call, their order or their number (up to float rounding of batched matmuls).

Two steppers do steps 3-4: `FastDecoder` (a compact forward with a static cache for Qwen3 / Qwen2 / Llama,
see its module) and `_HFStepper` (the model's own forward with a ``DynamicCache``; any causal LM, e.g.
Qwen3-MoE). Both produce the same tokens and log-probs up to float rounding.

Weights: the engine holds the trainer's model object, so on one device there is nothing to copy after an
optimizer step. `update_weights` takes a stream of ``(name, tensor)`` pairs (`sapo.rollout.weights`) and
copies each into the held model, skipping tensors that already are its own storage; the fast path's fused
copies follow the parameters' versions, so an in-place change is seen by the next `generate`.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager

import torch

from sapo.errors import UserError
from sapo.rollout.base import RolloutBatch, SamplingParams, check_prompts, left_pad, prompt_seeds
from sapo.rollout.fast_decoder import FastDecoder, fused_layers, supports_fast_path
from sapo.rollout.registry import register_rollout_engine
from sapo.rollout.sampling import sample_next_token
from sapo.rollout.seeds import sample_seed
from sapo.rollout.weights import WeightStream, copy_weights_into

# Compact the batch once this fraction of its rows has finished: copying the cache costs about as much as
# a few decode steps, so compacting after every single finished row would cost more than it saves.
COMPACT_FRACTION = 0.25


class _HFStepper:
    """Generic path: the model's own forward and a DynamicCache (works for every causal LM)."""

    def __init__(self, model):
        from transformers import DynamicCache

        self.model = model
        self.cache = DynamicCache(config=model.config)
        # transformers 5 renamed past_key_values to cache (the old name warns until its removal).
        accepts_cache = "cache" in inspect.signature(model.forward).parameters
        self.cache_kwarg = "cache" if accepts_cache else "past_key_values"

    def _forward(self, ids, positions):
        out = self.model(
            input_ids=ids,
            attention_mask=self.mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{self.cache_kwarg: self.cache},
        )
        return out.logits[:, -1]  # [B, V]

    def prefill(self, ids, mask, repeats: int = 1):
        """Prompts ``[b, P]`` run once; the cache is then repeated for the ``repeats`` samples of each."""
        self.mask = mask  # [b, P]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # [b, P]
        self.next_pos = positions[:, -1] + 1  # [b]
        logits = self._forward(ids, positions)  # [b, V]
        if repeats > 1:
            self.cache.batch_repeat_interleave(repeats)
            self.mask = self.mask.repeat_interleave(repeats, dim=0)
            self.next_pos = self.next_pos.repeat_interleave(repeats, dim=0)
            logits = logits.repeat_interleave(repeats, dim=0)
        return logits  # [b * repeats, V]

    def decode(self, tokens):
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(tokens), 1)], dim=1)  # [B, S + 1]
        positions = self.next_pos[:, None]  # [B, 1]
        self.next_pos = self.next_pos + 1
        return self._forward(tokens[:, None], positions)

    def select(self, rows):
        self.cache.batch_select_indices(rows)
        self.mask, self.next_pos = self.mask[rows], self.next_pos[rows]


@contextmanager
def _eval_mode(model):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _eos_ids(model, tokenizer, eos_token_ids) -> list[int]:
    if eos_token_ids is not None:
        return sorted({int(i) for i in eos_token_ids})
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos] if gen_eos is not None else [])
    return sorted(ids)


class HFRolloutEngine:
    """Batched KV-cached sampling on the policy model (see the module docstring).

    ``fast_path``: ``"auto"`` (compact decoder where supported, else the model's forward), ``True``
    (require it), ``False`` (always the model's forward). The fast path keeps fused copies of the q/k/v and
    gate/up weights (about two thirds of the decoder's parameters) between calls; on a memory-tight GPU,
    ``fast_path=False`` avoids that copy.
    """

    def __init__(self, model, tokenizer, *, fast_path: bool | str = "auto", eos_token_ids=None):
        self.model = model
        self.tokenizer = tokenizer
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.eos_token_ids = _eos_ids(model, tokenizer, eos_token_ids)
        if not self.eos_token_ids:
            raise UserError("the tokenizer has no EOS token, so responses could never end: set eos_token")
        if fast_path is False and getattr(model, "is_native", False):
            raise UserError(
                "fast_path=False samples through transformers' forward, which sapo's native model does not "
                "have: keep fast_path='auto', or load the model with impl='hf' "
                "(actor_rollout_ref.model.impl=hf)"
            )
        if fast_path is True and not supports_fast_path(model):
            raise UserError(
                f"fast_path=True but {model.config.model_type!r} is not supported by the fast "
                "decoder (qwen3, qwen2, llama): use fast_path='auto'"
            )
        self.fast_path = fast_path
        self._fused = None  # (parameter versions, fused layer weights) of the fast path

    def update_weights(self, weights: WeightStream) -> None:
        """Copy ``(name, tensor)`` pairs into the model the engine samples from (see the module docstring)."""
        copy_weights_into(self.model, weights)

    def uses_fast_path(self) -> bool:
        return self.fast_path is not False and supports_fast_path(self.model)

    def _stepper(self, batch_size: int, max_length: int):
        if self.uses_fast_path():
            self._fused = fused_layers(self.model, self._fused)
            return FastDecoder(self.model, self._fused[1], batch_size, max_length)
        return _HFStepper(self.model)

    def generate(
        self, prompts: list[list[int]], sampling: SamplingParams, seeds: list[int] | None = None
    ) -> RolloutBatch:
        """``sampling.n`` responses per prompt; ``seeds``: one per prompt (`sapo.rollout.seeds`), None:
        derived from ``sampling.seed`` or, without one, from torch's global generator."""
        sampling.validate()
        config = self.model.config
        context = getattr(config, "max_position_embeddings", None)
        check_prompts(prompts, config.vocab_size, sampling.max_new_tokens, context)
        seeds = prompt_seeds(len(prompts), sampling, seeds)
        device = self.model.get_input_embeddings().weight.device
        prompt_ids, prompt_mask = left_pad(prompts, self.pad_token_id, device)  # [B, P]
        # [N, max_new]: the uniforms of output row i*n+j, drawn once from its own seed (none for greedy)
        uniforms = None if sampling.greedy else row_uniforms(seeds, sampling.n, sampling.max_new_tokens)
        uniforms = uniforms.to(device) if uniforms is not None else None
        with torch.no_grad(), _eval_mode(self.model):
            tokens, log_probs, lengths = self._sample(prompt_ids, prompt_mask, sampling, uniforms)
        return self._assemble(prompt_ids, prompt_mask, tokens, log_probs, lengths, sampling.n)

    def _sample(self, prompt_ids, prompt_mask, sampling, uniforms):
        """Token ids, log-probs ``[N, max_new]`` and response lengths ``[N]`` (-1 while unfinished)."""
        num, max_new = prompt_ids.shape[0] * sampling.n, sampling.max_new_tokens
        device = prompt_ids.device
        tokens = torch.full((num, max_new), self.pad_token_id, dtype=torch.long, device=device)
        log_probs = torch.zeros((num, max_new), dtype=torch.float32, device=device)
        lengths = torch.full((num,), -1, dtype=torch.long, device=device)  # [N]
        eos = torch.tensor(self.eos_token_ids, device=device)
        stepper = self._stepper(prompt_ids.shape[0], prompt_ids.shape[1] + max_new)
        logits = stepper.prefill(prompt_ids, prompt_mask, repeats=sampling.n)  # [N, V]
        rows = torch.arange(num, device=device)  # batch row -> output row
        live = torch.ones(num, dtype=torch.bool, device=device)  # per batch row, not finished yet
        for step in range(max_new):
            # rows maps batch rows to output rows, so each row keeps its own uniforms through compaction
            step_uniforms = None if uniforms is None else uniforms[rows, step]  # [b]
            next_tokens, next_log_probs = sample_next_token(logits, sampling, step_uniforms)  # [b], [b]
            tokens[rows[live], step] = next_tokens[live]
            log_probs[rows[live], step] = next_log_probs[live]
            ended = live & torch.isin(next_tokens, eos)  # [b]
            lengths[rows[ended]] = step + 1
            live = live & ~ended
            num_live = int(live.sum())
            if num_live == 0 or step == max_new - 1:
                break
            if len(live) - num_live >= COMPACT_FRACTION * len(live):
                keep = live.nonzero().squeeze(-1)  # [b']
                stepper.select(keep)
                rows, next_tokens, live = rows[keep], next_tokens[keep], live[keep]
            logits = stepper.decode(next_tokens)
        return tokens, log_probs, lengths

    def _assemble(self, prompt_ids, prompt_mask, tokens, log_probs, lengths, n) -> RolloutBatch:
        prompt_ids = prompt_ids.repeat_interleave(n, dim=0)  # [N, P]
        prompt_mask = prompt_mask.repeat_interleave(n, dim=0)  # [N, P]
        truncated = lengths < 0  # [N]
        lengths = torch.where(truncated, tokens.shape[1], lengths)  # [N]
        width = max(int(lengths.max()), 1)
        response_mask = (torch.arange(width, device=tokens.device) < lengths[:, None]).long()  # [N, R]
        response_ids = tokens[:, :width].masked_fill(response_mask == 0, self.pad_token_id)
        num_prompts = prompt_ids.shape[0] // n
        return RolloutBatch(
            prompt_ids=prompt_ids,
            prompt_mask=prompt_mask,
            response_ids=response_ids,
            response_mask=response_mask,
            rollout_log_probs=log_probs[:, :width] * response_mask,
            truncated=truncated,
            prompt_index=torch.arange(num_prompts, device=tokens.device).repeat_interleave(n),
            pad_token_id=self.pad_token_id,
        )


def row_uniforms(seeds: list[int], n: int, max_new_tokens: int) -> torch.Tensor:
    """``[len(seeds) * n, max_new_tokens]`` uniforms in [0, 1): row ``i * n + j`` (sample ``j`` of prompt
    ``i``) from its own generator, seeded with ``sample_seed(seeds[i], j)``."""
    rows = [
        torch.rand(max_new_tokens, generator=torch.Generator().manual_seed(sample_seed(seed, j)))
        for seed in seeds
        for j in range(n)
    ]
    return torch.stack(rows)


register_rollout_engine("hf", lambda: HFRolloutEngine)
