"""Optimizer state accounting: bytes actually held by any optimizer's state, per parameter group.

Works for torch.optim optimizers, ours, apollo-torch (which keeps its projection inside a projector object) and
torchao's low-bit optimizers (tensor subclasses: their inner tensors are counted). Bytes are counted per
unique storage, so a small view that keeps a large buffer alive counts the whole buffer (what memory really holds).
"""
from __future__ import annotations

from typing import Iterator

import torch


def _tensors(obj, seen: set[int]) -> Iterator[torch.Tensor]:
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        if type(obj) is not torch.Tensor and hasattr(obj, "__tensor_flatten__"):
            names, _ = obj.__tensor_flatten__()  # tensor subclass (DTensor, torchao state): its inner tensors
            for name in names:
                yield from _tensors(getattr(obj, name), seen)
        else:
            yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _tensors(value, seen)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _tensors(value, seen)
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        yield from _tensors(vars(obj), seen)


def _storage_bytes(tensors, counted: set) -> int:
    total = 0
    for t in tensors:
        storage = t.untyped_storage()
        key = (t.device, storage.data_ptr()) if storage.data_ptr() else ("empty", id(t))
        if key not in counted:
            counted.add(key)
            total += storage.nbytes()
    return total


def state_bytes(optimizer: torch.optim.Optimizer) -> dict:
    """Bytes of state per parameter group and in total, with bytes per parameter.

    Returns ``{"groups": [{"group", "lowrank", "params", "state_bytes", "bytes_per_param"}, ...],
    "params", "state_bytes", "bytes_per_param"}``. ``params`` counts elements of the (global) parameters;
    under FSDP2 ``state_bytes`` is this rank's share. Before the first step the state is empty (0 bytes).
    """
    counted: set = set()
    groups, n_total, b_total = [], 0, 0
    for index, group in enumerate(optimizer.param_groups):
        n = sum(p.numel() for p in group["params"])
        objs = [optimizer.state[p] for p in group["params"] if p in optimizer.state]
        b = _storage_bytes(_tensors(objs, set()), counted)
        lowrank = group.get("lowrank", "rank" in group)
        groups.append({"group": index, "lowrank": lowrank, "params": n, "state_bytes": b,
                       "bytes_per_param": b / n if n else 0.0})
        n_total, b_total = n_total + n, b_total + b
    return {"groups": groups, "params": n_total, "state_bytes": b_total,
            "bytes_per_param": b_total / n_total if n_total else 0.0}
