"""The paper's parameter grouping: low-rank only on attention and MLP matrices.

The official pretraining script puts ``nn.Linear`` weights whose module name contains ``attn`` or ``mlp`` in the
low-rank group and everything else (embeddings, LM head, norms, biases) on AdamW. GPT-2's ``Conv1D`` (a Linear
with a transposed weight) counts as a Linear here.
"""
from __future__ import annotations

import torch
from torch import nn

_TARGETS = ("attn", "mlp")


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def paper_param_groups(model: nn.Module, targets: tuple[str, ...] = _TARGETS, **lowrank_kwargs) -> list[dict]:
    """Two groups: ``{"params": attention/MLP weights, "lowrank": True, **lowrank_kwargs}`` and
    ``{"params": the rest, "lowrank": False}``. Frozen parameters are left out. Raises if nothing matches."""
    low: list[torch.Tensor] = []
    seen: set[int] = set()
    for name, module in model.named_modules():
        if _is_linear(module) and any(t in name for t in targets):
            weight = module.weight
            if weight.requires_grad and id(weight) not in seen:
                seen.add(id(weight))
                low.append(weight)
    if not low:
        raise ValueError(f"paper_param_groups: no Linear module whose name contains one of {targets}")
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in seen]
    return [{"params": low, "lowrank": True, **lowrank_kwargs}, {"params": rest, "lowrank": False}]
