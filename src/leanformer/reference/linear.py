"""Plain projections: ``x @ W^T + b`` (nn.Linear layout) and ``x @ W + b`` (HF Conv1D layout)."""
from __future__ import annotations


def linear_ref(x, weight, bias=None, transposed=False):
    y = x @ (weight if transposed else weight.t())
    return y if bias is None else y + bias
