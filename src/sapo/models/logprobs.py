"""Per-token log-probabilities and entropy of response tokens without full-vocabulary logits.

For a batch of ``[prompt | response]`` sequences (prompts left-padded, responses right after them), the
log-probability of response token ``y_t`` is ``log softmax(z_{t-1} / T)[y_t]`` with ``z = h W^T (+ b)`` the
logits read from the hidden state ``h`` of the position before it and ``T`` the sampling temperature (verl's
convention: the trainer divides logits by the rollout temperature). The entropy is
``H_t = logsumexp(z / T) - sum_v p_v z_v / T`` with ``p = softmax(z / T)``.

Memory: at a real vocabulary (151,936 for Qwen) the logits of 8 x 512 tokens are 2.5 GB in float32, and a
naive backward holds several tensors of that size. Here:

1. the backbone (``model.get_decoder()``) gives the final hidden states ``[B, L, H]``;
2. only the ``R`` positions that predict response tokens are kept, flattened to ``[N, H]``;
3. `_ChunkedLogProbs` computes the tempered logits ``z = (h / T) W^T`` chunk by chunk of ``chunk_size``
   tokens, keeping only the log-prob, entropy and log-normaliser per token; its backward recomputes each
   chunk's logits and accumulates ``dL/dh`` and ``dL/dW`` directly, using
   ``dlogp_y/dz = onehot_y - p`` and ``dH/dz = -p (log p + H)`` (and ``dz/dh = W / T``).

So two float32 ``[chunk_size, V]`` buffers (reused across chunks) are the only vocabulary-sized tensors, in
the forward and in the backward pass. The cost is one extra lm-head matmul (the recomputation), which
the saved memory traffic more than pays for on CPU (see docs/models_and_rollout.md).
"""

from __future__ import annotations

from functools import partial

import torch

from sapo.errors import UserError

# Default chunk: about 2**26 logits (256 MiB in float32) per chunk, so a 151,936-token vocabulary gets
# 441-token chunks and a 100-token one a single chunk of up to 671,088 tokens.
CHUNK_LOGITS = 1 << 26


