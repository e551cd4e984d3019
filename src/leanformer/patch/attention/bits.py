"""Row-wise bit-packing on top of ``leanformer.ops.bitpack``: each row padded to a whole byte, so any slice
of rows unpacks alone (the attention backward unpacks one (batch, row-chunk) at a time)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from leanformer.ops.bitpack import pack_bits, unpack_bits


def pack_rows(mask: torch.Tensor) -> torch.Tensor:
    """(..., n) bool -> (..., ceil(n / 8)) uint8."""
    if mask.dtype != torch.bool:
        raise TypeError(f"pack_rows expects a bool tensor, got {mask.dtype}")
    pad = (-mask.shape[-1]) % 8
    padded = F.pad(mask, (0, pad)) if pad else mask
    return pack_bits(padded).view(*mask.shape[:-1], padded.shape[-1] // 8)


def unpack_rows(packed: torch.Tensor, n: int) -> torch.Tensor:
    """(..., ceil(n / 8)) uint8 -> (..., n) bool."""
    shape = (*packed.shape[:-1], packed.shape[-1] * 8)
    return unpack_bits(packed.reshape(-1), torch.Size(shape))[..., :n]
