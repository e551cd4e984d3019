"""The memory behind a tensor: which storages it keeps alive, and how many bytes they hold.

Plain tensors map to their ``untyped_storage()`` (all views of one storage share a key). Wrapper tensor subclasses
(torchao's quantized weights, ``DTensor``) have no storage of their own: they are flattened with
``__tensor_flatten__`` into the plain tensors that really hold the bytes.
"""
from __future__ import annotations

import torch

Key = tuple[str, int]


def storages(t: torch.Tensor) -> list[tuple[Key, int]]:
    """``[(key, nbytes)]`` for every storage ``t`` keeps alive; keys are equal exactly when storages are shared."""
    if hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return [s for name in names for s in storages(getattr(t, name))]
    if t.layout != torch.strided or t.device.type == "meta":
        return []  # sparse / nested / meta: no plain storage to count
    try:
        storage = t.untyped_storage()
    except (RuntimeError, NotImplementedError):  # an unusual subclass: count the tensor itself
        return [(("tensor", id(t)), t.numel() * t.element_size())]
    return [((t.device.type, storage.data_ptr()), storage.nbytes())]


def unique_bytes(tensors) -> int:
    """Bytes of all storages behind ``tensors``, each storage once."""
    seen: dict[Key, int] = {}
    for t in tensors:
        seen.update(storages(t))
    return sum(seen.values())
