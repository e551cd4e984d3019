"""What this CPU can do, as torch reports it: one cached probe serves the kernel rules in kernels.py and onednn.py."""
from __future__ import annotations

import functools

import torch

__all__ = ["cpu_has"]


@functools.lru_cache(maxsize=None)
def cpu_has(*features: str) -> bool:
    """True when torch reports any of ``features`` on this CPU, e.g. ``cpu_has("avx512_bf16", "amx_tile")``.

    Each name maps to a ``torch.cpu._is_<name>_supported`` probe; a probe this torch build lacks counts as False.
    """
    cpu = getattr(torch, "cpu", None)
    return any(bool(getattr(cpu, f"_is_{name}_supported", lambda: False)()) for name in features)
