"""A vLLM rollout engine for GPUs (optional: ``pip install 'sapo-rl[vllm]'``; vLLM is imported lazily).

vLLM runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) next to the trainer's model on the same
GPU, with ``tensor_parallel_size=1``. After each optimizer step the trainer calls `update_weights` with a
stream of ``(name, tensor)`` pairs in Hugging Face checkpoint names (`sapo.rollout.weights`); they go to
vLLM's ``reload_weights`` through ``collective_rpc`` with ``is_checkpoint_format=True`` (vLLM repacks them
into its fused qkv / gate-up layout), then the prefix cache is reset, so no checkpoint is written.

Its config keys (``gpu_memory_utilization``, ``enforce_eager``, and ``trainer.seed``) and their checks are
registered below with the engine (`sapo.rollout.registry`).

Log-probs: vLLM is asked for ``logprobs=0`` (the sampled token's log-prob) with
``logprobs_mode="processed_logprobs"``: the log-prob after temperature scaling, which with top-k off and
``top_p == 1`` is the same quantity as the ``hf`` engine's and the trainer's
``token_log_probs(..., temperature=T)``. With top-k / top-p on, vLLM's processed log-probs may be those of
the truncated distribution (see `sapo.rollout.base` for the ``hf`` engine's convention).

Seeds: one request per prompt, each with ``SamplingParams(seed=seeds[i])``, so a prompt's samples come
from its own seeded generator, whatever else is in the batch (see `sapo.rollout.seeds`). vLLM's own
sampler is not the ``hf`` engine's inverse-CDF draw: the two engines draw different (equally distributed)
responses from the same seed.

Not run in this project's CI (no GPU, no vLLM there): see docs/models_and_rollout.md.
"""

from __future__ import annotations

import os

import torch

from sapo.errors import UserError
from sapo.rollout.base import RolloutBatch, SamplingParams, check_prompts, left_pad, prompt_seeds
from sapo.rollout.registry import register_rollout_engine
from sapo.rollout.weights import WeightStream, check_is_stream


def _import_vllm():
    try:
        import vllm
    except ImportError as exc:
        raise UserError(
            "rollout engine 'vllm' needs the vllm package: pip install 'sapo-rl[vllm]' (on a CUDA machine), "
            "or set actor_rollout_ref.rollout.name=hf"
        ) from exc
    if not torch.cuda.is_available():
        raise UserError(
            "the 'vllm' rollout engine needs a CUDA GPU: on CPU set actor_rollout_ref.rollout.name=hf"
        )
    return vllm


