"""``LeanDropout``: ``nn.Dropout`` keeping a 1-bit mask (same random draws and output as stock)."""
from __future__ import annotations

import torch
from torch import nn

from ..ops import lean_dropout
from ._share import reject


class LeanDropout(nn.Module):
    """Output equals ``nn.Dropout(p)`` for the same RNG state; ``inplace`` is accepted but the lean
    version always returns a new tensor (an in-place dropout would clobber a tensor others saved)."""

    def __init__(self, p: float = 0.5, inplace: bool = False):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"LeanDropout: p must be in [0, 1], got {p}")
        self.p, self.inplace = float(p), inplace

    @classmethod
    def from_module(cls, m: nn.Module) -> "LeanDropout":
        if type(m) is not nn.Dropout:   # Dropout1d/2d/AlphaDropout draw other masks
            reject(cls, m, "torch.nn.Dropout")
        new = cls(m.p, m.inplace)
        new.train(m.training)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return lean_dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}, mask=1 bit/element"
