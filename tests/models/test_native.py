"""The native Llama / Qwen2 / Qwen3 model against transformers' own model loaded from the same directory:
logits, hidden states and every parameter gradient (float32), left-padded batches, token log-probs, the
rollout engine, save/load round trips, sharded checkpoints, rejected checkpoints, bf16, checkpointing."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM

import sapo
from sapo.errors import UserError
from sapo.models.loading import load_model_and_tokenizer
from sapo.models.logprobs import token_log_probs
from sapo.models.native import NativeCausalLM, supports_native
from sapo.models.native_config import NativeConfig
from sapo.models.tiny import TinyModelSpec, build_tiny_model
from sapo.rollout.base import SamplingParams
from sapo.rollout.hf import HFRolloutEngine

SMALL = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, head_dim=16)
CHARS = "0123456789+=abcdefgh"  # 4 special tokens + 20 characters


def _tiny(tmp_path, arch, tied, kv_heads=2):
    spec = TinyModelSpec(arch=arch, num_key_value_heads=kv_heads, tie_word_embeddings=tied, **SMALL)
    return build_tiny_model(tmp_path / f"{arch}-{tied}", spec, chars=CHARS, seed=3)


def _qwen2(tmp_path, tied):
    """Qwen2 with non-zero q/k/v biases, saved without a tokenizer (transformers 5 forces Qwen2's own
    tokenizer class on a saved qwen2 directory, see sapo.models.tiny)."""
    config = AutoConfig.for_model(
        "qwen2",
        vocab_size=24,
        num_key_value_heads=2,
        pad_token_id=0,
        eos_token_id=2,
        tie_word_embeddings=tied,
        max_position_embeddings=64,
        rope_theta=1e6,
        **SMALL,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # transformers initialises biases to 0; make them matter
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.2)
    model.save_pretrained(tmp_path / f"qwen2-{tied}")
    return tmp_path / f"qwen2-{tied}"


CASES = [
    ("qwen3", True),
    ("qwen3", False),
    ("llama", True),
    ("llama", False),
    ("qwen2", True),
    ("qwen2", False),
]


def _build(tmp_path, arch, tied):
    return _qwen2(tmp_path, tied) if arch == "qwen2" else _tiny(tmp_path, arch, tied)


def _padded_batch(vocab=24, seed=0):
    """Three rows of length 9, the last two left-padded by 3 and 6 tokens."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (3, 9), generator=gen)  # [B, L]
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    mask[2, :6] = 0
    return ids.masked_fill(mask == 0, 0), mask


def _hf_forward(model, ids, mask):
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # [B, L]: position 0 at the first real token
    return model(input_ids=ids, attention_mask=mask, position_ids=positions, output_hidden_states=True)


@pytest.mark.parametrize("arch,tied", CASES)
def test_logits_hidden_and_every_gradient_match_transformers(tmp_path, arch, tied):
    path = _build(tmp_path, arch, tied)
    ours, theirs = NativeCausalLM.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert ours.config._name_or_path == str(path) and "_name_or_path" not in ours.config.to_dict()
    ours.train(), theirs.train()
    ids, mask = _padded_batch()
    out, ref = ours(ids, mask), _hf_forward(theirs, ids, mask)
    valid = mask.bool()  # padded positions are masked everywhere downstream
    assert (out.logits - ref.logits)[valid].abs().max() < 1e-5
    assert (out.last_hidden_state - ref.hidden_states[-1])[valid].abs().max() < 1e-5
    weights = torch.randn(out.logits.shape, generator=torch.Generator().manual_seed(1))  # [B, L, V]
    (out.logits * weights)[valid].sum().backward()
    (ref.logits * weights)[valid].sum().backward()
    reference = dict(theirs.named_parameters())
    for name, param in ours.named_parameters():
        expected = reference[name].grad
        scale = expected.abs().max()
        assert scale > 0, name
        assert (param.grad - expected).abs().max() / scale < 1e-5, name