def default_chunk_size(vocab_size: int) -> int:
    return max(16, CHUNK_LOGITS // vocab_size)


# Config attributes that change logits beyond ``h W^T + b``; the fused lm-head below does not apply them.
_UNSUPPORTED_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so a left-padded prompt starts at 0 (verl's convention).

    ``[0, 0, 1, 1, 1] -> [0, 0, 0, 1, 2]`` (pads get 0; they are masked anyway).
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # [B, L]


def _logits_into(out, hidden, weight, bias):
    """``out[:C] = hidden @ weight.T (+ bias)`` in float32, written into a reused buffer."""
    out = out[: hidden.shape[0]]  # [C, V]
    if weight.dtype == torch.float32:
        torch.mm(hidden, weight.t(), out=out)
    else:
        out.copy_(hidden @ weight.t())
    if bias is not None:
        out.add_(bias)
    return out


class _ChunkedLogProbs(torch.autograd.Function):
    """Log-prob of ``targets`` and entropy under ``softmax(h W^T / T)``, ``chunk_size`` rows at a time.

    The temperature is applied to ``h`` (``(h / T) W^T``, a ``[C, H]`` op instead of a ``[C, V]`` one), and
    two float32 ``[chunk_size, V]`` buffers are reused across chunks with in-place ops, so the big
    tensors are neither reallocated nor page-faulted per chunk.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, chunk_size):  # hidden [N, H], targets [N]
        n, scaled_hidden = hidden.shape[0], hidden * (1.0 / temperature)  # [N, H]
        log_probs = hidden.new_empty(n, dtype=torch.float32)  # [N]
        entropy = hidden.new_empty(n, dtype=torch.float32)  # [N]
        log_norm = hidden.new_empty(n, dtype=torch.float32)  # [N]
        size = (min(chunk_size, n), weight.shape[0])
        logits_buf = hidden.new_empty(size, dtype=torch.float32)  # [C, V]
        exp_buf = hidden.new_empty(size, dtype=torch.float32)  # [C, V]
        for start in range(0, n, chunk_size):
            stop = min(start + chunk_size, n)
            logits = _logits_into(logits_buf, scaled_hidden[start:stop], weight, bias)  # [C, V] z / T
            row_max = logits.amax(-1, keepdim=True)  # [C, 1]
            shifted = torch.sub(logits, row_max, out=exp_buf[: stop - start]).exp_()  # [C, V] e^(z - max)
            total = shifted.sum(-1)  # [C]
            lse = row_max.squeeze(-1) + total.log()  # [C]
            # H = lse - sum_v p_v z_v, with p_v = e^(z_v - max) / total
            entropy[start:stop] = lse - shifted.mul_(logits).sum(-1) / total
            log_norm[start:stop] = lse
            log_probs[start:stop] = logits.gather(-1, targets[start:stop, None]).squeeze(-1) - lse
        ctx.save_for_backward(scaled_hidden, weight, bias, targets, log_norm, entropy)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        ctx.mark_non_differentiable(log_norm)
        return log_probs, entropy, log_norm

    @staticmethod
    def backward(ctx, grad_log_probs, grad_entropy, _grad_log_norm):
        scaled_hidden, weight, bias, targets, log_norm, entropy = ctx.saved_tensors
        temperature, chunk_size, n = ctx.temperature, ctx.chunk_size, scaled_hidden.shape[0]
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_hidden = torch.empty_like(scaled_hidden) if need_h else None
        f32 = dict(dtype=torch.float32, device=weight.device)
        grad_weight = torch.zeros(weight.shape, **f32) if need_w else None
        grad_bias = torch.zeros(weight.shape[0], **f32) if need_b else None
        g_lp_all = torch.zeros_like(log_norm) if grad_log_probs is None else grad_log_probs  # [N]
        g_ent_all = torch.zeros_like(log_norm) if grad_entropy is None else grad_entropy  # [N]
        size = (min(chunk_size, n), weight.shape[0])
        logits_buf = scaled_hidden.new_empty(size, dtype=torch.float32)  # [C, V]
        probs_buf = scaled_hidden.new_empty(size, dtype=torch.float32)  # [C, V]
        for start in range(0, n, chunk_size):
            stop = min(start + chunk_size, n)
            h = scaled_hidden[start:stop]  # [C, H]
            log_p = _logits_into(logits_buf, h, weight, bias).sub_(log_norm[start:stop, None])  # [C, V]
            probs = torch.exp(log_p, out=probs_buf[: stop - start])  # [C, V]
            # With z the tempered logits: dlogp_y/dz = onehot_y - p and dH/dz = -p (log p + H), so
            # dL/dz = p * (a log p + b) + onehot_y g_lp, with a = -g_ent and b = -(g_ent H + g_lp).
            g_lp, g_ent = g_lp_all[start:stop, None], g_ent_all[start:stop, None]  # [C, 1]
            grad_z = log_p.mul_(-g_ent).sub_(g_ent * entropy[start:stop, None] + g_lp).mul_(probs)
            grad_z.scatter_add_(-1, targets[start:stop, None], g_lp)  # [C, V]
            # z = (h / T) W^T: dL/dh = (dL/dz W) / T and dL/dW = dL/dz^T (h / T).
            grad_z_w = grad_z if weight.dtype == torch.float32 else grad_z.to(weight.dtype)
            if need_h:
                grad_hidden[start:stop] = (grad_z_w @ weight) * (1.0 / temperature)
            if need_w:
                grad_weight.addmm_(grad_z.t(), h.float())  # float32 accumulation
            if need_b:
                grad_bias += grad_z.sum(0)
        grad_weight = grad_weight.to(weight.dtype) if need_w else None
        grad_bias = grad_bias.to(bias.dtype) if need_b else None
        return grad_hidden, grad_weight, grad_bias, None, None, None


def chunked_log_probs_from_hidden(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log_prob, entropy)`` of ``targets`` ``[...]`` under ``softmax((hidden @ weight.T + bias) / T)``.

    ``hidden`` is ``[..., H]``; both outputs are float32 ``[...]`` and differentiable with respect to
    ``hidden``, ``weight`` and ``bias``.
    """
    if temperature <= 0:
        raise UserError(f"temperature must be > 0 for log-probs (got {temperature})")
    chunk_size = default_chunk_size(weight.shape[0]) if chunk_size is None else chunk_size
    if chunk_size < 1:
        raise UserError(f"chunk_size must be >= 1 (got {chunk_size})")
    shape = targets.shape
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])  # [N, H]
    log_probs, entropy, _ = _ChunkedLogProbs.apply(
        flat_hidden, weight, bias, targets.reshape(-1), float(temperature), int(chunk_size)
    )
    return log_probs.view(shape), entropy.view(shape)


