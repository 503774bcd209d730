"""Memory-lean autograd functions for the native decoder: RMSNorm, RoPE and the SwiGLU product.

Autograd keeps every intermediate that a backward formula reads. Written as plain tensor ops these three
keep 2-3 activation-sized tensors each (the float32 copy, the normalised value, the rotated half, silu(g));
written as functions with hand-derived backwards they keep only their inputs (or nothing), which cuts the
actor update's activation memory by about a third. Forward arithmetic is op-for-op transformers' (so
float32 outputs agree exactly); gradients agree to rounding.

RMSNorm, ``y = w * cast(x r)`` with ``r = (mean(x^2) + eps)^(-1/2)`` over the last dim ``H`` (float32):
    dL/dw = sum over rows of  g * cast(x r)
    dL/dx = r * (g w - x r * mean(g w * x r))        (the mean over H; computed in float32)

RoPE, ``y = x cos + rot(x) sin`` with ``rot([a, b]) = [-b, a]``; ``rot`` is linear with transpose
``rot^T([a, b]) = [b, -a]``, so ``dL/dx = g cos + rot^T(g sin)``. Nothing but cos/sin is kept.

SwiGLU product, ``p = silu(a) * u`` with ``silu(a) = a s``, ``s = sigmoid(a)``:
    dL/du = g silu(a),    dL/da = g u s (1 + a (1 - s)).
"""

from __future__ import annotations

import torch


def _wide(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 at least (half types are widened; float64 stays float64)."""
    return x.float() if x.element_size() < 4 else x


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):  # x [..., H], weight [H]
        x32 = _wide(x)
        rstd = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)  # [..., 1]
        ctx.save_for_backward(x, weight, rstd)
        return weight * (x32 * rstd).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        x, weight, rstd = ctx.saved_tensors
        normed = _wide(x) * rstd  # [..., H]
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = (grad * normed.to(x.dtype)).reshape(-1, x.shape[-1]).sum(0).to(weight.dtype)
        grad_normed = _wide(grad) * _wide(weight)  # [..., H]
        dot = (grad_normed * normed).mean(-1, keepdim=True)  # [..., 1]
        grad_x = (grad_normed - normed * dot).mul_(rstd).to(x.dtype)
        return grad_x, grad_weight, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' RMSNorm (module docstring), keeping only ``x`` and ``r`` for the backward."""
    return _RMSNorm.apply(x, weight, eps)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rotate_half_transposed(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((x[..., half:], -x[..., :half]), dim=-1)


class _Rope(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, cos, sin):  # x [B, n, L, d]; cos, sin [B, 1, L, d]
        ctx.save_for_backward(cos, sin)
        return x * cos + _rotate_half(x) * sin

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        return grad * cos + _rotate_half_transposed(grad * sin), None, None


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x cos + rotate_half(x) sin`` (transformers' ``apply_rotary_pos_emb`` for one tensor). cos/sin are
    constants here: no gradient flows to them."""
    return _Rope.apply(x, cos, sin)


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate, up):  # [..., I] each
        ctx.save_for_backward(gate, up)
        return torch.nn.functional.silu(gate) * up

    @staticmethod
    def backward(ctx, grad):
        gate, up = ctx.saved_tensors
        sig = torch.sigmoid(gate)
        grad_up = grad * gate * sig
        grad_gate = grad * up * sig * (1 + gate * (1 - sig))
        return grad_gate, grad_up


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up``, keeping only ``gate`` and ``up`` for the backward."""
    return _SwiGLU.apply(gate, up)
