"""The byte-level tiny tokenizer: any text round-trips, ids are 4 + byte value, the model loads."""

import torch

from sapo.models.loading import load_model_and_tokenizer
from sapo.models.tiny import TinyModelSpec, build_byte_tokenizer, build_tiny_model


def test_byte_ids_are_four_plus_the_utf8_bytes_and_text_round_trips():
    tok = build_byte_tokenizer()
    text = "12+3=15\n\tHé ✓ {x}"
    ids = tok(text)["input_ids"]
    assert ids == [4 + b for b in text.encode("utf-8")]  # 'é' is 2 bytes, '✓' 3: 20 ids for 17 characters
    assert len(ids) == 20
    assert tok.decode(ids) == text
    assert len(tok) == 260 and tok.pad_token_id == 0 and tok.eos_token_id == 2


def test_chat_template_special_tokens_stay_single_tokens():
    tok = build_byte_tokenizer()
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    ids = tok(text, add_special_tokens=False)["input_ids"]
    # <|im_start|> u s e r \n h i <|im_end|> \n <|im_start|> a s s i s t a n t \n
    assert ids[0] == 1 and ids[8] == 2 and ids[10] == 1 and len(ids) == 21
    assert ids[1:5] == [4 + b for b in b"user"]


def test_tiny_model_with_byte_tokenizer_loads(tmp_path):
    spec = TinyModelSpec(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
    )
    model, tok = load_model_and_tokenizer(build_tiny_model(tmp_path / "b", spec, tokenizer="byte"))
    assert model.config.vocab_size == 260
    logits = model(torch.tensor([tok("héllo")["input_ids"]])).logits
    assert logits.shape == (1, 6, 260)
