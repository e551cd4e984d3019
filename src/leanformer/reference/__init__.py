"""leanformer.reference: slow, obviously correct eager code every fast path is tested against.

Imported only by tests and benchmarks. Each function is a textbook formula differentiated by autograd.
"""
from __future__ import annotations

from .activations import ACTIVATION_REFS, gated_ref, gelu_erf_ref, gelu_tanh_ref, silu_ref
from .dropout import dropout_ref, softmax_dropout_matmul_ref
from .linear import linear_ref
from .norm import layer_norm_ref, rms_norm_ref

__all__ = ["ACTIVATION_REFS", "dropout_ref", "gated_ref", "gelu_erf_ref", "gelu_tanh_ref", "layer_norm_ref",
           "linear_ref", "rms_norm_ref", "silu_ref", "softmax_dropout_matmul_ref"]
