"""Activations that keep only their pre-activation; a following ``lean_linear`` rebuilds the output.

Stock, an activation ``h = act(a)`` feeding a Linear costs ``a`` (saved by the activation) plus ``h``
(saved by the Linear for dW); Hugging Face's Python GELUs save several more temporaries (GPT-2's
``NewGELUActivation``: 4 intermediate-size tensors). Here the activation saves ``a`` only and attaches a
recipe so the Linear rebuilds ``h = act(a)`` in backward (same function, bit-identical).

Each ``kind`` reproduces one implementation *exactly* (same ops, same order), so outputs match the
module it replaces bit for bit. Gradients: built-in kernels use their aten backward (bit-identical to
stock); the Python GELU formulas use the aten GELU backward of the same mathematical function (stock
differentiates them op by op: last-ulp differences, ~2x less backward work); QuickGELU is
differentiated by re-running its formula under autograd.
"""
from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ._amp import AmpState, no_autocast
from .recipe import attach_recipe

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _gelu_python(x):      # transformers GELUActivation(use_gelu_python=True)
    return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _gelu_new(x):         # transformers NewGELUActivation (GPT-2 "gelu_new"); GELUTanh(use_gelu_tanh_python)
    return 0.5 * x * (1.0 + torch.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * torch.pow(x, 3.0))))


def _gelu_fast(x):        # transformers FastGELUActivation ("gelu_fast")
    return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


def _quick_gelu(x):       # transformers QuickGELUActivation ("quick_gelu")
    return x * torch.sigmoid(1.702 * x)


# kind -> forward function. "gelu"/"gelu_tanh"/"silu" are the fused aten kernels.
ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_tanh": partial(F.gelu, approximate="tanh"),
    "gelu_python": _gelu_python,
    "gelu_new": _gelu_new,
    "gelu_fast": _gelu_fast,
    "quick_gelu": _quick_gelu,
    "silu": F.silu,
}
GELU_KINDS = frozenset(k for k in ACTIVATIONS if "gelu" in k)


def check_kind(kind: str) -> str:
    if kind not in ACTIVATIONS:
        raise ValueError(f"unknown activation kind {kind!r}; expected one of {sorted(ACTIVATIONS)}")
    return kind


def act_forward(kind: str, x: torch.Tensor) -> torch.Tensor:
    return ACTIVATIONS[kind](x)


# Python-formula kinds whose derivative a fused aten kernel computes (the same mathematical function):
# gelu_python is erf-GELU; gelu_new and gelu_fast are tanh-GELU (0.7978845608 = sqrt(2/pi) in fp32).
_FUSED_GRAD = {"gelu": "none", "gelu_python": "none", "gelu_tanh": "tanh", "gelu_new": "tanh", "gelu_fast": "tanh"}


def act_backward(kind: str, dy: torch.Tensor, x: torch.Tensor, amp: AmpState) -> torch.Tensor:
    """d act(x) / dx applied to ``dy`` (vector-Jacobian product).

    Fused kinds use the aten backward kernel: bit-identical to stock for the kernels, and for the
    Python formulas (which stock differentiates op by op) the same derivative with last-ulp
    differences, at a fraction of the cost of re-running the formula under autograd.
    """
    if dy.dtype == x.dtype:
        with no_autocast(dy):
            if kind in _FUSED_GRAD:
                return torch.ops.aten.gelu_backward(dy, x, approximate=_FUSED_GRAD[kind])
            if kind == "silu":
                return torch.ops.aten.silu_backward(dy, x)
    with torch.enable_grad():   # quick_gelu, or dtype changed by autocast: differentiate the formula itself
        xr = x.detach().requires_grad_()
        with amp.restore():
            y = ACTIVATIONS[kind](xr)
        with no_autocast(dy):
            (dx,) = torch.autograd.grad(y, xr, dy)
    return dx


class _ActivationFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kind: str):
        y = act_forward(kind, x)
        amp = AmpState.capture(x)
        ctx.save_for_backward(x)
        ctx.kind, ctx.amp = kind, amp
        attach_recipe(ctx, y, (x,), partial(act_forward, kind), amp)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        (x,) = ctx.saved_tensors
        return act_backward(ctx.kind, dy, x, ctx.amp), None


def lean_activation(x: torch.Tensor, kind: str) -> torch.Tensor:
    """``act(x)`` for ``kind`` in ``ACTIVATIONS``, saving only ``x``."""
    check_kind(kind)
    if not (torch.is_grad_enabled() and x.requires_grad):
        return act_forward(kind, x)
    return _ActivationFunction.apply(x, kind)


def lean_gelu(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """``F.gelu(x, approximate=...)`` saving only ``x``."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"lean_gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return lean_activation(x, "gelu" if approximate == "none" else "gelu_tanh")


def lean_silu(x: torch.Tensor) -> torch.Tensor:
    """``F.silu(x)`` saving only ``x``."""
    return lean_activation(x, "silu")
