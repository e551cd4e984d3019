"""``LeanGELU`` / ``LeanSiLU``: activations that save only their pre-activation.

``from_module`` recognises each implementation and picks the ``kind`` whose formula it computes
bit for bit (checked on a probe grid, so a changed upstream class is refused rather than mis-swapped):

============================================================  ==============
module                                                        kind
============================================================  ==============
``nn.GELU()``, transformers ``GELUActivation`` ("gelu")       ``gelu`` (erf)
``nn.GELU('tanh')``, ``GELUTanh``/``PytorchGELUTanh``         ``gelu_tanh``
``GELUActivation(use_gelu_python=True)`` ("gelu_python")      ``gelu_python``
``NewGELUActivation`` ("gelu_new", GPT-2), python ``GELUTanh``  ``gelu_new``
``FastGELUActivation`` ("gelu_fast")                          ``gelu_fast``
``QuickGELUActivation`` ("quick_gelu")                        ``quick_gelu``
``nn.SiLU``, transformers ``SiLUActivation`` ("silu")         ``silu``
============================================================  ==============
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import ACTIVATIONS, lean_activation
from ..ops.approx import lean_gelu_from_output
from ._share import probe, reject, type_name

_HF_CLASS_KIND = {
    "NewGELUActivation": "gelu_new",
    "FastGELUActivation": "gelu_fast",
    "QuickGELUActivation": "quick_gelu",
    "SiLUActivation": "silu",
}


def activation_kind(m: nn.Module) -> str | None:
    """The ``ops.ACTIVATIONS`` kind ``m`` implements exactly, or None if unrecognised."""
    if isinstance(m, nn.GELU):
        return "gelu" if m.approximate == "none" else "gelu_tanh"
    if isinstance(m, nn.SiLU):
        return "silu"
    name = type_name(m)
    if not name.startswith("transformers."):
        return None
    cls = type(m).__name__
    if cls in _HF_CLASS_KIND:
        return _HF_CLASS_KIND[cls]
    act = getattr(m, "act", None)
    if cls == "GELUActivation":
        return "gelu" if act is F.gelu else "gelu_python"
    if cls in ("GELUTanh", "PytorchGELUTanh"):
        if isinstance(act, functools.partial) and act.func is F.gelu and act.keywords == {"approximate": "tanh"}:
            return "gelu_tanh"
        return "gelu_new"   # the python tanh formula: x * 0.5 * (...) equals 0.5 * x * (...) exactly
    return None


class LeanGELU(nn.Module):
    """A GELU variant saving only its input (exact). ``approximate_from_output=True``: Tempo-style,
    saves the output + a 1-bit branch mask and inverts the GELU in backward (approximate)."""

    def __init__(self, kind: str = "gelu", *, approximate_from_output: bool = False):
        super().__init__()
        if kind not in ACTIVATIONS or kind == "silu":
            raise ValueError(f"LeanGELU: kind must be a GELU kind, got {kind!r}")
        self.kind, self.approximate_from_output = kind, approximate_from_output

    @classmethod
    def from_module(cls, m: nn.Module, *, approximate_from_output: bool = False) -> "LeanGELU":
        kind = activation_kind(m)
        if kind is None or kind == "silu":
            reject(cls, m, "nn.GELU or a transformers GELU activation (gelu, gelu_new, gelu_pytorch_tanh, ...)")
        probe(m, kind, ACTIVATIONS[kind])
        new = cls(kind, approximate_from_output=approximate_from_output)
        new.train(m.training)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.approximate_from_output:
            return lean_gelu_from_output(x, self.kind)
        return lean_activation(x, self.kind)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}" + (", approximate_from_output=True" if self.approximate_from_output else "")


class LeanSiLU(nn.Module):
    """``F.silu`` saving only its input."""

    kind = "silu"

    @classmethod
    def from_module(cls, m: nn.Module) -> "LeanSiLU":
        if activation_kind(m) != "silu":
            reject(cls, m, "nn.SiLU or transformers SiLUActivation")
        probe(m, "silu", ACTIVATIONS["silu"])
        new = cls()
        new.train(m.training)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return lean_activation(x, "silu")
