"""A response depends on its prompt, the weights, the sampling numbers and its prompt's seed only: never on
the other prompts of the batch, their order or their number (what lets 1, 2 or 4 processes draw the same
responses). Also: the seeds themselves, their checks, and the inverse-CDF draw's distribution."""

import math
import types

import numpy as np
import pytest
import torch

from sapo.errors import UserError
from sapo.models.loading import load_model_and_tokenizer
from sapo.rollout.base import SamplingParams, prompt_seeds
from sapo.rollout.hf import HFRolloutEngine, row_uniforms
from sapo.rollout.sampling import sample_next_token
from sapo.rollout.seeds import TRAIN_STREAM, VALIDATION_STREAM, rollout_seeds, sample_seed


def test_seeds_are_deterministic_and_distinct():
    assert rollout_seeds(1, TRAIN_STREAM, 3, [0, 1]) == rollout_seeds(1, TRAIN_STREAM, 3, [0, 1])
    # a position's seed does not depend on which other positions are asked for
    assert rollout_seeds(1, TRAIN_STREAM, 3, range(4))[2:] == rollout_seeds(1, TRAIN_STREAM, 3, [2, 3])
    seeds = {
        *rollout_seeds(1, TRAIN_STREAM, 3, range(4)),
        *rollout_seeds(1, TRAIN_STREAM, 4, range(4)),
        *rollout_seeds(1, VALIDATION_STREAM, 3, range(4)),
        *rollout_seeds(2, TRAIN_STREAM, 3, range(4)),
    }
    assert len(seeds) == 16 and all(isinstance(s, int) and 0 <= s < 2**63 for s in seeds)
    assert TRAIN_STREAM != VALIDATION_STREAM
    assert sample_seed(5, 0) == sample_seed(5, 0) != sample_seed(5, 1) != sample_seed(6, 1)
    assert 0 <= sample_seed(2**63 - 1, 7) < 2**63


def test_row_uniforms_follow_their_own_seed():
    seeds = rollout_seeds(0, TRAIN_STREAM, 0, range(3))
    together = row_uniforms(seeds, 2, 5)  # [6, 5]
    assert together.shape == (6, 5) and ((together >= 0) & (together < 1)).all()
    torch.testing.assert_close(row_uniforms(seeds[1:2], 2, 5), together[2:4], atol=0, rtol=0)
    # a longer response budget extends a row's stream, it does not reshuffle it
    torch.testing.assert_close(row_uniforms(seeds, 2, 9)[:, :5], together, atol=0, rtol=0)


def _binomial_check(tokens, expected, draws, sigmas=5.0):
    freq = torch.bincount(tokens, minlength=len(expected)).double() / draws
    for v, p in enumerate(expected.tolist()):
        tolerance = sigmas * math.sqrt(p * (1 - p) / draws) + 1e-12
        assert abs(freq[v].item() - p) <= tolerance, (v, freq[v].item(), p, tolerance)


LOGITS = torch.tensor([1.5, 0.2, -0.4, 0.9, -2.0, 0.0, -1.0, 0.6])


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_inverse_cdf_frequencies_match_softmax_over_many_seeds(temperature):
    draws = 40000
    uniforms = row_uniforms(rollout_seeds(3, TRAIN_STREAM, 0, range(draws)), 1, 1)[:, 0]  # [draws]
    sampling = SamplingParams(temperature=temperature)
    tokens, log_probs = sample_next_token(LOGITS.expand(draws, -1), sampling, uniforms)
    expected = torch.softmax(LOGITS.double() / temperature, -1)
    _binomial_check(tokens, expected, draws)
    torch.testing.assert_close(log_probs, expected.log().float()[tokens])


def test_top_k_two_draws_only_the_two_most_likely_tokens():
    draws = 40000
    uniforms = row_uniforms(rollout_seeds(4, TRAIN_STREAM, 0, range(draws)), 1, 1)[:, 0]
    tokens, log_probs = sample_next_token(LOGITS.expand(draws, -1), SamplingParams(top_k=2), uniforms)
    assert set(tokens.tolist()) == {0, 3}  # logits 1.5 and 0.9
    probs = torch.softmax(LOGITS.double(), -1)
    kept = torch.zeros_like(probs)
    kept[[0, 3]] = probs[[0, 3]] / probs[[0, 3]].sum()
    _binomial_check(tokens, kept, draws)
    # the reported log-prob stays the full-vocabulary one
    torch.testing.assert_close(log_probs, probs.log().float()[tokens])


