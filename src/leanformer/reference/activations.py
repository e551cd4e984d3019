"""Plain activation formulas (textbook forms, not the library kernels) and the gated product."""
from __future__ import annotations

import math

import torch


def gelu_erf_ref(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def gelu_tanh_ref(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def gelu_fast_ref(x):
    return 0.5 * x * (1.0 + torch.tanh(0.7978845608 * x * (1.0 + 0.044715 * x * x)))


def quick_gelu_ref(x):
    return x / (1.0 + torch.exp(-1.702 * x))


def silu_ref(x):
    return x / (1.0 + torch.exp(-x))


# ops.ACTIVATIONS kind -> reference formula
ACTIVATION_REFS = {
    "gelu": gelu_erf_ref, "gelu_python": gelu_erf_ref,
    "gelu_tanh": gelu_tanh_ref, "gelu_new": gelu_tanh_ref,
    "gelu_fast": gelu_fast_ref, "quick_gelu": quick_gelu_ref, "silu": silu_ref,
}


def gated_ref(g, u, kind="silu"):
    return ACTIVATION_REFS[kind](g) * u