@pytest.mark.parametrize("arch,tied", [("qwen3", True), ("llama", False), ("qwen2", True)])
def test_token_log_probs_and_rollout_log_probs_on_the_native_model(tmp_path, arch, tied):
    path = _build(tmp_path, arch, tied)
    ours, theirs = NativeCausalLM.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)
    ids, mask = _padded_batch()
    lp_ours, ent_ours = token_log_probs(ours, ids, mask, 4, temperature=0.7, compute_entropy=True)
    lp_ref, ent_ref = token_log_probs(theirs, ids, mask, 4, temperature=0.7, compute_entropy=True)
    real = mask[:, -5:-1].bool()  # the predicting position is a real token (a pad's output is meaningless)
    assert (lp_ours - lp_ref)[real].abs().max() < 1e-5 and (ent_ours - ent_ref)[real].abs().max() < 1e-5

    class _Tok:  # the engine reads only the pad and EOS ids of the tokenizer
        pad_token_id, eos_token_id = 0, 2

    engine = HFRolloutEngine(ours, _Tok())
    assert engine.uses_fast_path()
    sampling = SamplingParams(n=3, temperature=0.8, max_new_tokens=12, seed=5)
    batch = engine.generate([[5, 6, 7], [8], [9, 10]], sampling)
    ids, mask = batch.input_ids()
    trainer_lp, _ = token_log_probs(ours, ids, mask, batch.response_ids.shape[1], temperature=0.8)
    assert ((trainer_lp - batch.rollout_log_probs) * batch.response_mask).abs().max() < 1e-4


@pytest.mark.parametrize("arch,tied", [("qwen3", True), ("llama", False), ("qwen2", False)])
def test_save_pretrained_round_trips_through_transformers(tmp_path, arch, tied):
    path = _build(tmp_path, arch, tied)
    ours = NativeCausalLM.from_pretrained(path)
    with torch.no_grad():  # a trained model: the saved weights must be the current ones
        ours.model.layers[0].mlp.up_proj.weight.add_(0.1)
    ours.save_pretrained(tmp_path / "out")
    saved = load_file(tmp_path / "out" / "model.safetensors")
    assert ("lm_head.weight" in saved) == (not tied)  # a tied head is left out, as transformers does
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["dtype"] == "float32" and config["model_type"] == arch
    assert (tmp_path / "out" / "generation_config.json").is_file() == (
        path / "generation_config.json"
    ).is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    ids, mask = _padded_batch()
    with torch.no_grad():
        assert (ours(ids, mask).logits - _hf_forward(reloaded, ids, mask).logits)[
            mask.bool()
        ].abs().max() < 1e-5


def test_sharded_checkpoint_loads_like_the_single_file(tmp_path):
    path = _tiny(tmp_path, "llama", tied=False)
    tensors = load_file(path / "model.safetensors")
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "config.json").write_text((path / "config.json").read_text())
    for file, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, sharded / file, metadata={"format": "pt"})
    weight_map = {k: file for file, keys in shards.items() for k in keys}
    (sharded / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    model = NativeCausalLM.from_pretrained(sharded)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, tensors[name]), name


def test_missing_and_unexpected_weights_are_user_errors(tmp_path):
    path = _tiny(tmp_path, "qwen3", tied=True)
    tensors = load_file(path / "model.safetensors")
    tensors["model.layers.0.mlp.extra.weight"] = torch.zeros(2)
    del tensors["model.layers.1.self_attn.k_norm.weight"]
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(
        UserError,
        match=r"missing weights \['model.layers.1.self_attn.k_norm.weight'\].*"
        r"unexpected weights \['model.layers.0.mlp.extra.weight",
    ):
        NativeCausalLM.from_pretrained(path)


