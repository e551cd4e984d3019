"""Storage layouts for quantization codes: what goes into a safetensors file.

Layout (research note, "Storage"; the file format never holds a kernel-specific layout):
* ``bits <= 4``: offset-binary nibbles, two per byte, ``uint8 (N, ceil(K/2))``; column ``2j`` in the low
  nibble, ``2j+1`` in the high nibble; an odd ``K`` pads the last high nibble with 0.
  Signed codes are stored as ``code + 8`` (so -8..7 -> 0..15); unsigned codes (asymmetric / codebook
  indices) as they are. 2- and 3-bit codes also use nibbles (simple, and still >= 2x smaller than int8).
* ``bits 5..8``: one code per byte, ``int8`` (signed) or ``uint8`` (unsigned), unchanged.
"""
from __future__ import annotations

import torch

__all__ = ["pack_codes", "unpack_codes", "unpack_nibbles_to", "packed_shape", "NIBBLE_OFFSET", "group_planar",
           "unpack_group_planar_to"]

NIBBLE_OFFSET = 8  # signed 4-bit code c is stored as c + 8


def packed_shape(n: int, k: int, bits: int) -> tuple[int, int]:
    return (n, (k + 1) // 2) if bits <= 4 else (n, k)


def pack_codes(codes: torch.Tensor, bits: int, *, signed: bool) -> torch.Tensor:
    """``codes`` (N, K) int8/uint8 -> storage tensor (see module docstring)."""
    if codes.dim() != 2:
        raise ValueError(f"pack_codes expects 2-D codes (N, K), got shape {tuple(codes.shape)}")
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be in 2..8, got {bits}")
    if bits > 4:
        return codes.to(torch.int8 if signed else torch.uint8).contiguous()
    lo_code, hi_code = (-8, 7) if signed else (0, 15)
    if codes.numel() and (int(codes.min()) < lo_code or int(codes.max()) > hi_code):
        raise ValueError(f"{bits}-bit codes out of the nibble range [{lo_code}, {hi_code}]")
    nib = codes.to(torch.int16) + (NIBBLE_OFFSET if signed else 0)  # (N, K) in 0..15
    if nib.shape[1] % 2:  # odd K: pad one zero nibble
        nib = torch.nn.functional.pad(nib, (0, 1))
    nib = nib.to(torch.uint8)
    return (nib[:, 0::2] | (nib[:, 1::2] << 4)).contiguous()  # (N, ceil(K/2))


def unpack_codes(packed: torch.Tensor, k: int, bits: int, *, signed: bool) -> torch.Tensor:
    """Inverse of ``pack_codes``: storage tensor -> codes (N, K), int8 if ``signed`` else uint8."""
    if bits > 4:
        return packed.to(torch.int8 if signed else torch.uint8)
    n = packed.shape[0]
    out = torch.stack((packed & 0xF, packed >> 4), dim=-1).view(n, -1)[:, :k]  # (N, K) uint8 in 0..15
    if signed:
        return (out.to(torch.int8) - NIBBLE_OFFSET).contiguous()
    return out.contiguous()


def unpack_nibbles_to(packed: torch.Tensor, k: int, dtype: torch.dtype) -> torch.Tensor:
    """Nibbles (N, ceil(K/2)) -> their raw values 0..15 as ``dtype`` (N, K), written straight into one float
    buffer (two strided casts: measured faster on CPU than stack + cast). Signed codes are these minus 8."""
    n, half = packed.shape
    out = torch.empty(n, half, 2, dtype=dtype, device=packed.device)  # (N, K/2, 2)
    out[..., 0] = packed & 0xF
    out[..., 1] = packed >> 4
    out = out.view(n, 2 * half)
    return out if 2 * half == k else out[:, :k].contiguous()


# ---------------------------------------------------------------------------- in-memory kernel layout
# The file layout above interleaves neighbouring columns in a byte, so unpacking writes every other float
# (stride-2 stores, not vectorised: ~0.45 ms per 1536x384 weight here). This second layout, built in memory
# only, pairs column j of a group with column j + gs/2: each nibble plane unpacks with contiguous stores,
# ~3-4x faster (measured, 1 thread). Same number of bytes; never written to disk.

def group_planar(nibbles: torch.Tensor, group_size: int) -> torch.Tensor:
    """Raw nibbles (N, K) uint8 in 0..15 -> (N, G, gs/2) uint8: low nibble = column j, high = j + gs/2."""
    n, k = nibbles.shape
    if group_size % 2 or k % group_size:
        raise ValueError(f"group-planar layout needs an even group size dividing K, got {group_size} for K={k}")
    halves = nibbles.view(n, k // group_size, 2, group_size // 2)  # (N, G, 2, gs/2)
    return (halves[:, :, 0] | (halves[:, :, 1] << 4)).contiguous()


def unpack_group_planar_to(planar: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Inverse of ``group_planar`` straight into a fresh ``dtype`` tensor (N, G, gs) of raw values 0..15."""
    n, g, half = planar.shape
    out = torch.empty(n, g, 2, half, dtype=dtype, device=planar.device)  # (N, G, 2, gs/2)
    out[:, :, 0] = planar & 0xF
    out[:, :, 1] = planar >> 4
    return out.view(n, g, 2 * half)
