"""Linear projection that can save its input's *recipe* instead of the input itself.

Stock ``F.linear`` saves its input ``x`` for the weight gradient. When ``x`` is the output of a lean
norm, activation or gated product, ``x`` can be rebuilt bit-identically from tensors that producer
already saved (its input and row statistics), so this Function saves those (same storages: counted
once) and rebuilds ``x`` in backward. Without a recipe it saves ``x`` like stock. Two weight layouts:
``nn.Linear`` (out, in) via ``F.linear``, and Hugging Face ``Conv1D`` (GPT-2, (in, out)) via
``torch.addmm`` exactly as ``Conv1D.forward`` computes it. Autocast: linear/addmm are lower-precision
autocast ops, so inputs are cast to the autocast dtype explicitly, as autocast would.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ._amp import AmpState, no_autocast
from .recipe import Recipe, find_recipe


def _project(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, transposed: bool) -> torch.Tensor:
    if not transposed:
        return F.linear(x, w, b)
    # HF Conv1D: addmm(bias, x2d, W) with W (in, out)
    out_shape = x.shape[:-1] + (w.shape[1],)
    x2 = x.reshape(-1, x.shape[-1])
    y2 = torch.addmm(b, x2, w) if b is not None else x2 @ w
    return y2.view(out_shape)


class _LinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, transposed: bool, recipe: Recipe | None, rtensors: tuple):
        amp = AmpState.capture(x)
        cdt = amp.lower_dtype(x)
        with no_autocast(x):
            xc, wc = x.to(cdt), weight.to(cdt)
            bc = bias.to(cdt) if bias is not None else None
            out = _project(xc, wc, bc, transposed)
        need_x = ctx.needs_input_grad[1]   # x only matters for dW
        need_w = ctx.needs_input_grad[0]   # W only matters for dx
        use_recipe = need_x and recipe is not None
        x_saved = (tuple(rtensors) if use_recipe else (xc,)) if need_x else ()
        ctx.save_for_backward(wc if need_w else None, *x_saved)
        ctx.meta = (transposed, recipe if use_recipe else None, cdt, x.dtype, x.shape, weight.dtype,
                    None if bias is None else bias.dtype)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):
        transposed, recipe, cdt, x_dtype, x_shape, w_dtype, b_dtype = ctx.meta
        wc, *x_saved = ctx.saved_tensors
        dx = dw = db = None
        with no_autocast(dout):
            dout = dout.to(cdt)
            d2 = dout.reshape(-1, dout.shape[-1])                        # (N, out)
            if ctx.needs_input_grad[0]:
                dx2 = d2 @ (wc.t() if transposed else wc)                # (N, in)
                dx = dx2.view(x_shape).to(x_dtype)
            if ctx.needs_input_grad[1]:
                x = recipe.recompute(*x_saved).to(cdt) if recipe is not None else x_saved[0]
                x2 = x.reshape(-1, x.shape[-1])                          # (N, in)
                dw = (x2.t() @ d2) if transposed else (d2.t() @ x2)      # layout of W
                dw = dw.to(w_dtype)
            if b_dtype is not None and ctx.needs_input_grad[2]:
                db = d2.sum(0).to(b_dtype)
        return dx, dw, db, None, None, None


def lean_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                transposed: bool = False) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` (or HF ``Conv1D`` when ``transposed``) saving ``x``'s recipe if any."""
    if not isinstance(x, torch.Tensor) or not isinstance(weight, torch.Tensor):
        raise TypeError(f"lean_linear expects tensors, got {type(x).__name__} and {type(weight).__name__}")
    in_features = weight.shape[0] if transposed else weight.shape[-1]
    if weight.dim() != 2 or x.dim() == 0 or x.shape[-1] != in_features:
        raise ValueError(f"lean_linear: input (..., {x.shape[-1] if x.dim() else '?'}) does not match weight "
                         f"{tuple(weight.shape)} ({'(in, out)' if transposed else '(out, in)'} layout)")
    grad_needed = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                              or (bias is not None and bias.requires_grad))
    if not grad_needed:  # inference: exactly the stock op under the ambient autocast
        return _project(x, weight, bias, transposed)
    found = find_recipe(x)
    recipe, rtensors = found if found is not None else (None, ())
    return _LinearFunction.apply(x, weight, bias, transposed, recipe, rtensors)
