"""A pure-torch Llama-family decoder (Llama, Qwen2, Qwen3) that loads and saves Hugging Face checkpoints.

Why: importing transformers' modeling code and building a model through ``from_pretrained`` costs
~250 MiB of resident memory before the first token, more than the whole training state of a small model,
and its eager forward keeps more activations than needed. This module computes the same function with the
same parameter names, so ``state_dict()`` keys, checkpoints, `sapo.rollout.fast_decoder` and
`sapo.models.logprobs.token_log_probs` work on it unchanged:

    x = embed_tokens[ids]                                                   # [B, L, H]
    per layer:  h = rms(x) * w_in
                q, k, v = h W_q^T (+ b_q), h W_k^T (+ b_k), h W_v^T (+ b_v)   # Qwen2: biases
                q, k = rms(q) * w_qn, rms(k) * w_kn                         # Qwen3 only, per head
                q, k = rope(q, pos), rope(k, pos)                           # pos counts real tokens only
                x = x + sdpa(q, k, v, causal & key_mask) W_o^T
                x = x + (silu(rms(x) * w_post W_gate^T) * (rms(x) * w_post W_up^T)) W_down^T
    hidden = rms(x) * w_norm;  logits = hidden W_lm^T   (W_lm = embed_tokens when tied)

RMSNorm is computed in float32 and cast back before the weight, and RoPE's cos/sin in float32 and cast
to the activation dtype, as transformers does, so float32 results agree to rounding. RMSNorm, RoPE and
the SwiGLU product are autograd functions that keep less for the backward (`sapo.models.native_ops`).

Entry points: `NativeCausalLM.from_pretrained(dir, dtype=..., device=...)`, `save_pretrained(dir)`,
`load_native_model` (the loader's hook), and `supports_native(config_dict)`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from sapo.errors import UserError
from sapo.models.dtypes import resolve_dtype
from sapo.models.logprobs import position_ids_from_mask
from sapo.models.native_config import (
    WEIGHTS_FILE,
    NativeConfig,
    UnsupportedArchitecture,
    read_config,
    read_generation_config,
    read_weights,
)
from sapo.models.native_ops import apply_rope, rms_norm, swiglu

# scaled_dot_product_attention handles grouped-query attention itself from torch 2.5 (enable_gqa).
_SDPA_GQA = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)


@dataclass
class NativeOutput:
    """What the backbone (``last_hidden_state``) and the LM (``logits``) return; transformers' field names."""

    last_hidden_state: torch.Tensor | None = None  # [B, L, H]
    logits: torch.Tensor | None = None  # [B, L, V]


class Linear(nn.Linear):
    """``nn.Linear`` whose parameters are allocated but not initialised: every value comes from a
    checkpoint, and skipping the random init saves its time (minutes at 7B on a CPU). (Building on the
    meta device instead would import torch's symbolic-shape machinery, ~75 MiB of resident memory.)"""

    def reset_parameters(self) -> None:
        pass


class Embedding(nn.Embedding):
    """``nn.Embedding`` allocated but not initialised (see `Linear`)."""

    def reset_parameters(self) -> None:
        pass


