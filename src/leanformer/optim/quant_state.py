"""8-bit AdamW moments for the parameters off the low-rank path (embeddings, LM head).

Blockwise linear quantization in the spirit of 8-bit Adam (Dettmers et al., arXiv 2110.02861), simplified:
blocks of up to 256 consecutive elements of one row (dim 0 of a matrix; a 1-D tensor is one row), each with
one fp32 scale. Blocks never straddle rows, so FSDP2, which shards dim 0, quantizes each shard exactly as a
single process would; a row is split into equal blocks (a row of 300 -> 2 x 150), so padding stays small. The first moment is stored as int8 with the
block's absmax (round to nearest). The second moment is stored as uint8 in the sqrt domain (sqrt(v) / block max,
round to nearest, never rounded down to 0 unless v is 0), which keeps 16 bits of dynamic range for v and
bounds the update of a small-v element by m / (one quantization step). Departure from bitsandbytes/torchao:
linear codes instead of a dynamic (tree) map; 2.03 bytes of state per parameter instead of 8.
"""
from __future__ import annotations

import math

import torch

BLOCK = 256


def _rows(x: torch.Tensor) -> int:
    return x.shape[0] if x.dim() >= 2 else 1


def block_shape(x: torch.Tensor) -> tuple[int, int]:
    """(number of blocks, block length) of the moments of ``x``."""
    rows = _rows(x)
    length = x.numel() // rows if rows else 0
    if x.dim() < 2:  # one row: fixed blocks, padded at the end
        return math.ceil(length / BLOCK), BLOCK
    per_row = max(1, math.ceil(length / BLOCK))
    return rows * per_row, math.ceil(length / per_row)


def _blocks(x: torch.Tensor) -> torch.Tensor:
    """fp32 copy, each row padded to whole blocks: (nblocks, block length)."""
    nblocks, blen = block_shape(x)
    rows = x.float().reshape(_rows(x), -1)  # (R, L)
    pad = nblocks // rows.shape[0] * blen - rows.shape[1]
    if pad:
        rows = torch.cat([rows, rows.new_zeros(rows.shape[0], pad)], dim=1)
    return rows.reshape(nblocks, blen)


def _unblock(b: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_blocks`: (nblocks, block length) -> ``like``'s shape."""
    length = like.numel() // _rows(like)
    return b.reshape(_rows(like), -1)[:, :length].reshape(like.shape)


def quantize_signed_(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor) -> None:
    """x (any shape, fp32) -> codes int8 (nblocks, block length), scales fp32 (nblocks,), in place."""
    b = _blocks(x)
    absmax = b.abs().amax(dim=1)  # (nblocks,)
    scales.copy_(absmax)
    codes.copy_(torch.round(b / absmax.clamp_min(1e-30).unsqueeze(1) * 127).to(torch.int8))


def dequantize_signed(codes: torch.Tensor, scales: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return _unblock(codes.float() * (scales.unsqueeze(1) / 127), like)


def quantize_sqrt_(v: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor) -> None:
    """v >= 0 -> codes uint8 of sqrt(v) / block max, scales = block max of sqrt(v), in place."""
    r = _blocks(v).sqrt()
    top = r.amax(dim=1)
    scales.copy_(top)
    q = torch.round(r / top.clamp_min(1e-30).unsqueeze(1) * 255)
    q = torch.where(r > 0, q.clamp_min(1), q)  # a nonzero v never becomes 0 (that would blow up m / sqrt(v))
    codes.copy_(q.to(torch.uint8))


def dequantize_sqrt(codes: torch.Tensor, scales: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    r = codes.float() * (scales.unsqueeze(1) / 255)
    return _unblock(r.square(), like)


def init_state(state: dict, local: torch.Tensor) -> None:
    (nb, blen), dev = block_shape(local), local.device
    state["exp_avg_q"] = torch.zeros((nb, blen), dtype=torch.int8, device=dev)
    state["exp_avg_scale"] = torch.zeros(nb, dtype=torch.float32, device=dev)
    state["exp_avg_sq_q"] = torch.zeros((nb, blen), dtype=torch.uint8, device=dev)
    state["exp_avg_sq_scale"] = torch.zeros(nb, dtype=torch.float32, device=dev)


def adamw_8bit_step(param: torch.Tensor, grad: torch.Tensor, state: dict, *, step_size: float, lr: float,
                    beta1: float, beta2: float, eps: float, weight_decay: float) -> None:
    """One AdamW step (official APOLLO code's form) with the moments dequantized, updated, requantized."""
    g = grad.float()
    m = dequantize_signed(state["exp_avg_q"], state["exp_avg_scale"], param)
    v = dequantize_sqrt(state["exp_avg_sq_q"], state["exp_avg_sq_scale"], param)
    m.mul_(beta1).add_(g, alpha=1 - beta1)
    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    param.add_(m / v.sqrt().add_(eps), alpha=-step_size)
    if weight_decay != 0:
        param.add_(param, alpha=-lr * weight_decay)
    quantize_signed_(m, state["exp_avg_q"], state["exp_avg_scale"])
    quantize_sqrt_(v, state["exp_avg_sq_q"], state["exp_avg_sq_scale"])
