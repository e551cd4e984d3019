"""``LeanGatedMLP``: LLaMA-style ``down(act(gate(x)) * up(x))`` keeping only ``g`` and ``u``."""
from __future__ import annotations

import torch
from torch import nn

from ..ops import lean_gated_act
from ._share import reject
from .activation import activation_kind
from .linear import LeanLinear


class LeanGatedMLP(nn.Module):
    """Same submodule names (``gate_proj``, ``up_proj``, ``down_proj``) and parameters as the original, so
    ``state_dict`` keys are unchanged; ``act_fn`` is kept for reference but the product is fused."""

    def __init__(self, gate_proj: LeanLinear, up_proj: LeanLinear, down_proj: LeanLinear, kind: str = "silu"):
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj, self.kind = gate_proj, up_proj, down_proj, kind

    @classmethod
    def from_module(cls, m: nn.Module) -> "LeanGatedMLP":
        parts = [getattr(m, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
        act = getattr(m, "act_fn", None)
        if any(not isinstance(p, nn.Linear) for p in parts) or not isinstance(act, nn.Module):
            reject(cls, m, "a gated MLP with nn.Linear gate_proj/up_proj/down_proj and an act_fn module")
        kind = activation_kind(act)
        if kind is None:
            reject(cls, act, "a SiLU or GELU act_fn")
        new = cls(*(LeanLinear.from_module(p) for p in parts), kind)
        for attr in ("config", "hidden_size", "intermediate_size"):   # HF code may read these
            if hasattr(m, attr):
                object.__setattr__(new, attr, getattr(m, attr))
        new.train(m.training)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(lean_gated_act(self.gate_proj(x), self.up_proj(x), self.kind))

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, saves gate and up outputs only"
