"""Pack a boolean mask into 1 bit per element (uint8 storage, little-endian bit order) and back.

CPU tensors go through ``numpy.packbits`` / ``unpackbits`` (C loops, ~100x faster than composing torch
ops on this machine); other devices, and tracing under ``torch.compile``, use the torch formulation.
Both produce the same bytes (tested).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def _use_numpy(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" and not torch.compiler.is_compiling()


def _shifts(device) -> torch.Tensor:
    return torch.arange(8, dtype=torch.uint8, device=device)


def pack_bits_torch(mask: torch.Tensor) -> torch.Tensor:
    flat = mask.reshape(-1).to(torch.uint8)                      # (n,)
    pad = (-flat.numel()) % 8
    if pad:
        flat = F.pad(flat, (0, pad))
    bits = flat.view(-1, 8) << _shifts(mask.device)             # (n/8, 8), disjoint bits
    return bits.sum(-1, dtype=torch.uint8)                      # (n/8,) OR of the 8 bits


def unpack_bits_torch(packed: torch.Tensor, n: int) -> torch.Tensor:
    bits = (packed.unsqueeze(-1) >> _shifts(packed.device)) & 1   # (n/8, 8)
    return bits.reshape(-1)[:n].bool()


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """(any shape) bool/0-1 -> (ceil(numel / 8),) uint8; bit i of byte j is element 8*j + i."""
    if _use_numpy(mask):
        flat = mask.detach().reshape(-1).to(torch.bool).numpy()
        return torch.from_numpy(np.packbits(flat, bitorder="little"))
    return pack_bits_torch(mask)


def unpack_bits(packed: torch.Tensor, shape, dtype: torch.dtype = torch.bool) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: (ceil(n / 8),) uint8 -> ``shape`` tensor of ``dtype`` (0/1)."""
    n = math.prod(shape)
    if packed.dtype != torch.uint8 or packed.numel() != (n + 7) // 8:
        raise ValueError(f"unpack_bits: expected {(n + 7) // 8} uint8 bytes for shape {tuple(shape)}, "
                         f"got {packed.numel()} {packed.dtype}")
    if _use_numpy(packed):
        flat = torch.from_numpy(np.unpackbits(packed.numpy(), count=n, bitorder="little")).view(torch.bool)
    else:
        flat = unpack_bits_torch(packed, n)
    return flat.view(shape).to(dtype)
