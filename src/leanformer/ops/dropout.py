"""Dropout that owns its mask at 1 bit per element.

``F.dropout`` on CPU saves the scaled noise in the input dtype (4 bytes/element in fp32); CUDA's fused
kernel saves a 1-byte bool mask. This Function draws the mask with exactly the same random calls and
arithmetic as ``F.dropout`` on that device (so outputs and RNG consumption are bit-identical to stock,
and Hugging Face gradient checkpointing, which restores the RNG state, redraws the same mask), then
keeps the mask bit-packed (``bitpack.py``): n/8 bytes. Backward multiplies by the unpacked mask with the
same arithmetic as stock.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from ._amp import no_autocast
from .bitpack import pack_bits, unpack_bits

# Devices where at::dropout takes the fused native_dropout kernel (ATen Dropout.cpp is_fused_kernel_acceptable).
_FUSED_DEVICES = frozenset({"cuda", "xpu", "lazy", "privateuseone"})


def dropout_with_mask(x: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(output, bool keep-mask) drawn exactly as ``F.dropout(x, p, training=True)`` draws them."""
    if p == 1.0:
        return x * torch.zeros((), dtype=x.dtype, device=x.device), torch.zeros(x.shape, dtype=torch.bool,
                                                                                 device=x.device)
    if x.device.type in _FUSED_DEVICES:
        out, keep = torch.native_dropout(x, p, True)
        return out, keep
    noise = torch.empty_like(x).bernoulli_(1 - p)      # (same shape as x) 0/1, same RNG calls as ATen
    keep = noise.bool()
    return x * noise.div_(1 - p), keep


def _apply_mask(dy: torch.Tensor, keep: torch.Tensor, p: float, fused: bool) -> torch.Tensor:
    if p == 1.0:
        return dy * torch.zeros((), dtype=dy.dtype, device=dy.device)
    if fused:
        return torch.ops.aten.native_dropout_backward(dy, keep, 1.0 / (1.0 - p))
    return dy * keep.to(dy.dtype).div_(1 - p)


class _DropoutFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, p: float):
        out, keep = dropout_with_mask(x, p)
        ctx.save_for_backward(pack_bits(keep))
        ctx.p, ctx.shape, ctx.fused = p, x.shape, x.device.type in _FUSED_DEVICES
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        (packed,) = ctx.saved_tensors
        keep = unpack_bits(packed, ctx.shape)
        with no_autocast(dy):
            return _apply_mask(dy, keep, ctx.p, ctx.fused), None


def lean_dropout(x: torch.Tensor, p: float = 0.5, training: bool = True) -> torch.Tensor:
    """``F.dropout(x, p, training)`` keeping a 1-bit mask for backward."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"lean_dropout: p must be in [0, 1], got {p}")
    if not training or p == 0.0 or x.numel() == 0:
        return x
    if not (torch.is_grad_enabled() and x.requires_grad):
        return dropout_with_mask(x, p)[0]
    return _DropoutFunction.apply(x, p)
