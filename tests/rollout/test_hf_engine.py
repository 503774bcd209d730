"""The hf rollout engine on real tiny models: log-prob parity with the trainer, agreement with
transformers' generate, batch layout, seeding, compaction of finished rows, weight updates, bad input."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from sapo.errors import UserError
from sapo.models.loading import load_model_and_tokenizer
from sapo.models.logprobs import token_log_probs
from sapo.models.tiny import TinyModelSpec, build_char_tokenizer, build_tiny_model
from sapo.rollout import make_rollout_engine
from sapo.rollout.base import RolloutEngine, SamplingParams
from sapo.rollout.fast_decoder import FastDecoder
from sapo.rollout.hf import HFRolloutEngine

CHARS = "0123456789+=abcdefghijklmnop"  # 4 specials + 28 characters: EOS has ~1/32 chance per step
EOS = 2


def _spec(arch, tied=True):
    return TinyModelSpec(
        arch=arch,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        tie_word_embeddings=tied,
        moe_intermediate_size=32,
        max_position_embeddings=64,
    )


def _qwen2_with_bias():
    """Qwen2 (q/k/v biases, no q/k norm) built in memory: its saved form forces Qwen2's own tokenizer."""
    tok = build_char_tokenizer(CHARS)
    config = AutoConfig.for_model(
        "qwen2",
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        eos_token_id=EOS,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # HF initialises biases to 0; make them matter
        for layer in model.model.layers:
            layer.self_attn.q_proj.bias.normal_(0, 0.5)
            layer.self_attn.k_proj.bias.normal_(0, 0.5)
    return model, tok


MODELS = {}


def _model(tmp_path_factory, name):
    if name not in MODELS:
        if name == "qwen2":
            MODELS[name] = _qwen2_with_bias()
        else:
            arch, tied = name.split("-")
            path = build_tiny_model(
                tmp_path_factory.mktemp(name) / "m", _spec(arch, tied == "tied"), chars=CHARS, seed=2
            )
            # transformers' model: these tests compare the engine with its forward and generate
            MODELS[name] = load_model_and_tokenizer(path, impl="hf")
    return MODELS[name]


def _prompts(tok):
    return [tok(text)["input_ids"] for text in ("12+34=", "a", "bcd+e")]


@pytest.mark.parametrize(
    "name", ["qwen3-tied", "qwen3-untied", "llama-tied", "llama-untied", "qwen2", "qwen3_moe-untied"]
)
def test_rollout_log_probs_match_token_log_probs_on_both_paths(tmp_path_factory, name):
    model, tok = _model(tmp_path_factory, name)
    sampling = SamplingParams(n=3, temperature=0.8, top_p=0.95, max_new_tokens=24, seed=5)
    batches = {}
    for fast in (True, False):
        engine = HFRolloutEngine(model, tok, fast_path="auto" if fast else False)
        if fast and not engine.uses_fast_path():
            continue
        batch = engine.generate(_prompts(tok), sampling)
        ids, mask = batch.input_ids()
        trainer_lp, _ = token_log_probs(model, ids, mask, batch.response_ids.shape[1], temperature=0.8)
        diff = ((trainer_lp - batch.rollout_log_probs) * batch.response_mask).abs().max()
        assert diff < 1e-4, (name, fast, diff)
        batches[fast] = batch
    assert (True in batches) == (name != "qwen3_moe-untied")  # MoE takes the generic path
    if len(batches) == 2:  # the compact decoder samples exactly what the model's own forward samples
        assert torch.equal(batches[True].response_ids, batches[False].response_ids)
    # Some rows ended with EOS and some hit the limit, so compaction and truncation were exercised.
    batch = batches[False]
    assert batch.truncated.any() and not batch.truncated.all()


@pytest.mark.parametrize("name", ["qwen3-tied", "llama-untied", "qwen2", "qwen3_moe-untied"])
def test_greedy_decoding_equals_transformers_generate(tmp_path_factory, name):
    model, tok = _model(tmp_path_factory, name)
    prompts = _prompts(tok)
    batch = HFRolloutEngine(model, tok).generate(prompts, SamplingParams(temperature=0, max_new_tokens=20))
    enc = tok.pad({"input_ids": prompts}, return_tensors="pt", padding_side="left")
    with torch.no_grad():
        ref = model.generate(**enc, do_sample=False, max_new_tokens=20, eos_token_id=EOS, pad_token_id=0)
    ref = ref[:, enc["input_ids"].shape[1] :]
    for row in range(len(prompts)):
        ours = batch.response_ids[row][batch.response_mask[row].bool()].tolist()
        theirs = ref[row].tolist()
        theirs = theirs[: theirs.index(EOS) + 1] if EOS in theirs else theirs
        assert ours == theirs


def test_batch_layout(tmp_path_factory):
    model, tok = _model(tmp_path_factory, "qwen3-tied")
    prompts = _prompts(tok)
    batch = HFRolloutEngine(model, tok).generate(prompts, SamplingParams(n=4, max_new_tokens=24, seed=1))
    assert batch.prompt_ids.shape == (12, 6) and batch.prompt_index.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    for row in range(12):
        prompt = prompts[row // 4]
        assert batch.prompt_ids[row, -len(prompt) :].tolist() == prompt  # left padding
        assert batch.prompt_mask[row].tolist() == [0] * (6 - len(prompt)) + [1] * len(prompt)
        length, width = int(batch.response_lengths[row]), batch.response_ids.shape[1]
        assert batch.response_mask[row].tolist() == [1] * length + [0] * (width - length)
        assert (batch.response_ids[row, length:] == 0).all()
        assert (batch.rollout_log_probs[row, length:] == 0).all()
        tokens = batch.response_ids[row, :length].tolist()
        if batch.truncated[row]:
            assert length == 24 and EOS not in tokens
        else:
            assert tokens[-1] == EOS and EOS not in tokens[:-1]
    assert batch.response_ids.shape[1] == int(batch.response_lengths.max())


def test_same_seed_same_samples_and_global_seed_is_honoured(tmp_path_factory):
    model, tok = _model(tmp_path_factory, "llama-tied")
    engine, prompts = HFRolloutEngine(model, tok), _prompts(tok)
    a = engine.generate(prompts, SamplingParams(n=2, max_new_tokens=16, seed=7))
    b = engine.generate(prompts, SamplingParams(n=2, max_new_tokens=16, seed=7))
    c = engine.generate(prompts, SamplingParams(n=2, max_new_tokens=16, seed=8))
    assert torch.equal(a.response_ids, b.response_ids) and not torch.equal(a.response_ids, c.response_ids)
    torch.manual_seed(3)
    d = engine.generate(prompts, SamplingParams(n=2, max_new_tokens=16))
    torch.manual_seed(3)
    e = engine.generate(prompts, SamplingParams(n=2, max_new_tokens=16))
    assert torch.equal(d.response_ids, e.response_ids)


def test_finished_rows_leave_the_batch(tmp_path_factory, monkeypatch):
    model, tok = _model(tmp_path_factory, "qwen3-tied")
    sizes = []
    original = FastDecoder.decode

    def recording_decode(self, tokens):
        sizes.append(len(tokens))
        return original(self, tokens)

    monkeypatch.setattr(FastDecoder, "decode", recording_decode)
    sampling = SamplingParams(n=8, max_new_tokens=40, seed=0)
    batch = HFRolloutEngine(model, tok).generate(_prompts(tok), sampling)
    lengths = batch.response_lengths
    # Decode call s feeds token s + 1 (1-based); rows whose response ended earlier need not be there.
    for step, size in enumerate(sizes):
        still_running = int((lengths > step + 1).sum())
        assert still_running <= size <= 24
        # Compaction: once a quarter of the batch has finished, the batch shrinks to the live rows.
        if size > still_running:
            assert size - still_running < 0.25 * size + 1
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] < 24


def test_in_place_updates_and_update_weights_are_followed(tmp_path_factory):
    model, tok = _model(tmp_path_factory, "llama-untied")
    engine, prompts = make_rollout_engine("hf", model, tok), _prompts(tok)
    greedy = SamplingParams(temperature=0, max_new_tokens=12)
    before = engine.generate(prompts, greedy).rollout_log_probs
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():  # what an optimizer step does to the shared model
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    after = engine.generate(prompts, greedy)
    ids, mask = after.input_ids()
    lp, _ = token_log_probs(model, ids, mask, after.response_ids.shape[1])
    assert ((lp - after.rollout_log_probs) * after.response_mask).abs().max() < 1e-4
    engine.update_weights(saved.items())  # a stream of (name, tensor) pairs is copied into the engine's model
    restored = engine.generate(prompts, greedy).rollout_log_probs
    torch.testing.assert_close(restored, before, atol=1e-6, rtol=0)


def test_bad_input_is_rejected_before_compute(tmp_path_factory):
    model, tok = _model(tmp_path_factory, "qwen3-tied")
    engine = HFRolloutEngine(model, tok)
    ok = SamplingParams(max_new_tokens=8)
    with pytest.raises(UserError, match="no prompts"):
        engine.generate([], ok)
    with pytest.raises(UserError, match="prompt 1 is empty"):
        engine.generate([[5], []], ok)
    with pytest.raises(UserError, match="outside the vocabulary"):
        engine.generate([[5, 999]], ok)
    # context 64: a 60-token prompt leaves room for 4 new tokens, not 8
    engine.generate([[5] * 60], SamplingParams(max_new_tokens=4))
    with pytest.raises(UserError, match="exceeds the model's context of 64"):
        engine.generate([[5] * 60], ok)
    with pytest.raises(UserError, match="fast decoder"):
        HFRolloutEngine(*_model(tmp_path_factory, "qwen3_moe-untied"), fast_path=True)


def test_engine_factory(tmp_path_factory):
    model, tok = _model(tmp_path_factory, "qwen3-tied")
    engine = make_rollout_engine("hf", model, tok)
    assert isinstance(engine, HFRolloutEngine) and isinstance(engine, RolloutEngine)
    with pytest.raises(UserError, match="unknown rollout engine 'sglang'.*hf, vllm"):
        make_rollout_engine("sglang", model, tok)
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="vllm"):
            make_rollout_engine("vllm", model, tok)
