"""Gated product ``act(g) * u`` (LLaMA's SwiGLU MLP) keeping only ``g`` and ``u``.

Stock ``down(silu(gate(x)) * up(x))`` saves ``g`` (silu), ``silu(g)`` and ``u`` (mul) and ``h`` (down):
four intermediate-size tensors. This Function saves ``g`` and ``u``; the following ``lean_linear``
rebuilds ``h = act(g) * u`` from the same two tensors (recipe), so two remain. Liger's SwiGLU keeps the
same two in its Function but its down projection still saves ``h`` (three).
"""
from __future__ import annotations

from functools import partial

import torch
from torch.autograd.function import once_differentiable

from ._amp import AmpState, no_autocast
from .activation import act_backward, act_forward, check_kind
from .recipe import attach_recipe


def _gated_forward(kind, g, u):
    return act_forward(kind, g) * u


class _GatedActFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, g, u, kind: str):
        a = act_forward(kind, g)
        h = a * u
        ctx.act_dtype = a.dtype
        del a
        amp = AmpState.capture(g)
        ctx.save_for_backward(g, u)
        ctx.kind, ctx.amp = kind, amp
        attach_recipe(ctx, h, (g, u), partial(_gated_forward, kind), amp)
        return h

    @staticmethod
    @once_differentiable
    def backward(ctx, dh):
        g, u = ctx.saved_tensors
        dg = du = None
        if ctx.needs_input_grad[1]:
            with torch.no_grad(), ctx.amp.restore():
                a = act_forward(ctx.kind, g)                  # act(g), rebuilt
            with no_autocast(dh):
                du = (dh * a).to(u.dtype)      # autograd casts a gradient to its input's dtype
            del a
        if ctx.needs_input_grad[0]:
            with no_autocast(dh):
                da = (dh * u).to(ctx.act_dtype)
            dg = act_backward(ctx.kind, da, g, ctx.amp).to(g.dtype)
        return dg, du, None


def lean_gated_act(g: torch.Tensor, u: torch.Tensor, kind: str = "silu") -> torch.Tensor:
    """``act(g) * u`` saving only ``g`` and ``u``."""
    check_kind(kind)
    if g.shape != u.shape:
        raise ValueError(f"lean_gated_act: gate {tuple(g.shape)} and up {tuple(u.shape)} shapes differ")
    if not (torch.is_grad_enabled() and (g.requires_grad or u.requires_grad)):
        return _gated_forward(kind, g, u)
    return _GatedActFunction.apply(g, u, kind)
