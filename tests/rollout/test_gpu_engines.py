"""GPU-only checks (marked gpu; skipped without CUDA, and the vllm ones also without vLLM)."""

import pytest
import torch

from sapo.models.loading import load_model_and_tokenizer
from sapo.models.logprobs import token_log_probs
from sapo.models.tiny import TinyModelSpec, build_tiny_model
from sapo.rollout import make_rollout_engine
from sapo.rollout.base import SamplingParams
from sapo.rollout.weights import weight_stream

pytestmark = pytest.mark.gpu

SPEC = TinyModelSpec(
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=128,
)


def _max_log_prob_gap(model, batch, temperature):
    ids, mask = batch.input_ids()
    device = next(model.parameters()).device
    lp, _ = token_log_probs(
        model, ids.to(device), mask.to(device), batch.response_ids.shape[1], temperature=temperature
    )
    return ((lp.cpu() - batch.rollout_log_probs.cpu()) * batch.response_mask.cpu()).abs().max().item()


def test_hf_engine_on_cuda_matches_trainer_log_probs(tmp_path):
    model, tok = load_model_and_tokenizer(build_tiny_model(tmp_path / "m", SPEC), device="cuda")
    prompts = [tok(t)["input_ids"] for t in ("12+34=", "hello", "a")]
    batch = make_rollout_engine("hf", model, tok).generate(
        prompts, SamplingParams(n=4, temperature=0.9, max_new_tokens=32, seed=0)
    )
    assert _max_log_prob_gap(model, batch, 0.9) < 1e-4


def test_vllm_engine_log_probs_and_in_place_weight_update(tmp_path):
    pytest.importorskip("vllm")
    model, tok = load_model_and_tokenizer(build_tiny_model(tmp_path / "m", SPEC), device="cuda")
    engine = make_rollout_engine("vllm", model, tok, gpu_memory_utilization=0.2, enforce_eager=True)
    prompts = [tok(t)["input_ids"] for t in ("12+34=", "hello", "a")]
    sampling = SamplingParams(n=4, temperature=0.9, max_new_tokens=32, seed=0)
    batch = engine.generate(prompts, sampling)
    assert batch.response_ids.shape[0] == 12 and batch.prompt_index.tolist()[:4] == [0, 0, 0, 0]
    assert _max_log_prob_gap(model, batch, 0.9) < 1e-3  # different kernels: looser than the hf engine's
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    engine.update_weights(weight_stream(model))
    assert _max_log_prob_gap(model, engine.generate(prompts, sampling), 0.9) < 1e-3


def test_vllm_sleep_mode_wakes_weights_then_kv_cache_around_the_sync(tmp_path):
    """free_cache_engine: sleep(level=1) after generate, wake_up(["weights"]), sync, wake_up(["kv_cache"])."""
    pytest.importorskip("vllm")
    model, tok = load_model_and_tokenizer(build_tiny_model(tmp_path / "m", SPEC), device="cuda")
    engine = make_rollout_engine(
        "vllm", model, tok, gpu_memory_utilization=0.2, enforce_eager=True, free_cache_engine=True
    )
    calls = []
    for name in ("sleep", "wake_up"):
        real = getattr(engine.llm, name)
        setattr(
            engine.llm,
            name,
            lambda *a, _real=real, _name=name, **kw: calls.append((_name, kw)) or _real(*a, **kw),
        )
    prompts = [tok(t)["input_ids"] for t in ("12+34=", "hello", "a")]
    sampling = SamplingParams(n=2, temperature=0.9, max_new_tokens=16, seed=0)
    engine.generate(prompts, sampling)
    assert engine.asleep and calls == [("sleep", {"level": 1})]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    engine.update_weights(weight_stream(model))  # the stale-policy guard checks the woken weights
    assert calls[1:] == [("wake_up", {"tags": ["weights"]}), ("wake_up", {"tags": ["kv_cache"]})]
    assert _max_log_prob_gap(model, engine.generate(prompts, sampling), 0.9) < 1e-3
