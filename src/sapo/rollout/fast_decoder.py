"""A compact decoder forward for Llama-style models (Qwen3, Qwen2, Llama) with a static KV cache.

Why: at small and medium sizes, transformers' per-token forward spends more time in Python (mask building,
cache objects, module calls, hooks) than in matrix multiplies. This forward reads the same weights and does
the same arithmetic with a handful of tensor ops per layer:

    x = embed[ids]
    per layer:  h = rms(x) * w_in;  q, k, v = split(h @ W_qkv^T (+ b_qkv))        # one fused matmul
                q, k = rms(q) * w_qn, rms(k) * w_kn  (Qwen3 only);  q, k = rope(q), rope(k)
                cache[:, :, t0 : t0 + T] = k, v;  x += sdpa(q, cache, key_mask) @ W_o^T
                h = rms(x) * w_post;  g, u = split(h @ W_gate_up^T);  x += (silu(g) * u) @ W_down^T
    logits = (rms(x) * w_norm)[:, -1] @ W_lm^T

The cache is allocated once per `generate` call for ``prompt + max_new_tokens`` positions. `select` drops
finished rows from the batch (compaction) so they stop costing compute.

Weights are read from the live HF modules; the fused ``W_qkv`` / ``W_gate_up`` copies (`fused_layers`,
held by the engine between calls) are rebuilt whenever any parameter changed in place (tracked through
tensor version counters), so an optimizer step on the shared model is picked up by the next `generate`
without an explicit weight update.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SUPPORTED_MODEL_TYPES = ("qwen3", "qwen2", "llama")


def supports_fast_path(model) -> bool:
    """True for the dense Llama-style architectures this forward reproduces exactly."""
    config = model.config
    if config.model_type not in SUPPORTED_MODEL_TYPES or getattr(config, "hidden_act", "silu") != "silu":
        return False
    layer_types = getattr(config, "layer_types", None) or []
    if getattr(config, "use_sliding_window", False) or "sliding_attention" in layer_types:
        return False
    if any(getattr(config, name, None) for name in ("final_logit_softcapping", "logits_scaling")):
        return False
    return hasattr(model.get_decoder(), "rotary_emb")


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm as transformers computes it: in float32, cast back, then scale."""
    x32 = x.float()
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def _cat_bias(*linears):
    if all(lin.bias is None for lin in linears):
        return None
    return torch.cat(
        [lin.bias if lin.bias is not None else lin.weight.new_zeros(lin.out_features) for lin in linears]
    )


class _LayerWeights:
    def __init__(self, layer):
        attn, mlp = layer.self_attn, layer.mlp
        self.w_in, self.w_post = layer.input_layernorm.weight, layer.post_attention_layernorm.weight
        self.qkv = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
        self.qkv_bias = _cat_bias(attn.q_proj, attn.k_proj, attn.v_proj)
        self.o, self.o_bias = attn.o_proj.weight, attn.o_proj.bias
        self.q_norm = getattr(attn, "q_norm", None)
        self.k_norm = getattr(attn, "k_norm", None)
        self.gate_up = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])
        self.gate_up_bias = _cat_bias(mlp.gate_proj, mlp.up_proj)
        self.down, self.down_bias = mlp.down_proj.weight, mlp.down_proj.bias


def fused_layers(model, cached: tuple | None = None) -> tuple:
    """``(key, per-layer fused weights)``; ``cached`` (an earlier return value) is reused unless a parameter
    was modified in place (its version counter moved) or replaced (its storage moved)."""
    key = tuple((p.data_ptr(), p._version) for p in model.parameters())
    if cached is not None and cached[0] == key:
        return cached
    with torch.no_grad():
        return key, [_LayerWeights(layer) for layer in model.get_decoder().layers]


