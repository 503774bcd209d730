"""Engines take weights as a stream of (name, tensor) pairs (sapo.rollout.weights)."""

import copy

import pytest
import torch

from sapo.errors import UserError
from sapo.models.loading import load_model_and_tokenizer
from sapo.models.tiny import TinyModelSpec, build_tiny_model
from sapo.rollout import make_rollout_engine
from sapo.rollout.base import SamplingParams
from sapo.rollout.weights import copy_weights_into, weight_stream

SPEC = TinyModelSpec(
    arch="qwen3", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
    num_key_value_heads=2, head_dim=16,
)  # fmt: skip


def test_a_stream_of_the_models_own_tensors_copies_nothing():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
    assert copy_weights_into(model, weight_stream(model)) == 0


def test_a_stream_from_another_model_is_copied_by_name_and_partial_streams_keep_the_rest():
    target, source = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    bias_before = target.bias.detach().clone()
    assert copy_weights_into(target, [("weight", source.weight.detach())]) == 1
    torch.testing.assert_close(target.weight, source.weight, rtol=0, atol=0)
    torch.testing.assert_close(target.bias, bias_before, rtol=0, atol=0)  # not streamed: unchanged


def test_bad_streams_are_errors_that_name_the_tensor():
    model = torch.nn.Linear(3, 2)
    with pytest.raises(UserError, match="'decoder.weight' is not a weight of the engine's model"):
        copy_weights_into(model, [("decoder.weight", torch.zeros(2, 3))])
    with pytest.raises(UserError, match=r"'weight' has shape \(3, 3\), the engine's model \(2, 3\)"):
        copy_weights_into(model, [("weight", torch.zeros(3, 3))])
    for old_form in (model, model.state_dict()):  # the pre-stream call forms
        with pytest.raises(UserError, match="takes \\(name, tensor\\) pairs"):
            copy_weights_into(model, old_form)


def test_the_hf_engine_samples_from_the_streamed_weights(tmp_path):
    path = build_tiny_model(tmp_path / "m", SPEC, chars="0123456789+=abcde", seed=3)
    model, tok = load_model_and_tokenizer(path)
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    prompts = [tok(text)["input_ids"] for text in ("12+34=", "abc")]
    greedy = SamplingParams(temperature=0, max_new_tokens=8)
    expected = make_rollout_engine("hf", other, tok).generate(prompts, greedy)
    engine = make_rollout_engine("hf", model, tok)
    before = engine.generate(prompts, greedy)
    engine.update_weights(weight_stream(other))
    after = engine.generate(prompts, greedy)
    assert not torch.equal(before.rollout_log_probs, expected.rollout_log_probs)  # the update matters
    assert torch.equal(after.response_ids, expected.response_ids)
    torch.testing.assert_close(after.rollout_log_probs, expected.rollout_log_probs, atol=1e-5, rtol=0)
