"""Pack a boolean mask into 1 bit per element (uint8 storage, little-endian bit order) and back."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _shifts(device) -> torch.Tensor:
    return torch.arange(8, dtype=torch.uint8, device=device)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """(any shape) bool/0-1 -> (ceil(numel / 8),) uint8; bit i of byte j is element 8*j + i."""
    flat = mask.reshape(-1).to(torch.uint8)                      # (n,)
    pad = (-flat.numel()) % 8
    if pad:
        flat = F.pad(flat, (0, pad))
    bits = flat.view(-1, 8) << _shifts(mask.device)             # (n/8, 8), disjoint bits
    return bits.sum(-1, dtype=torch.uint8)                      # (n/8,) OR of the 8 bits


def unpack_bits(packed: torch.Tensor, shape: torch.Size, dtype: torch.dtype = torch.bool) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: (ceil(n / 8),) uint8 -> ``shape`` tensor of ``dtype`` (0/1)."""
    n = 1
    for s in shape:
        n *= s
    if packed.dtype != torch.uint8 or packed.numel() != (n + 7) // 8:
        raise ValueError(f"unpack_bits: expected {(n + 7) // 8} uint8 bytes for shape {tuple(shape)}, "
                         f"got {packed.numel()} {packed.dtype}")
    bits = (packed.unsqueeze(-1) >> _shifts(packed.device)) & 1   # (n/8, 8)
    return bits.reshape(-1)[:n].view(shape).to(dtype)
