import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from sapo.models.tiny import EOS, PAD, TinyModelSpec, build_char_tokenizer, build_tiny_model


def test_char_tokenizer_round_trips_every_character_including_whitespace():
    tok = build_char_tokenizer()
    text = "12+34=46\n\n\tab  Z}"
    ids = tok(text)["input_ids"]
    assert len(ids) == len(text)
    assert tok.decode(ids) == text
    assert tok.convert_ids_to_tokens(0) == PAD and tok.eos_token == EOS


def test_chat_template_is_chatml():
    tok = build_char_tokenizer("0123456789+=")
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": "1+2="}], tokenize=False, add_generation_prompt=True
    )
    assert rendered == "<|im_start|>user\n1+2=<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("arch", ["qwen3", "llama", "qwen3_moe"])
def test_tiny_model_loads_through_from_pretrained(tmp_path, arch):
    spec = TinyModelSpec(
        arch=arch,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        moe_intermediate_size=16,
    )
    path = build_tiny_model(tmp_path / arch, spec, chars="0123456789+=")
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert model.config.model_type == arch
    assert model.config.vocab_size == len(tok) == 16
    assert tok.decode(tok("12+3=")["input_ids"]) == "12+3="
    logits = model(torch.tensor([tok("1+2=")["input_ids"]])).logits
    assert logits.shape == (1, 4, 16)
    # Same seed, same weights.
    again_path = build_tiny_model(tmp_path / "again", spec, chars="0123456789+=")
    again = AutoModelForCausalLM.from_pretrained(again_path)
    for a, b in zip(model.parameters(), again.parameters()):
        assert torch.equal(a, b)