def test_unsupported_checkpoints_fall_back_to_transformers_or_fail_clearly(tmp_path):
    path = _tiny(tmp_path, "llama", tied=True)
    config = json.loads((path / "config.json").read_text())
    assert supports_native(config)
    config["rope_parameters"] = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    (path / "config.json").write_text(json.dumps(config))
    assert not supports_native(config)
    model, _ = load_model_and_tokenizer(path)  # auto: transformers
    assert not isinstance(model, NativeCausalLM)
    with pytest.raises(UserError, match="RoPE type 'linear'.*impl=auto"):
        load_model_and_tokenizer(path, impl="native")
    with pytest.raises(UserError, match="unknown model impl 'jax'"):
        load_model_and_tokenizer(path, impl="jax")
    moe = build_tiny_model(
        tmp_path / "moe", TinyModelSpec(arch="qwen3_moe", moe_intermediate_size=16, **SMALL)
    )
    assert not isinstance(load_model_and_tokenizer(moe)[0], NativeCausalLM)


def test_config_resolves_transformers_defaults_and_old_style_rope_keys():
    config = NativeConfig(
        {
            "model_type": "qwen2",
            "vocab_size": 10,
            "hidden_size": 64,
            "intermediate_size": 8,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "rope_theta": 1e6,
            "rope_scaling": None,
        }
    )
    assert config.head_dim == 64 // 4 and config.num_key_value_heads == 4 and config.rope_theta == 1e6
    assert config.tie_word_embeddings is False and config.rms_norm_eps == 1e-6
    config.pad_token_id = 7  # set by the loader: written back like transformers' save_pretrained does
    assert config.to_dict()["pad_token_id"] == 7 and "head_dim" not in config.to_dict()


def test_auto_loads_the_native_model_without_transformers_modeling_code(tmp_path):
    path = _tiny(tmp_path, "qwen3", tied=True)
    code = (
        "import sys; from sapo.models.loading import load_model_and_tokenizer as load; "
        f"m, t = load({str(path)!r}); print(type(m).__name__, m.training, "
        "sorted(k for k in sys.modules if 'modeling_utils' in k or k.endswith('modeling_qwen3')))"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(sapo.__file__).parents[1])}  # this checkout's sapo
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    ).stdout
    assert out.split() == ["NativeCausalLM", "False", "[]"]  # eval mode, as from_pretrained leaves it


def test_gradient_checkpointing_gives_the_same_gradients(tmp_path):
    path = _tiny(tmp_path, "qwen3", tied=False)
    ids, mask = _padded_batch()
    grads = []
    for checkpointing in (False, True):
        model = NativeCausalLM.from_pretrained(path).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        token_log_probs(model, ids, mask, 4)[0].sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert all(torch.allclose(grads[0][n], grads[1][n], rtol=1e-5, atol=1e-7) for n in grads[0])


def test_bfloat16_model_trains_and_stays_close_to_float32(tmp_path):
    path = _tiny(tmp_path, "qwen3", tied=True)
    model16, model32 = (
        NativeCausalLM.from_pretrained(path, dtype=torch.bfloat16),
        NativeCausalLM.from_pretrained(path),
    )
    assert all(p.dtype == torch.bfloat16 for p in model16.parameters())
    ids, mask = _padded_batch()
    lp16, _ = token_log_probs(model16.train(), ids, mask, 4)
    lp16.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model16.parameters())
    lp32, _ = token_log_probs(model32, ids, mask, 4)
    assert (lp16 - lp32).abs().max() < 0.1  # bf16 has ~3 significant digits


def test_lean_autograd_functions_match_numerical_gradients():
    """The hand-derived backwards of sapo.models.native_ops against finite differences (float64)."""
    from sapo.models.native_ops import apply_rope, rms_norm, swiglu

    gen = torch.Generator().manual_seed(0)

    def rand(*shape, grad=True):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_(grad)

    assert torch.autograd.gradcheck(lambda x, w: rms_norm(x, w, 1e-6), (rand(2, 3, 8), rand(8)))
    angles = rand(2, 1, 3, 4, grad=False).repeat(1, 1, 1, 2)  # [B, 1, L, d]: RoPE's [f, f] layout
    assert torch.autograd.gradcheck(lambda x: apply_rope(x, angles.cos(), angles.sin()), (rand(2, 2, 3, 8),))
    assert torch.autograd.gradcheck(swiglu, (rand(4, 6), rand(4, 6)))