def test_sample_next_token_still_accepts_a_generator():
    logits = LOGITS.expand(5, -1)
    a, _ = sample_next_token(logits, SamplingParams(), torch.Generator().manual_seed(1))
    b, _ = sample_next_token(logits, SamplingParams(), torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    torch.manual_seed(0)
    c, _ = sample_next_token(logits, SamplingParams())  # torch's global generator
    assert c.shape == (5,)


@pytest.fixture(scope="module")
def model_and_tokenizer(tmp_path_factory):
    from sapo.models.tiny import TinyModelSpec, build_tiny_model

    spec = TinyModelSpec(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
    )
    path = build_tiny_model(tmp_path_factory.mktemp("seeds") / "m", spec, seed=0)
    return load_model_and_tokenizer(path, impl="hf")  # transformers' model: both paths apply


PROMPTS = [[1, 10, 11, 12], [1, 20], [1, 30, 31, 32, 33, 34, 35], [1, 40, 41]]
N = 3


def _rows(engine, prompts, seeds, sampling):
    out = engine.generate(prompts, sampling, seeds=seeds)
    lengths = out.response_lengths.tolist()
    ids, lps = out.response_ids.tolist(), out.rollout_log_probs.tolist()
    return [(i[:length], lp[:length]) for i, lp, length in zip(ids, lps, lengths)]


def _assert_same(rows, reference):
    assert [ids for ids, _ in rows] == [ids for ids, _ in reference]
    for (_, a), (_, b) in zip(rows, reference):
        torch.testing.assert_close(torch.tensor(a), torch.tensor(b), atol=1e-5, rtol=0)


@pytest.mark.parametrize("fast_path", ["auto", False])
def test_responses_do_not_depend_on_the_batch(model_and_tokenizer, fast_path):
    model, tokenizer = model_and_tokenizer
    engine = HFRolloutEngine(model, tokenizer, fast_path=fast_path)
    assert engine.uses_fast_path() == (fast_path == "auto")
    sampling = SamplingParams(n=N, top_k=60, top_p=0.95, max_new_tokens=120)
    seeds = rollout_seeds(7, TRAIN_STREAM, 0, range(len(PROMPTS)))

    together = _rows(engine, PROMPTS, seeds, sampling)
    lengths = [len(ids) for ids, _ in together]
    # a quarter of the rows (3 of 12) ended while others went on, so the batch was compacted mid-way
    assert sorted(lengths)[len(lengths) // 4 - 1] < max(lengths)
    alone = [row for i in range(len(PROMPTS)) for row in _rows(engine, [PROMPTS[i]], [seeds[i]], sampling)]
    halves = _rows(engine, PROMPTS[:2], seeds[:2], sampling) + _rows(engine, PROMPTS[2:], seeds[2:], sampling)
    backwards = _rows(engine, PROMPTS[::-1], seeds[::-1], sampling)
    backwards = [row for i in reversed(range(len(PROMPTS))) for row in backwards[i * N : i * N + N]]
    for other in (alone, halves, backwards):
        _assert_same(other, together)
    # a prompt's n samples differ from each other, and other seeds draw other samples
    assert len({tuple(ids) for ids, _ in together[:N]}) > 1
    different = _rows(engine, PROMPTS, rollout_seeds(8, TRAIN_STREAM, 0, range(len(PROMPTS))), sampling)
    assert all(a[0] != b[0] for a, b in zip(different, together))


def test_both_paths_and_the_default_seeds_agree(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    sampling = SamplingParams(n=2, temperature=0.9, top_k=50, max_new_tokens=40, seed=11)
    seeds = rollout_seeds(11, TRAIN_STREAM, 0, range(len(PROMPTS)))
    fast = HFRolloutEngine(model, tokenizer, fast_path="auto")
    generic = HFRolloutEngine(model, tokenizer, fast_path=False)
    reference = _rows(fast, PROMPTS, seeds, sampling)
    _assert_same(_rows(generic, PROMPTS, seeds, sampling), reference)
    # seeds=None derives the prompts' seeds from sampling.seed and their positions
    _assert_same(_rows(fast, PROMPTS, None, sampling), reference)
    assert prompt_seeds(len(PROMPTS), sampling) == seeds
    # without any seed, torch's global generator picks the base seed
    torch.manual_seed(3)
    a = prompt_seeds(2, SamplingParams())
    torch.manual_seed(3)
    assert prompt_seeds(2, SamplingParams()) == a


def test_seeds_are_checked(model_and_tokenizer):
    engine = HFRolloutEngine(*model_and_tokenizer)
    ok = SamplingParams(max_new_tokens=2)
    with pytest.raises(UserError, match="got 1 seeds for 2 prompts"):
        engine.generate(PROMPTS[:2], ok, seeds=[1])
    with pytest.raises(UserError, match="got 3 seeds for 2 prompts"):
        engine.generate(PROMPTS[:2], ok, seeds=[1, 2, 3])
    with pytest.raises(UserError, match="seed 1 of generate"):
        engine.generate(PROMPTS[:2], ok, seeds=[1, 2.5])
    with pytest.raises(UserError, match="seed 0 of generate"):
        engine.generate(PROMPTS[:2], ok, seeds=[True, 2])
    with pytest.raises(UserError, match="seed 1 of generate"):
        engine.generate(PROMPTS[:2], ok, seeds=[1, -2])
    with pytest.raises(UserError, match="seeds=7"):
        engine.generate(PROMPTS[:2], ok, seeds=7)
    # numpy integers (e.g. from an index array) are fine
    engine.generate(PROMPTS[:2], ok, seeds=list(np.array([1, 2])))


def test_vllm_engine_sends_one_seeded_request_per_prompt():
    """The vllm engine's generate, with a stand-in for vllm (not installed here)."""
    from sapo.rollout.vllm_engine import VLLMRolloutEngine

    class FakeLLM:
        def generate(self, requests, params, use_tqdm):
            self.requests, self.params = requests, params
            assert len(params) == len(requests)
            logprobs = [{5: types.SimpleNamespace(logprob=-1.0)}, {2: types.SimpleNamespace(logprob=-0.5)}]
            completion = types.SimpleNamespace(token_ids=[5, 2], logprobs=logprobs, finish_reason="stop")
            return [types.SimpleNamespace(outputs=[completion] * p["n"]) for p in params]

    engine = object.__new__(VLLMRolloutEngine)
    engine.llm, engine._vllm = FakeLLM(), types.SimpleNamespace(SamplingParams=lambda **kw: kw)
    engine.model = types.SimpleNamespace(config=types.SimpleNamespace(vocab_size=100))
    engine.pad_token_id, engine.context_length = 0, 64
    engine.asleep = engine.sleep_mode = False
    engine.tp_group = None  # one engine per process
    sampling = SamplingParams(n=2, max_new_tokens=4, top_k=5)
    batch = engine.generate(PROMPTS[:3], sampling, seeds=[11, 12, 13])
    assert [p["seed"] for p in engine.llm.params] == [11, 12, 13]
    assert all(p["n"] == 2 and p["top_k"] == 5 and p["max_tokens"] == 4 for p in engine.llm.params)
    assert [r["prompt_token_ids"] for r in engine.llm.requests] == PROMPTS[:3]
    assert batch.response_ids.shape == (6, 2) and batch.prompt_index.tolist() == [0, 0, 1, 1, 2, 2]
    engine.generate(PROMPTS[:2], SamplingParams(seed=4, max_new_tokens=4))
    assert [p["seed"] for p in engine.llm.params] == rollout_seeds(4, TRAIN_STREAM, 0, range(2))
    with pytest.raises(UserError, match="got 1 seeds for 2 prompts"):
        engine.generate(PROMPTS[:2], sampling, seeds=[1])
