"""Parameter groupings: the paper's (low-rank only on attention and MLP matrices) and ours (every matrix
low-rank except the embeddings and LM head, which keep 8-bit AdamW moments).

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


def _embedding_weights(model: nn.Module) -> list[torch.Tensor]:
    """Input embeddings (every ``nn.Embedding``) and the output head (``get_output_embeddings()`` when the model
    has it), deduplicated (tied weights count once)."""
    found = [m.weight for m in model.modules() if isinstance(m, nn.Embedding)]
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and getattr(head, "weight", None) is not None:
        found.append(head.weight)
    out, seen = [], set()
    for w in found:
        if w.requires_grad and id(w) not in seen:
            seen.add(id(w))
            out.append(w)
    return out


def lean_param_groups(model: nn.Module, **lowrank_kwargs) -> list[dict]:
    """Every matrix on the low-rank path except the embeddings and the LM head, which use AdamW with 8-bit
    moments (``moments_8bit=True``); 1-D parameters use plain AdamW. Groups: ``[{matrices and 1-D params,
    **lowrank_kwargs}, {embeddings + head, "lowrank": False, "moments_8bit": True}]``."""
    emb = _embedding_weights(model)
    if not emb:
        raise ValueError("lean_param_groups: the model has no nn.Embedding and no output embeddings")
    ids = {id(w) for w in emb}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    return [{"params": rest, **lowrank_kwargs}, {"params": emb, "lowrank": False, "moments_8bit": True}]