class RMSNorm(nn.Module):
    """``weight * (x / sqrt(mean(x^2) + eps))``, normalised in float32 and cast back before the weight."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.variance_epsilon)


class RotaryEmbedding(nn.Module):
    """Default RoPE: ``inv_freq_i = theta^(-2i / d)``; ``forward(x, position_ids)`` gives ``(cos, sin)``
    ``[B, L, d]`` in ``x``'s dtype (the call transformers' rotary modules take, used by the fast decoder)."""

    def __init__(self, head_dim: int, theta: float, device=None):
        super().__init__()
        exponents = torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim
        self.register_buffer("inv_freq", 1.0 / theta**exponents, persistent=False)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor):
        freqs = position_ids[..., None].float() * self.inv_freq.to(x.device)  # [B, L, d/2]
        angles = torch.cat((freqs, freqs), dim=-1)  # [B, L, d]
        return angles.cos().to(x.dtype), angles.sin().to(x.dtype)


class Attention(nn.Module):
    def __init__(self, config: NativeConfig):
        super().__init__()
        hidden, heads, kv_heads = config.hidden_size, config.num_attention_heads, config.num_key_value_heads
        self.head_dim, self.dropout = config.head_dim, float(config.attention_dropout)
        qkv_bias = config.model_type == "qwen2" or config.attention_bias
        o_bias = config.model_type != "qwen2" and config.attention_bias
        self.q_proj = Linear(hidden, heads * self.head_dim, bias=qkv_bias)
        self.k_proj = Linear(hidden, kv_heads * self.head_dim, bias=qkv_bias)
        self.v_proj = Linear(hidden, kv_heads * self.head_dim, bias=qkv_bias)
        self.o_proj = Linear(heads * self.head_dim, hidden, bias=o_bias)
        if config.model_type == "qwen3":
            self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.groups = heads // kv_heads

    def forward(self, x, cos, sin, mask):  # x [B, L, H]; cos, sin [B, 1, L, d]; mask [B, 1, L, L] | None
        batch, length, _ = x.shape
        shape = (batch, length, -1, self.head_dim)
        q, k = self.q_proj(x).view(shape), self.k_proj(x).view(shape)  # [B, L, n, d]
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        q = apply_rope(q.transpose(1, 2), cos, sin)  # [B, nh, L, d]
        k = apply_rope(k.transpose(1, 2), cos, sin)  # [B, nkv, L, d]
        v = self.v_proj(x).view(shape).transpose(1, 2)  # [B, nkv, L, d]
        gqa = {}
        if self.groups > 1 and _SDPA_GQA:
            gqa = {"enable_gqa": True}
        elif self.groups > 1:
            k, v = k.repeat_interleave(self.groups, dim=1), v.repeat_interleave(self.groups, dim=1)
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=mask is None,
            dropout_p=self.dropout if self.training else 0.0,
            scale=self.head_dim**-0.5,
            **gqa,
        )  # [B, nh, L, d]
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, -1))


class MLP(nn.Module):
    def __init__(self, config: NativeConfig):
        super().__init__()
        hidden, inner, bias = config.hidden_size, config.intermediate_size, bool(config.mlp_bias)
        self.gate_proj = Linear(hidden, inner, bias=bias)
        self.up_proj = Linear(hidden, inner, bias=bias)
        self.down_proj = Linear(inner, hidden, bias=bias)

    def forward(self, x):  # [B, L, H]
        return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x)))


class DecoderLayer(nn.Module):
    def __init__(self, config: NativeConfig):
        super().__init__()
        self.self_attn = Attention(config)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, cos, sin, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        return x + self.mlp(self.post_attention_layernorm(x))  # [B, L, H]


def attention_mask_4d(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """``[B, L]`` 0/1 key mask -> boolean ``[B, 1, L, L]`` (causal and key mask), or None when nothing is
    padded (then attention runs with ``is_causal``). A padded query attends to itself only, so no softmax
    row is empty (its output is never read)."""
    if attention_mask is None or bool(attention_mask.all()):
        return None
    length = attention_mask.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=attention_mask.device).tril()  # [L, L]
    eye = torch.eye(length, dtype=torch.bool, device=attention_mask.device)
    return ((causal & attention_mask.bool()[:, None, :]) | eye)[:, None]  # [B, 1, L, L]


class DecoderModel(nn.Module):
    """The backbone (transformers' ``*Model``): embeddings, decoder layers, final norm, RoPE tables."""

    def __init__(self, config: NativeConfig):
        super().__init__()
        self.config = config
        self.padding_idx = config.pad_token_id
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config.head_dim, config.rope_theta)
        self.gradient_checkpointing = False

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.gradient_checkpointing

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False) -> NativeOutput:
        """Final hidden states ``[B, L, H]`` of ``input_ids [B, L]`` (left padding marked by the mask)."""
        if use_cache:
            raise UserError("the native model has no KV cache: generate with sapo.rollout's hf engine")
        if position_ids is None:
            position_ids = (
                position_ids_from_mask(attention_mask)
                if attention_mask is not None
                else torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
            )  # [B, L]
        x = self.embed_tokens(input_ids)  # [B, L, H]
        cos, sin = self.rotary_emb(x, position_ids)  # [B, L, d]
        cos, sin = cos[:, None], sin[:, None]  # [B, 1, L, d]
        mask = attention_mask_4d(attention_mask)
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for layer in self.layers:
            if recompute:
                x = checkpoint(layer, x, cos, sin, mask, use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask)
        return NativeOutput(last_hidden_state=self.norm(x))


