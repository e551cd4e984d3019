"""The recipe table: which lean pieces a training run plugs in, each by one line.

A recipe names the pieces (lean layers via ``leanformer.patch_``, an optimizer from ``leanformer.optim`` or
``torch.optim``); the pieces themselves live in their own packages. The stock recipe is the user's explicit
baseline choice: Hugging Face's layers as built and AdamW.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from leanformer import LeanConfig, patch_
from leanformer.optim import APOLLO, APOLLOMini, lean_param_groups


@dataclass(frozen=True)
class Recipe:
    name: str
    patch: bool  # swap in the lean layers with leanformer.patch_
    optimizer: str  # default optimizer (a key of OPTIMIZERS)
    attn_implementation: str = "sdpa"  # Hugging Face's default attention


@dataclass(frozen=True)
class OptimizerEntry:
    cls: type[torch.optim.Optimizer]
    lr: float  # default learning rate (DESIGN.md: lr 3e-3 beat 1e-2 for APOLLO on a 4-layer LLaMA)


# One line per piece. The stock recipe is Hugging Face's model as built (SDPA attention) with AdamW.
RECIPES: dict[str, Recipe] = {
    "lean": Recipe("lean", patch=True, optimizer="apollo-mini"),
    "stock": Recipe("stock", patch=False, optimizer="adamw"),
}
OPTIMIZERS: dict[str, OptimizerEntry] = {
    "apollo-mini": OptimizerEntry(APOLLOMini, lr=3e-3),
    "apollo": OptimizerEntry(APOLLO, lr=3e-3),
    "adamw": OptimizerEntry(torch.optim.AdamW, lr=1e-3),
}


def resolve_optimizer(name: str) -> tuple[str, type[torch.optim.Optimizer]]:
    """(name, optimizer class) of a key of ``OPTIMIZERS``."""
    return name, OPTIMIZERS[name].cls


def _lean_groups(model, params: list) -> list | None:
    """APOLLO-Mini's recommended grouping (``leanformer.optim.lean_param_groups``: embeddings and LM head on
    8-bit AdamW, every other matrix rank 1). bench_optim measured it 0.16 nats better than putting the
    embeddings on the rank-1 path too, at 1.5% of AdamW's state. None when not applicable."""
    if model is None:
        return None
    try:
        groups = lean_param_groups(model)
    except ValueError:  # no embedding to single out: plain routing
        return None
    trainable = {id(p) for p in params}
    groups = [{**g, "params": [p for p in g["params"] if id(p) in trainable]} for g in groups]
    return [g for g in groups if g["params"]]


def build_optimizer(name: str, params, *, lr: float | None, weight_decay: float = 0.0, model=None):
    """Build the named optimizer over ``params`` (grouped by ``model`` where the optimizer has a recommended
    grouping); returns (optimizer, name, lr used)."""
    entry = OPTIMIZERS[name]
    lr = entry.lr if lr is None else lr
    kwargs: dict[str, Any] = {"lr": lr}
    if weight_decay:
        kwargs["weight_decay"] = weight_decay
    params = [p for p in params if p.requires_grad]
    if name == "adamw":
        kwargs.setdefault("weight_decay", 0.0)  # torch's default 1e-2 would differ from the other optimizers
    if name == "apollo":  # rank 64 at most (the paper's small-model setting), never above a matrix side
        kwargs["rank"] = min([64] + [min(p.shape[0], p[0].numel()) for p in params if p.dim() >= 2])
    if name == "apollo-mini":
        params = _lean_groups(model, params) or params
    return entry.cls(params, **kwargs), name, lr


def apply_recipe_(model, recipe: Recipe) -> dict[str, Any]:
    """Swap in the recipe's lean layers, in place. Returns a small summary for logs and checkpoints."""
    if not recipe.patch:
        return {"patched": False}
    return {"patched": True, "report": patch_(model, LeanConfig()).counts()}  # swaps per technique
