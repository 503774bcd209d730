"""The vllm engine run for real on CPU (marked vllm; skipped without vLLM: `pip install -e ".[vllm]"`).

One engine is built per module (vLLM takes seconds to start) on a tiny float32 Qwen3; tests that change
weights sync them back at the end, so the order of the tests does not matter.
"""

import pytest
import torch

from sapo.models.loading import load_model_and_tokenizer
from sapo.models.logprobs import token_log_probs
from sapo.models.tiny import TinyModelSpec, build_tiny_model
from sapo.rollout import make_rollout_engine
from sapo.rollout.base import SamplingParams
from sapo.rollout.weights import weight_stream

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

SPEC = TinyModelSpec(
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,  # vLLM's CPU attention kernels do not take head_dim=16
    max_position_embeddings=128,
)
# vLLM's CPU kernels and torch's round differently: log-probs agree to ~1e-5 on this model; the bound
# leaves room for longer sums without hiding a wrong temperature (a 0.1 change moves them by ~0.1).
LOG_PROB_TOLERANCE = 2e-4
TEXTS = [f"{a}+{b}=" for a in range(6) for b in range(6)]  # 36 prompts


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    path = build_tiny_model(tmp_path_factory.mktemp("vllm") / "m", SPEC, seed=3)
    model, tok = load_model_and_tokenizer(path, impl="hf")
    hf = make_rollout_engine("hf", model, tok)
    vllm = make_rollout_engine("vllm", model, tok, max_model_len=128, enforce_eager=True, seed=0)
    prompts = [tok(t)["input_ids"] for t in TEXTS]
    original = {k: v.clone() for k, v in model.state_dict().items()}
    yield model, tok, hf, vllm, prompts
    del original


def _greedy(engine, prompts, max_new=24):
    batch = engine.generate(prompts, SamplingParams(n=1, do_sample=False, max_new_tokens=max_new, seed=0))
    return [row[mask.bool()].tolist() for row, mask in zip(batch.response_ids, batch.response_mask)]


def _max_log_prob_gap(model, batch, temperature):
    ids, mask = batch.input_ids()
    lp, _ = token_log_probs(model, ids, mask, batch.response_ids.shape[1], temperature=temperature)
    return ((lp - batch.rollout_log_probs) * batch.response_mask).abs().max().item()


def _perturb(model, scale=0.05, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * scale)


def test_greedy_continuations_equal_the_hf_engine(setup):
    _, _, hf, vllm, prompts = setup
    assert _greedy(vllm, prompts) == _greedy(hf, prompts)


def test_sampled_log_probs_match_the_trainer(setup):
    model, _, _, vllm, prompts = setup
    for temperature in (1.0, 0.7):
        sampling = SamplingParams(n=4, temperature=temperature, max_new_tokens=24, seed=1)
        batch = vllm.generate(prompts[:8], sampling)
        assert batch.response_ids.shape[0] == 32 and batch.prompt_index.tolist()[:4] == [0, 0, 0, 0]
        assert batch.response_mask.sum() > 32
        assert _max_log_prob_gap(model, batch, temperature) < LOG_PROB_TOLERANCE


def test_per_prompt_seeds_do_not_depend_on_the_batch(setup):
    _, _, _, vllm, prompts = setup
    sampling = SamplingParams(n=2, temperature=1.0, max_new_tokens=16)
    whole = vllm.generate(prompts[:4], sampling, seeds=[5, 6, 7, 8])
    part = vllm.generate(prompts[2:4], sampling, seeds=[7, 8])
    assert torch.equal(whole.response_ids[4:, : part.response_ids.shape[1]], part.response_ids)


def test_after_a_weight_update_outputs_equal_the_hf_engines(setup):
    model, _, hf, vllm, prompts = setup
    before = _greedy(vllm, prompts)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        _perturb(model)
        vllm.update_weights(weight_stream(model))
        after = _greedy(vllm, prompts)
        assert after != before
        assert after == _greedy(hf, prompts)
    finally:
        model.load_state_dict(saved)
        vllm.update_weights(weight_stream(model))
    assert _greedy(vllm, prompts) == before


def test_a_skipped_sync_is_caught_by_the_fingerprint(setup, monkeypatch):
    from sapo.rollout.vllm_engine import WeightSyncError

    model, _, _, vllm, _ = setup
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        with torch.no_grad():  # one small change, in one tensor of a fused (q/k/v) layer
            model.model.layers[1].self_attn.k_proj.weight[:, :].add_(1e-4)
        # a sync that reads the stream and loses it (as a renamed parameter or a repacked copy would)
        monkeypatch.setattr(vllm, "_reload", lambda stream: [None for _ in stream])
        with pytest.raises(WeightSyncError, match=r"model\.layers\.1\.self_attn\.k_proj\.weight") as error:
            vllm.update_weights(weight_stream(model))
        assert "in 1 of" in str(error.value)
        monkeypatch.undo()
        vllm.update_weights(weight_stream(model))  # a real sync passes the same check
        with pytest.raises(WeightSyncError, match="mlp.up_proj"):  # trainer moved on, engine not synced
            with torch.no_grad():
                model.model.layers[0].mlp.up_proj.weight.mul_(1.001)
            vllm.verify_weights(weight_stream(model))
    finally:
        model.load_state_dict(saved)
        vllm.update_weights(weight_stream(model))
    assert not vllm.unchecked


def test_missing_vllm_names_the_install_command(monkeypatch):
    import builtins

    from sapo.errors import UserError
    from sapo.rollout.vllm_engine import _import_vllm

    real_import = builtins.__import__

    def no_vllm(name, *args, **kwargs):
        if name == "vllm":
            raise ImportError("no vllm")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_vllm)
    with pytest.raises(UserError, match=r'pip install -e "\.\[vllm\]"'):
        _import_vllm()