class FastDecoder:
    """Static-cache decoding for one `generate` call: `prefill` once, then `decode` one token per step.

    ``layers`` is the second item of `fused_layers(model)`.
    """

    def __init__(self, model, layers: list, batch_size: int, max_length: int):
        config = model.config
        self.model = model
        self.eps = config.rms_norm_eps
        self.n_heads = config.num_attention_heads
        self.n_kv = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.n_heads
        self.layers = layers
        backbone = model.get_decoder()
        self.embed, self.w_norm = backbone.embed_tokens.weight, backbone.norm.weight
        head = model.get_output_embeddings()
        self.lm_head, self.lm_bias = head.weight, head.bias
        param = self.embed
        positions = torch.arange(max_length, device=param.device)[None]  # [1, Lmax]
        cos, sin = backbone.rotary_emb(param[:1], positions)  # [1, Lmax, hd]
        self.cos, self.sin = cos[0], sin[0]  # [Lmax, hd]
        shape = (batch_size, self.n_kv, max_length, self.head_dim)
        self.keys = [param.new_zeros(shape) for _ in self.layers]  # per layer [B, n_kv, Lmax, hd]
        self.values = [param.new_zeros(shape) for _ in self.layers]
        self.key_valid = torch.zeros(batch_size, max_length, dtype=torch.bool, device=param.device)
        self.next_pos = torch.zeros(batch_size, dtype=torch.long, device=param.device)  # [B] rope position
        self.length = 0  # filled cache columns

    def _attention(self, x, lw: _LayerWeights, index: int, cos, sin, mask):
        batch, steps, _ = x.shape
        qkv = F.linear(_rms(x, lw.w_in, self.eps), lw.qkv, lw.qkv_bias)  # [B, T, (nh + 2 nkv) hd]
        qkv = qkv.view(batch, steps, self.n_heads + 2 * self.n_kv, self.head_dim)
        q, k, v = qkv.split([self.n_heads, self.n_kv, self.n_kv], dim=2)  # [B, T, n, hd]
        if lw.q_norm is not None:
            q, k = _rms(q, lw.q_norm.weight, self.eps), _rms(k, lw.k_norm.weight, self.eps)
        q = _rope(q, cos, sin).transpose(1, 2)  # [B, nh, T, hd]
        k = _rope(k, cos, sin).transpose(1, 2)  # [B, nkv, T, hd]
        start, stop = self.length, self.length + steps
        self.keys[index][:, :, start:stop] = k
        self.values[index][:, :, start:stop] = v.transpose(1, 2)
        keys, values = self.keys[index][:, :, :stop], self.values[index][:, :, :stop]  # [B, nkv, S, hd]
        if steps == 1:
            out = self._decode_attention(q, keys, values, mask)
        else:  # prefill, once per generate: repeating the KV heads for GQA is cheap enough here
            group = self.n_heads // self.n_kv
            keys, values = keys.repeat_interleave(group, dim=1), values.repeat_interleave(group, dim=1)
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)  # [B, nh, T, hd]
        return F.linear(out.transpose(1, 2).reshape(batch, steps, -1), lw.o, lw.o_bias)

    def _decode_attention(self, q, keys, values, mask):
        """One query per row: two batched matmuls, grouped by KV head so GQA needs no repeated keys.
        (CPU's fused attention kernel is slower than this for a single query with a mask.)"""
        batch, group = q.shape[0], self.n_heads // self.n_kv
        q = q.reshape(batch, self.n_kv, group, self.head_dim)  # [B, nkv, g, hd]
        scores = torch.matmul(q, keys.transpose(-1, -2)) * self.head_dim**-0.5  # [B, nkv, g, S]
        scores = scores.masked_fill(~mask, float("-inf")).softmax(-1).to(values.dtype)
        return torch.matmul(scores, values).reshape(batch, self.n_heads, 1, self.head_dim)

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Last-position logits ``[B, V]`` for new tokens ``ids [B, T]`` at rope ``positions [B, T]``."""
        x = F.embedding(ids, self.embed)  # [B, T, H]
        cos, sin = self.cos[positions][:, :, None], self.sin[positions][:, :, None]  # [B, T, 1, hd]
        for index, lw in enumerate(self.layers):
            x = x + self._attention(x, lw, index, cos, sin, mask)
            gate, up = F.linear(_rms(x, lw.w_post, self.eps), lw.gate_up, lw.gate_up_bias).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, lw.down, lw.down_bias)  # [B, T, H]
        self.length += ids.shape[1]
        return F.linear(_rms(x[:, -1], self.w_norm, self.eps), self.lm_head, self.lm_bias)  # [B, V]

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor, repeats: int = 1) -> torch.Tensor:
        """Run left-padded prompts ``[b, P]`` once, then repeat each row ``repeats`` times (the ``n`` samples
        of a prompt share its prefill); returns next-token logits ``[b * repeats, V]``."""
        logits = self._prefill(ids, mask)  # [b, V]
        if repeats > 1:
            self.select(torch.arange(ids.shape[0], device=ids.device).repeat_interleave(repeats))
            logits = logits.repeat_interleave(repeats, dim=0)
        return logits

    def _prefill(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        steps = ids.shape[1]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # [B, P]
        self.key_valid[:, :steps] = mask.bool()
        causal = torch.ones(steps, steps, dtype=torch.bool, device=ids.device).tril()  # [P, P]
        # A pad query attends to itself only, so no softmax row is empty (its output is never used).
        attn_mask = (causal & self.key_valid[:, None, :steps]) | torch.eye(
            steps, dtype=torch.bool, device=ids.device
        )
        self.next_pos = positions[:, -1] + 1
        return self._forward(ids, positions, attn_mask[:, None])  # mask [B, 1, P, P]

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append one token per row ``[B]``; returns next-token logits ``[B, V]``."""
        self.key_valid[:, self.length] = True
        mask = self.key_valid[:, None, None, : self.length + 1]  # [B, 1, 1, S]
        positions = self.next_pos[:, None]  # [B, 1]
        self.next_pos = self.next_pos + 1
        return self._forward(tokens[:, None], positions, mask)

    def select(self, rows: torch.Tensor) -> None:
        """Keep batch rows ``rows`` (indices may repeat): their cache, mask and positions."""
        self.keys = [self._take(k, rows) for k in self.keys]
        self.values = [self._take(v, rows) for v in self.values]
        self.key_valid, self.next_pos = self.key_valid[rows], self.next_pos[rows]

    def _take(self, cache: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """``cache[rows]``, copying only the filled columns (the rest is written before it is read)."""
        out = cache.new_empty((len(rows), *cache.shape[1:]))  # [b', nkv, Lmax, hd]
        out[:, :, : self.length] = cache[rows, :, : self.length]
        return out