class NativeCausalLM(nn.Module):
    """A Llama / Qwen2 / Qwen3 causal LM with transformers' module names (``model.*``, ``lm_head``).

    Built from a config its parameters are allocated but not initialised: `from_pretrained` fills them.
    """

    is_native = True  # no KV-cache forward / generate: the rollout engine's fast decoder samples from it

    def __init__(self, config: NativeConfig, generation_config: _AttributeDict | None = None):
        super().__init__()
        self.config = config
        self.generation_config = generation_config
        self.model = DecoderModel(config)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    # transformers' accessors, used by the log-prob, rollout and critic code
    def get_decoder(self) -> DecoderModel:
        return self.model

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.model.is_gradient_checkpointing

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Recompute each decoder layer's activations in the backward pass (torch.utils.checkpoint)."""
        self.model.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        self.model.gradient_checkpointing = False

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False) -> NativeOutput:
        """Full logits ``[B, L, V]`` (for evaluation and tests; training reads the hidden states through
        `token_log_probs`, which never materialises all of them)."""
        hidden = self.model(input_ids, attention_mask, position_ids, use_cache).last_hidden_state
        return NativeOutput(last_hidden_state=hidden, logits=self.lm_head(hidden))

    @classmethod
    def from_pretrained(cls, path, *, dtype: str | torch.dtype = "float32", device=None) -> NativeCausalLM:
        """Load a Hugging Face directory (config.json + safetensors weights) without transformers."""
        return load_native_model(path, dtype=dtype, device=device)

    def save_pretrained(self, out_dir, safe_serialization: bool = True) -> None:
        """Write ``config.json`` (dtype updated), ``model.safetensors`` with transformers' names (a tied
        ``lm_head.weight`` left out, as transformers does) and ``generation_config.json`` if there was one."""
        from safetensors.torch import save_file

        if not safe_serialization:
            raise UserError("the native model saves safetensors only: call save_pretrained(dir)")
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.config.dtype = str(self.dtype).removeprefix("torch.")
        config = self.config.to_dict()
        if "torch_dtype" in config:
            config["torch_dtype"] = config["dtype"]
        (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        if self.generation_config is not None:
            text = json.dumps(self.generation_config.to_dict(), indent=2, sort_keys=True) + "\n"
            (out_dir / "generation_config.json").write_text(text)
        state = {name: t.detach().contiguous() for name, t in self.state_dict().items()}
        if self.config.tie_word_embeddings:
            del state["lm_head.weight"]
        save_file(state, out_dir / WEIGHTS_FILE, metadata={"format": "pt"})


class _AttributeDict:
    """``generation_config``: the keys of generation_config.json as attributes (``eos_token_id``, ...)."""

    def __init__(self, raw: dict):
        self.__dict__.update(raw)

    def to_dict(self) -> dict:
        return dict(vars(self))


def supports_native(config_json: dict) -> bool:
    """Whether the native model reproduces the architecture described by a parsed ``config.json``."""
    try:
        NativeConfig(config_json)
    except UnsupportedArchitecture:
        return False
    return True


def load_native_model(path, *, dtype: str | torch.dtype = torch.float32, device=None) -> NativeCausalLM:
    """Build the model with uninitialised parameters, then assign the checkpoint's tensors (converted to
    ``dtype``, on ``device``) shard by shard in their place. Missing or unexpected weights are a UserError."""
    path, dtype = Path(path), resolve_dtype(dtype)  # "bfloat16" and torch.bfloat16 alike
    config = NativeConfig(read_config(path))
    config._name_or_path = str(path)  # as transformers records it (the vllm engine reads it)
    generation = read_generation_config(path)
    model = NativeCausalLM(config, _AttributeDict(generation) if generation is not None else None)
    expected = set(model.state_dict())
    if config.tie_word_embeddings:
        expected.discard("lm_head.weight")  # tied: the embedding matrix is the head
    device = torch.device(device) if device is not None else torch.device("cpu")
    seen, unexpected = set(), []
    for file, tensors in read_weights(path, device=str(device)):
        state = {}
        for name, tensor in tensors.items():
            if name in expected:
                state[name] = tensor.to(dtype)
            elif not (name.endswith("rotary_emb.inv_freq") or name == "lm_head.weight"):
                unexpected.append(f"{name} ({file.name})")
        model.load_state_dict(state, strict=False, assign=True)
        seen.update(state)
        del tensors, state
    _check_keys(path, expected - seen, unexpected)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.model.rotary_emb.to(device)
    return model.eval()  # as transformers' from_pretrained leaves a model


def _check_keys(path: Path, missing: set, unexpected: list) -> None:
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing weights {sorted(missing)[:8]}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected weights {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
        raise UserError(
            f"the checkpoint in {str(path)!r} does not match its config.json ({'; '.join(parts)}): re-save "
            "it with save_pretrained, or load it with transformers (actor_rollout_ref.model.impl=hf)"
        )