def _lm_head_of(model):
    for name in _UNSUPPORTED_LOGIT_TRANSFORMS:
        if getattr(model.config, name, None) not in (None, 1, 1.0):
            raise UserError(
                f"{model.config.model_type} models apply {name}={getattr(model.config, name)} to their "
                "logits, which the chunked log-prob computation does not support yet"
            )
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear):
        raise UserError(f"the output layer of {type(model).__name__} is not a Linear layer ({type(head)})")
    return head


# Attribute under which `sapo.distributed.fsdp.shard_model` puts an FSDP-registered copy of
# `compute_token_log_probs` on a sharded model: this pass reads the decoder and the LM head's weight without
# calling the model's forward, so FSDP must be told to gather the root's parameters for it.
SHARDED_LOG_PROBS = "sapo_token_log_probs"


def token_log_probs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_length: int,
    *,
    temperature: float = 1.0,
    compute_entropy: bool = False,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`compute_token_log_probs`, through the model's FSDP-registered method when it is sharded."""
    compute = getattr(model, SHARDED_LOG_PROBS, None) or partial(compute_token_log_probs, model)
    return compute(
        input_ids,
        attention_mask,
        response_length,
        temperature=temperature,
        compute_entropy=compute_entropy,
        chunk_size=chunk_size,
    )


def compute_token_log_probs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_length: int,
    *,
    temperature: float = 1.0,
    compute_entropy: bool = False,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (and entropy) of the last ``response_length`` tokens of each ``[prompt | response]`` row.

    ``input_ids``/``attention_mask`` are ``[B, L]`` with left-padded prompts followed by right-padded
    responses of ``R = response_length`` columns. Returns float32 ``log_probs [B, R]`` and
    ``entropy [B, R]`` (or None), differentiable with respect to the model's parameters. Values at padded
    response positions are computed but meaningless; mask them with the response mask.
    ``chunk_size`` tokens' logits exist at a time (default: `default_chunk_size` of the vocabulary).
    """
    batch, length = input_ids.shape
    if not 0 < response_length < length:
        raise UserError(f"response_length must be in [1, {length - 1}] for sequences of length {length}")
    head = _lm_head_of(model)
    backbone = model.get_decoder()
    hidden = backbone(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    ).last_hidden_state  # [B, L, H]
    # Position t predicts token t + 1: the response's R tokens are predicted by positions L-R-1 .. L-2.
    hidden = hidden[:, length - response_length - 1 : length - 1]  # [B, R, H]
    targets = input_ids[:, length - response_length :]  # [B, R]
    log_probs, entropy = chunked_log_probs_from_hidden(
        hidden, head.weight, targets, bias=head.bias, temperature=temperature, chunk_size=chunk_size
    )
    return log_probs, (entropy if compute_entropy else None)
