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
3. `_ChunkedLogProbs` computes logits chunk by chunk of ``chunk_size`` tokens, keeping only
   the log-prob, entropy and log-normaliser per token; its backward recomputes each chunk's logits and
   accumulates ``dL/dh`` and ``dL/dW`` directly, using
   ``dlogp_y/dz = (onehot_y - p) / T`` and ``dH/dz = -p (log p + H) / T``.

So at most ``chunk_size x V`` float32 logits (plus a few same-size temporaries) exist at any time, in the
forward and in the backward pass.
"""

from __future__ import annotations

import torch

from sapo.errors import UserError

DEFAULT_CHUNK_SIZE = 1024

# Config attributes that change logits beyond ``h W^T + b``; the fused lm-head below does not apply them.
_UNSUPPORTED_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so a left-padded prompt starts at 0 (verl's convention).

    ``[0, 0, 1, 1, 1] -> [0, 0, 0, 1, 2]`` (pads get 0; they are masked anyway).
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # [B, L]


def _chunk_logits(hidden, weight, bias, temperature):
    logits = hidden @ weight.t()  # [C, V]
    if bias is not None:
        logits = logits + bias
    return logits.float() / temperature  # [C, V] float32


class _ChunkedLogProbs(torch.autograd.Function):
    """Log-prob of ``targets`` and entropy under ``softmax(h W^T / T)``, ``chunk_size`` rows at a time."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, chunk_size):  # hidden [N, H], targets [N]
        n = hidden.shape[0]
        log_probs = hidden.new_empty(n, dtype=torch.float32)  # [N]
        entropy = hidden.new_empty(n, dtype=torch.float32)  # [N]
        log_norm = hidden.new_empty(n, dtype=torch.float32)  # [N]
        for start in range(0, n, chunk_size):
            stop = min(start + chunk_size, n)
            logits = _chunk_logits(hidden[start:stop], weight, bias, temperature)  # [C, V]
            lse = torch.logsumexp(logits, dim=-1)  # [C]
            probs = torch.exp(logits - lse[:, None])  # [C, V]
            log_norm[start:stop] = lse
            entropy[start:stop] = lse - (probs * logits).sum(-1)
            log_probs[start:stop] = logits.gather(-1, targets[start:stop, None]).squeeze(-1) - lse
        ctx.save_for_backward(hidden, weight, bias, targets, log_norm, entropy)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        ctx.mark_non_differentiable(log_norm)
        return log_probs, entropy, log_norm

    @staticmethod
    def backward(ctx, grad_log_probs, grad_entropy, _grad_log_norm):
        hidden, weight, bias, targets, log_norm, entropy = ctx.saved_tensors
        temperature, chunk_size = ctx.temperature, ctx.chunk_size
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_hidden = torch.zeros_like(hidden) if need_h else None
        f32 = dict(dtype=torch.float32, device=weight.device)
        grad_weight = torch.zeros(weight.shape, **f32) if need_w else None
        grad_bias = torch.zeros(weight.shape[0], **f32) if need_b else None
        if grad_log_probs is None:
            grad_log_probs = torch.zeros_like(log_norm)
        if grad_entropy is None:
            grad_entropy = torch.zeros_like(log_norm)
        for start in range(0, hidden.shape[0], chunk_size):
            stop = min(start + chunk_size, hidden.shape[0])
            h = hidden[start:stop]  # [C, H]
            logits = _chunk_logits(h, weight, bias, temperature)  # [C, V]
            log_p = logits - log_norm[start:stop, None]  # [C, V]
            probs = log_p.exp()  # [C, V]
            # dH/dz = -p (log p + H); dlogp_y/dz = onehot_y - p  (both before the 1/T of z = hW^T / T)
            g_ent = grad_entropy[start:stop, None]  # [C, 1]
            g_lp = grad_log_probs[start:stop, None]  # [C, 1]
            grad_logits = -probs * (g_ent * (log_p + entropy[start:stop, None]) + g_lp)  # [C, V]
            grad_logits.scatter_add_(-1, targets[start:stop, None], g_lp)
            grad_logits = (grad_logits / temperature).to(hidden.dtype)  # [C, V]
            if need_h:
                grad_hidden[start:stop] = grad_logits @ weight
            if need_w:
                grad_weight += (grad_logits.t() @ h).float()
            if need_b:
                grad_bias += grad_logits.float().sum(0)
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
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log_prob, entropy)`` of ``targets`` ``[...]`` under ``softmax((hidden @ weight.T + bias) / T)``.

    ``hidden`` is ``[..., H]``; both outputs are float32 ``[...]`` and differentiable with respect to
    ``hidden``, ``weight`` and ``bias``.
    """
    if temperature <= 0:
        raise UserError(f"temperature must be > 0 for log-probs (got {temperature})")
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


def token_log_probs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_length: int,
    *,
    temperature: float = 1.0,
    compute_entropy: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (and entropy) of the last ``response_length`` tokens of each ``[prompt | response]`` row.

    ``input_ids``/``attention_mask`` are ``[B, L]`` with left-padded prompts followed by right-padded
    responses of ``R = response_length`` columns. Returns float32 ``log_probs [B, R]`` and
    ``entropy [B, R]`` (or None), differentiable with respect to the model's parameters. Values at padded
    response positions are computed but meaningless; mask them with the response mask.
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
