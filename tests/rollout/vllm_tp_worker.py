"""Run under ``torchrun --nproc_per_node 2`` by test_vllm_tensor_parallel.py: two ranks share one vllm
engine with ``tensor_model_parallel_size=2`` and each writes what it saw to ``<out>/rank<r>.json``.

Each rank has its own prompts (rank 0 four, rank 1 three) and compares the engine's output for them with
its own ``hf`` engine on the same (whole) model: greedy continuations, log-probs of sampled tokens, after
a weight sync, and the stale-policy guard on tensors that only one rank's engine shard holds.

Usage: vllm_tp_worker.py <model dir> <out dir>
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from sapo.models.loading import load_model_and_tokenizer
from sapo.models.logprobs import token_log_probs
from sapo.rollout import make_rollout_engine
from sapo.rollout.base import SamplingParams
from sapo.rollout.vllm_engine import WeightSyncError
from sapo.rollout.weights import weight_stream

TEXTS = ["1+2=", "3+4=", "5+0=", "2+2=", "0+1=", "4+4=", "3+3="]


def _greedy(engine, prompts):
    batch = engine.generate(prompts, SamplingParams(n=1, do_sample=False, max_new_tokens=16, seed=0))
    return [row[mask.bool()].tolist() for row, mask in zip(batch.response_ids, batch.response_mask)]


def _log_prob_gap(model, engine, prompts) -> float:
    batch = engine.generate(prompts, SamplingParams(n=3, temperature=0.8, max_new_tokens=16, seed=5))
    ids, mask = batch.input_ids()
    lp, _ = token_log_probs(model, ids, mask, batch.response_ids.shape[1], temperature=0.8)
    return ((lp - batch.rollout_log_probs) * batch.response_mask).abs().max().item()


def _stale_names(engine, model, name, rows=None, cols=None) -> list[str]:
    """Move one tensor of the trainer's model (only ``rows`` / ``cols`` of it) without syncing; the
    names the guard reports (then the change is undone)."""
    param = dict(model.named_parameters())[name]
    with torch.no_grad():
        original = param.clone()
        param[rows or slice(None), cols or slice(None)] += 1e-2
    try:
        engine.verify_weights(weight_stream(model))
        return []
    except WeightSyncError as error:
        return [n for n in dict(model.named_parameters()) if n in str(error)]
    finally:
        with torch.no_grad():
            param.copy_(original)


def main(model_dir: str, out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model, tok = load_model_and_tokenizer(model_dir, impl="hf")
    hf = make_rollout_engine("hf", model, tok)
    vllm = make_rollout_engine(
        "vllm", model, tok, max_model_len=128, enforce_eager=True, seed=0, tensor_model_parallel_size=2
    )
    prompts = [tok(t)["input_ids"] for t in TEXTS][rank * 4 : rank * 4 + 4]  # 4 and 3 prompts
    result = {"prompts": len(prompts), "greedy_equal": _greedy(vllm, prompts) == _greedy(hf, prompts)}
    result["log_prob_gap"] = _log_prob_gap(model, vllm, prompts)
    before = _greedy(vllm, prompts)
    generator = torch.Generator().manual_seed(11)  # the same update on both ranks
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.3)
    vllm.update_weights(weight_stream(model))
    after = _greedy(vllm, prompts)
    result["synced_greedy_equal"] = after == _greedy(hf, prompts)
    result["sync_changed_output"] = after != before
    result["synced_log_prob_gap"] = _log_prob_gap(model, vllm, prompts)
    q, k, o = (f"model.layers.1.self_attn.{p}_proj.weight" for p in "qko")
    half_of_q = model.get_parameter(q).shape[0] // 2
    # vLLM pads the vocabulary to a multiple of 64 and gives each TP rank an equal share: rank 1 holds the
    # rows from 64 on of this ~100-token vocabulary
    vocab = model.config.vocab_size
    result["stale"] = {
        "q_rows_of_rank_1": _stale_names(vllm, model, q, rows=slice(half_of_q, None)),
        "k_whole": _stale_names(vllm, model, k),
        "o_whole": _stale_names(vllm, model, o),
        "embed_rows_of_rank_1": _stale_names(vllm, model, "model.embed_tokens.weight", rows=slice(64, vocab)),
    }
    vllm.close()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:3])
