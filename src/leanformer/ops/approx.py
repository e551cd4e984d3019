"""Tempo's approximate "rebuild from the output" variants (opt-in; NOT exact).

Tempo (Andoorveedu et al., NeurIPS 2022, ``UofT-EcoSystem/Tempo``) frees an activation's input by
rebuilding what backward needs from the output, which the next layer saves anyway:

- GELU from output: Tempo keeps ``y`` and a byte mask ``x >= x_min`` (the branch of the non-monotone
  GELU) and evaluates spline fits of GELU'(GELU^-1(y)). We keep a *1-bit* packed branch mask and invert
  ``y`` numerically (bisection in float64 on the exact formula of the chosen GELU kind, then its
  derivative), so the only error left is the rounding of ``y`` itself. Near the minimum the inverse is
  ill-conditioned (GELU' ~ 0 there): the error grows like sqrt(ulp(y)); in bf16 it is large.
- LayerNorm from output (Tempo / Apex ``memory_efficient``): keeps ``y, rstd, gamma, beta`` and rebuilds
  ``x_hat = (y - beta) / gamma``. Fine in fp32 for ordinary gamma; with small |gamma| (and in bf16) the
  division amplifies the rounding of ``y``: Tempo does not clamp, Apex clamps |gamma| >= eps. We clamp
  |gamma| like Apex and document the failure mode instead of hiding it.

Measured bounds are stated in ``docs/lean_layers.md`` and asserted in ``tests/ops/test_ops_approx.py``.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch.autograd.function import once_differentiable

from ._amp import no_autocast
from .activation import ACTIVATIONS, GELU_KINDS, check_kind
from .bitpack import pack_bits, unpack_bits

_BISECT_STEPS = 48      # float64 brackets of width <= 16 shrink below 6e-14
_LEFT_END = -16.0       # act(-16) ~ -1e-56 underflows fp32/bf16: every stored left-branch y lies in [-16, x_min]


@lru_cache(maxsize=None)
def gelu_minimum(kind: str) -> float:
    """x at which the GELU-like ``kind`` has its single minimum: root of act' on [-3, 0] by float64 bisection."""
    lo, hi = torch.tensor(-3.0, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)
    for _ in range(80):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _act_grad(kind, mid) < 0 else (lo, mid)
    return float((lo + hi) / 2)


def _invert(kind: str, y: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """float64 x with act(x) = y on the branch given by ``right`` (x >= x_min), by bisection."""
    f, xm = ACTIVATIONS[kind], gelu_minimum(kind)
    y = y.to(torch.float64)
    lo = torch.where(right, torch.full_like(y, xm), torch.full_like(y, _LEFT_END))
    hi = torch.where(right, y.clamp(min=0.0) + 1.0, torch.full_like(y, xm))
    sign = torch.where(right, 1.0, -1.0).to(torch.float64)   # act increasing on the right branch
    for _ in range(_BISECT_STEPS):
        mid = (lo + hi) * 0.5
        above = (f(mid) - y) * sign > 0
        hi = torch.where(above, mid, hi)
        lo = torch.where(above, lo, mid)
    return (lo + hi) * 0.5


def _act_grad(kind: str, x64: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():
        xr = x64.detach().requires_grad_()
        (d,) = torch.autograd.grad(ACTIVATIONS[kind](xr).sum(), xr)
    return d


class _GeluFromOutputFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kind: str):
        y = ACTIVATIONS[kind](x)
        right = x >= gelu_minimum(kind)
        ctx.save_for_backward(y, pack_bits(right))     # y: the next Linear saves it anyway
        ctx.kind, ctx.shape = kind, x.shape
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        y, packed = ctx.saved_tensors
        right = unpack_bits(packed, ctx.shape)
        with no_autocast(dy):
            d = _act_grad(ctx.kind, _invert(ctx.kind, y, right))
            return (dy.to(torch.float64) * d).to(dy.dtype), None


def lean_gelu_from_output(x: torch.Tensor, kind: str = "gelu") -> torch.Tensor:
    """GELU (any GELU ``kind``) saving its output + a 1-bit branch mask. APPROXIMATE gradient."""
    check_kind(kind)
    if kind not in GELU_KINDS:
        raise ValueError(f"lean_gelu_from_output: {kind!r} is not a GELU kind ({sorted(GELU_KINDS)})")
    if not (torch.is_grad_enabled() and x.requires_grad):
        return ACTIVATIONS[kind](x)
    return _GeluFromOutputFunction.apply(x, kind)


class _LayerNormFromOutputFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, shape: tuple, eps: float):
        y, _mean, rstd = torch.native_layer_norm(x, shape, weight, bias, eps)
        ctx.save_for_backward(y, weight, bias, rstd)   # y: the next Linear saves it anyway
        ctx.shape, ctx.eps, ctx.x_dtype = shape, eps, x.dtype
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        y, weight, bias, rstd = ctx.saved_tensors
        n = math.prod(ctx.shape)
        with no_autocast(dy):
            y2 = y.reshape(-1, n).float()                                        # (M, N)
            g = weight.reshape(1, n).float()
            # Apex-style clamp: |gamma| >= eps keeps the division finite (still inaccurate for tiny gamma)
            gs = torch.where(g >= 0, g.clamp(min=ctx.eps), g.clamp(max=-ctx.eps))
            xhat = (y2 - (bias.reshape(1, n).float() if bias is not None else 0.0)) / gs
            d2 = dy.reshape(-1, n).float()
            gd = d2 * g
            r = rstd.reshape(-1, 1).float()
            dx = r * (gd - gd.mean(-1, keepdim=True) - xhat * (gd * xhat).mean(-1, keepdim=True))
            dw = (d2 * xhat).sum(0).view(ctx.shape).to(weight.dtype) if ctx.needs_input_grad[1] else None
            db = d2.sum(0).view(ctx.shape).to(bias.dtype) if bias is not None and ctx.needs_input_grad[2] else None
        return dx.view(dy.shape).to(ctx.x_dtype), dw, db, None, None


def lean_layer_norm_from_output(x: torch.Tensor, normalized_shape, weight: torch.Tensor,
                                bias: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
    """``F.layer_norm`` saving its output (+ rstd) instead of its input. APPROXIMATE gradient."""
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if weight is None:
        raise ValueError("lean_layer_norm_from_output needs an affine weight (x_hat is rebuilt as (y - beta) / gamma)")
    if tuple(x.shape[x.dim() - len(shape):]) != shape:
        raise ValueError(f"lean_layer_norm_from_output: input {tuple(x.shape)} does not end with {shape}")
    if not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))):
        return torch.nn.functional.layer_norm(x, shape, weight, bias, eps)
    return _LayerNormFromOutputFunction.apply(x, weight, bias, shape, eps)
