"""load_model_and_tokenizer: real tiny checkpoints written with save_pretrained."""

import json
import shutil

import pytest
import torch

from sapo.errors import UserError
from sapo.models.loading import load_model_and_tokenizer, resolve_dtype
from sapo.models.tiny import TinyModelSpec, build_char_tokenizer, build_tiny_model

SMALL = dict(
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=2,
    head_dim=16,
    moe_intermediate_size=16,
)


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("q") / "m", TinyModelSpec(**SMALL), chars="0123456789")


@pytest.mark.parametrize("arch", ["qwen3", "llama", "qwen3_moe"])
@pytest.mark.parametrize("dtype,expected", [("float32", torch.float32), ("bfloat16", torch.bfloat16)])
def test_loads_each_architecture_in_the_requested_dtype(tmp_path, arch, dtype, expected):
    path = build_tiny_model(tmp_path / arch, TinyModelSpec(arch=arch, **SMALL), chars="0123456789")
    model, tok = load_model_and_tokenizer(path, dtype=dtype, require_chat_template=True)
    assert model.config.model_type == arch
    assert all(p.dtype == expected for p in model.parameters())
    assert tok.padding_side == "left" and tok.pad_token_id == 0
    batch = tok(["12", "3"], padding=True, return_tensors="pt")
    assert batch["input_ids"].tolist() == [[5, 6], [0, 7]]  # '1' is id 4 + 1, pad 0 on the left


def test_torch_dtype_objects_and_short_names_are_accepted():
    assert resolve_dtype(torch.bfloat16) is torch.bfloat16
    assert resolve_dtype("bf16") is torch.bfloat16 and resolve_dtype("torch.float32") is torch.float32
    with pytest.raises(UserError, match="float64"):
        resolve_dtype("float64")


def test_missing_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist.*actor_rollout_ref.model.path"):
        load_model_and_tokenizer(tmp_path / "nope")


def test_directory_without_config_is_a_user_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        load_model_and_tokenizer(tmp_path / "empty")


def test_model_that_is_not_a_causal_lm_is_a_user_error(tmp_path):
    from transformers import BertConfig, BertModel

    path = tmp_path / "bert"
    BertModel(
        BertConfig(
            vocab_size=20, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
        )
    ).save_pretrained(path)
    with pytest.raises(UserError, match="not a causal language model"):
        load_model_and_tokenizer(path)


def test_missing_tokenizer_is_a_user_error(tmp_path, qwen3_dir):
    path = tmp_path / "no_tok"
    path.mkdir()
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        shutil.copy(qwen3_dir / name, path / name)
    with pytest.raises(UserError, match="tokenizer"):
        load_model_and_tokenizer(path)


def test_missing_chat_template_only_fails_when_required(tmp_path, qwen3_dir):
    path = tmp_path / "no_template"
    shutil.copytree(qwen3_dir, path)
    build_char_tokenizer("0123456789", chat_template=None).save_pretrained(path)
    for leftover in path.glob("chat_template*"):
        leftover.unlink()
    model, tok = load_model_and_tokenizer(path)
    assert not tok.chat_template
    with pytest.raises(UserError, match="no chat template"):
        load_model_and_tokenizer(path, require_chat_template=True)


def test_pad_token_falls_back_to_eos_with_a_warning(tmp_path, qwen3_dir):
    path = tmp_path / "no_pad"
    shutil.copytree(qwen3_dir, path)
    cfg = json.loads((path / "tokenizer_config.json").read_text())
    cfg.pop("pad_token", None)
    (path / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.warns(UserWarning, match="no pad token"):
        _, tok = load_model_and_tokenizer(path)
    assert tok.pad_token_id == tok.eos_token_id == 2


def test_a_directory_with_config_but_no_weights_is_a_user_error(tmp_path, qwen3_dir):
    path = tmp_path / "no_weights"
    shutil.copytree(qwen3_dir, path)
    (path / "model.safetensors").unlink()
    with pytest.raises(UserError, match="has a config.json but no weights") as err:
        load_model_and_tokenizer(path)
    found = str(err.value).split("; found ")[1]  # what is there instead, to compare with the source
    assert "config.json" in found and "model.safetensors" not in found


def test_a_truncated_safetensors_file_is_named(tmp_path, qwen3_dir):
    path = tmp_path / "truncated"
    shutil.copytree(qwen3_dir, path)
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # an interrupted copy
    with pytest.raises(UserError, match="model.safetensors cannot be read") as err:
        load_model_and_tokenizer(path)
    assert "truncated or corrupt" in str(err.value) and str(weights.stat().st_size) in str(err.value)