class VLLMRolloutEngine:
    """`RolloutEngine` on a colocated ``vllm.LLM`` built from the model's directory."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        model_path: str | None = None,
        gpu_memory_utilization: float = 0.5,
        max_model_len: int | None = None,
        enforce_eager: bool = False,
        seed: int = 0,
    ):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process engine: weights reachable
        vllm = _import_vllm()
        path = model_path or getattr(model.config, "_name_or_path", None)
        if not path or not os.path.isdir(path):
            raise UserError(
                f"the vllm engine loads the model from its directory, and {path!r} is not one: "
                "pass model_path=<directory the policy was loaded from>"
            )
        self.model, self.tokenizer = model, tokenizer
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.context_length = max_model_len or getattr(model.config, "max_position_embeddings", None)
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        self.llm = vllm.LLM(
            model=path,
            tokenizer=path,
            dtype=dtype,
            seed=seed,
            tensor_parallel_size=1,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=self.context_length,
            enforce_eager=enforce_eager,
            logprobs_mode="processed_logprobs",
        )
        self._vllm = vllm

    def update_weights(self, weights: WeightStream) -> None:
        """Load ``(name, tensor)`` pairs into vLLM's model and drop the KV of cached prompts."""
        check_is_stream(weights)
        # Passed on lazily: a sharded model's stream gathers one full tensor at a time, never all at once.
        stream = ((name, tensor.detach()) for name, tensor in weights)
        self.llm.collective_rpc(
            "reload_weights", kwargs={"weights_iterator": stream, "is_checkpoint_format": True}
        )
        self.llm.reset_prefix_cache()  # cached prompt KV was computed with the old weights

    def _vllm_sampling(self, sampling: SamplingParams, seed: int | None = None):
        """vLLM's sampling parameters for one request; ``seed`` (the prompt's) seeds its ``n`` samples."""
        return self._vllm.SamplingParams(
            n=sampling.n,
            temperature=0.0 if sampling.greedy else sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k if sampling.top_k > 0 else -1,
            max_tokens=sampling.max_new_tokens,
            seed=seed,
            logprobs=0,
            detokenize=False,
        )

    def generate(
        self, prompts: list[list[int]], sampling: SamplingParams, seeds: list[int] | None = None
    ) -> RolloutBatch:
        """``seeds``: one per prompt (`sapo.rollout.base.prompt_seeds` for None). One request per prompt,
        each with its own ``SamplingParams(seed=seeds[i])``: vLLM gives a seeded request its own generator,
        so its ``n`` samples do not depend on the other requests of the batch."""
        sampling.validate()
        check_prompts(prompts, self.model.config.vocab_size, sampling.max_new_tokens, self.context_length)
        seeds = prompt_seeds(len(prompts), sampling, seeds)
        outputs = self.llm.generate(
            [{"prompt_token_ids": list(p)} for p in prompts],
            [self._vllm_sampling(sampling, seed) for seed in seeds],  # one per request, in order
            use_tqdm=False,
        )
        responses, log_probs, truncated = [], [], []
        for request in outputs:
            for completion in request.outputs:  # the n samples of this prompt, in order
                ids = list(completion.token_ids)
                responses.append(ids)
                log_probs.append([step[token].logprob for step, token in zip(completion.logprobs, ids)])
                truncated.append(completion.finish_reason == "length")
        return self._assemble(prompts, responses, log_probs, truncated, sampling.n)

    def _assemble(self, prompts, responses, log_probs, truncated, n) -> RolloutBatch:
        prompt_ids, prompt_mask = left_pad(prompts, self.pad_token_id)  # [B, P]
        width = max(1, max(len(r) for r in responses))
        response_ids = torch.full((len(responses), width), self.pad_token_id, dtype=torch.long)
        response_mask = torch.zeros((len(responses), width), dtype=torch.long)
        rollout_log_probs = torch.zeros((len(responses), width), dtype=torch.float32)
        for row, (ids, lps) in enumerate(zip(responses, log_probs)):
            response_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            response_mask[row, : len(ids)] = 1
            rollout_log_probs[row, : len(ids)] = torch.tensor(lps, dtype=torch.float32)
        return RolloutBatch(
            prompt_ids=prompt_ids.repeat_interleave(n, dim=0),
            prompt_mask=prompt_mask.repeat_interleave(n, dim=0),
            response_ids=response_ids,
            response_mask=response_mask,
            rollout_log_probs=rollout_log_probs,
            truncated=torch.tensor(truncated, dtype=torch.bool),
            prompt_index=torch.arange(len(prompts)).repeat_interleave(n),
            pad_token_id=self.pad_token_id,
        )


def _check_settings(settings: dict) -> list[str]:
    fraction = settings.get("gpu_memory_utilization")
    if fraction is not None and not 0 < fraction <= 1:
        return [
            f"actor_rollout_ref.rollout.gpu_memory_utilization={fraction} must be in (0, 1]: it is the "
            "fraction of GPU memory vLLM may take, e.g. 0.5 next to the trainer's model"
        ]
    return []


register_rollout_engine(
    "vllm",
    lambda: VLLMRolloutEngine,
    settings={
        "gpu_memory_utilization": "actor_rollout_ref.rollout.gpu_memory_utilization",
        "enforce_eager": "actor_rollout_ref.rollout.enforce_eager",
        "seed": "trainer.seed",
    },
    check=_check_settings,
)
