"""``LeanLinear``: drop-in for ``nn.Linear`` and Hugging Face ``Conv1D`` over ``ops.lean_linear``."""
from __future__ import annotations

import torch
from torch import nn

from ..ops import lean_linear
from ._share import reject, type_name


class LeanLinear(nn.Module):
    """Same parameters and output as the wrapped projection; saves its input's recipe when it has one.

    ``transposed=True`` is the Conv1D layout (weight (in, out)), computed with ``addmm`` like Conv1D.
    """

    def __init__(self, weight: nn.Parameter, bias: nn.Parameter | None = None, *, transposed: bool = False):
        super().__init__()
        self.register_parameter("weight", weight)   # the caller's Parameter objects, not copies
        self.register_parameter("bias", bias)
        self.transposed = transposed
        shape = tuple(weight.shape)
        self.in_features, self.out_features = shape if transposed else shape[::-1]
        if transposed:
            self.nf = self.out_features        # Conv1D attribute some HF code reads

    @classmethod
    def from_module(cls, m: nn.Module) -> "LeanLinear":
        if isinstance(m, nn.Linear):
            transposed = False
        elif type(m).__name__ == "Conv1D" and type_name(m).startswith("transformers.") and m.weight.dim() == 2:
            transposed = True
        else:
            reject(cls, m, "torch.nn.Linear or transformers Conv1D")
        new = cls(m.weight, m.bias, transposed=transposed)   # assigns the same Parameter objects
        new.train(m.training)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return lean_linear(x, self.weight, self.bias, transposed=self.transposed)

    def extra_repr(self) -> str:
        layout = "conv1d (in, out)" if self.transposed else "linear (out, in)"
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, {layout}")
