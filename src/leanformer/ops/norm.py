"""LayerNorm and RMSNorm that let the following projection(s) rebuild the normalised output.

Each norm saves what its own backward needs (input, weight, row statistics) and attaches a recipe to
its output, so a following ``lean_linear`` keeps nothing extra (see ``recipe.py``). LayerNorm runs the
native kernels (``native_layer_norm`` / ``native_layer_norm_backward``): forward and gradients are the
ones ``nn.LayerNorm`` produces, bit for bit; the recipe reruns ``native_layer_norm`` (deterministic) so
the rebuilt output equals the forward output bit for bit. RMSNorm follows Hugging Face
``LlamaRMSNorm`` op for op (fp32 statistics, cast back, then ``weight *``), with an analytic backward:
``dx = rstd * (dn - n * mean(dn * n))`` for ``n = x * rstd`` (last-ulp differences from the stock
autograd chain; tested within the fp32 tolerance).
"""
from __future__ import annotations

from functools import partial

import torch
from torch.autograd.function import once_differentiable

from ._amp import AmpState, no_autocast
from .recipe import attach_recipe


def _ln_rebuild(shape, eps, has_w, has_b, x, *params):
    w = params[0] if has_w else None
    b = params[int(has_w)] if has_b else None
    return torch.native_layer_norm(x, shape, w, b, eps)[0]


class _LayerNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, shape: tuple, eps: float):
        y, mean, rstd = torch.native_layer_norm(x, shape, weight, bias, eps)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        ctx.shape = shape
        params = tuple(t for t in (weight, bias) if t is not None)
        attach_recipe(ctx, y, (x, *params), partial(_ln_rebuild, shape, eps, weight is not None, bias is not None),
                      AmpState.capture(x))
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        mask = [ctx.needs_input_grad[0], weight is not None and ctx.needs_input_grad[1],
                bias is not None and ctx.needs_input_grad[2]]
        with no_autocast(dy):
            # CUDA autocast runs layer_norm in fp32: redo the cast it made (CPU autocast leaves dtypes alone)
            wide = dy.dtype if dy.dtype != x.dtype else None
            xs = x.to(wide) if wide else x
            ws = weight.to(wide) if wide and weight is not None else weight
            bs = bias.to(wide) if wide and bias is not None else bias
            dx, dw, db = torch.ops.aten.native_layer_norm_backward(dy, xs, ctx.shape, mean, rstd, ws, bs, mask)
        dw = dw.to(weight.dtype) if dw is not None else None
        db = db.to(bias.dtype) if db is not None else None
        return (None if dx is None else dx.to(x.dtype)), dw, db, None, None


def lean_layer_norm(x: torch.Tensor, normalized_shape, weight: torch.Tensor | None = None,
                    bias: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
    """``F.layer_norm`` whose output a following ``lean_linear`` can rebuild instead of saving."""
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if tuple(x.shape[x.dim() - len(shape):]) != shape:
        raise ValueError(f"lean_layer_norm: input shape {tuple(x.shape)} does not end with normalized_shape {shape}")
    if not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))):
        return torch.nn.functional.layer_norm(x, shape, weight, bias, eps)
    return _LayerNormFunction.apply(x, weight, bias, shape, eps)


# --------------------------------------------------------------------------- RMSNorm (HF LlamaRMSNorm)

def _rms_forward(x, weight, eps):
    x32 = x.to(torch.float32)
    rstd = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)   # (..., 1) fp32
    return weight * (x32 * rstd).to(x.dtype), rstd


def _rms_rebuild(x, weight, rstd):
    return weight * (x.to(torch.float32) * rstd).to(x.dtype)


class _RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps: float):
        y, rstd = _rms_forward(x, weight, eps)
        ctx.save_for_backward(x, weight, rstd)
        attach_recipe(ctx, y, (x, weight, rstd), _rms_rebuild, AmpState.capture(x))
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, weight, rstd = ctx.saved_tensors
        dx = dw = None
        with no_autocast(dy):
            n = x.to(torch.float32) * rstd                                   # (..., H) fp32
            nc = n.to(x.dtype)
            if ctx.needs_input_grad[1]:
                dw = (dy * nc).reshape(-1, nc.shape[-1]).sum(0).to(weight.dtype)
            if ctx.needs_input_grad[0]:
                dn = (dy * weight).to(x.dtype).to(torch.float32)             # through the cast, as autograd
                dx = (rstd * (dn - n * (dn * n).mean(-1, keepdim=True))).to(x.dtype)
        return dx, dw, None


def lean_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Hugging Face ``LlamaRMSNorm`` forward whose output a following ``lean_linear`` can rebuild."""
    if weight.dim() != 1 or x.shape[-1] != weight.shape[0]:
        raise ValueError(f"lean_rms_norm: input (..., {x.shape[-1]}) does not match weight {tuple(weight.shape)}")
    if not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)):
        return _rms_forward(x, weight, eps)[0]
    return _RMSNormFunction.apply(x, weight, eps)
