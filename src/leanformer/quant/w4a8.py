"""W4A8: int4 group-quantized weights with int8 per-token activations, run on the W8A8 int8 tiles
(``csrc/w4a8_unpack.cpp``; docs/quant.md, "W4A8").

A weight-only int4 layer runs at the bf16 tile rate (``amx_w4.py``), half the int8 rate, which left int4 MiniLM
no faster than bf16 on this CPU. A W4A8 layer keeps the same 4-bit codes and group scales (its checkpoint is as
small as a weight-only int4 one), and on each call re-expresses the weight on a per-channel int8 grid:

    w8 = round_half_even(dequantized_weight * inv),   inv = 127 / max_k |dequantized_weight|   (per channel)

then runs the exact W8A8 product ``((float(xq @ w8.T) * row_scale) * col_scale) + bias`` with
``col_scale = max_k |w| / 127``. ``requantized_weight`` is that definition in torch ops and the reference for
every path: the native unpack equals it bit for bit, the AMX product equals W8A8's exact reference on it, and
the other devices run ``torch._int_mm`` on it (kernels.py caches it: N*K more bytes there). The extra
rounding onto the int8 grid moves each weight by at most half a step of max|w|/127, against up to half a
step of a 4-bit group's range for the int4 codes themselves.

Costs: activations are quantized to int8 per token, as in W8A8 (MiniLM: W4 g64 mean cosine 0.978 -> 0.975
as W4A8, g32 0.984 -> 0.982; docs/quant.md); each call unpacks N*K bytes (~5% of a 576-row product).
"""
from __future__ import annotations

import functools

import torch

from .amx import (TILE_DEPTH, TILE_ROWS, activation_code, amx_int8_available, amx_int8_status, int8_kernel,
                  int8_reference, pack_amx_weight, probe_status, sibling_status, vnni_int8_status)
from .native import native_ops, required_native_ops
from .packing import NIBBLE_OFFSET

__all__ = ["w4a8_shape_ok", "pack_w4a8_codes", "requantized_weight", "w4a8_tables", "unpack_w4a8",
           "amx_w4a8_linear", "run_amx_w4a8", "amx_w4a8_available", "amx_w4a8_status", "probe_layer"]

_NO_BIAS = torch.empty(0)


def w4a8_shape_ok(n: int, k: int, group_size: int) -> bool:
    """True when a (N, K) int4 weight with this group size fits the int8 tile layout."""
    return n > 0 and k > 0 and n % TILE_ROWS == 0 and k % TILE_DEPTH == 0 and group_size % 4 == 0 \
        and k % group_size == 0


def pack_w4a8_codes(nibbles: torch.Tensor) -> torch.Tensor:
    """(N, K) raw nibbles 0..15 -> (N/16, K/64, 16, 32) uint8: byte i of tile (n, k), row r holds the values that
    ``amx.pack_amx_weight`` puts at bytes 2i (low nibble) and 2i + 1 (high) of that tile row."""
    if nibbles.dtype != torch.uint8 or nibbles.dim() != 2:
        raise ValueError(f"pack_w4a8_codes expects (N, K) uint8 nibbles, got {tuple(nibbles.shape)} {nibbles.dtype}")
    n, k = nibbles.shape
    if n % TILE_ROWS or k % TILE_DEPTH:
        raise ValueError(f"pack_w4a8_codes needs N % {TILE_ROWS} == 0 and K % {TILE_DEPTH} == 0, got N={n}, K={k}")
    v = nibbles.reshape(n // TILE_ROWS, TILE_ROWS, k // TILE_DEPTH, TILE_DEPTH // 4, 4)  # [nb, j, kt, r, t]
    v = v.permute(0, 2, 3, 1, 4).reshape(n // TILE_ROWS, k // TILE_DEPTH, TILE_DEPTH // 4, TILE_DEPTH // 2, 2)
    return (v[..., 0] | (v[..., 1] << 4)).contiguous()


def _channel_grid(deq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(col_scale, inv) of the per-channel int8 grid for a (N, K) float32 dequantized weight."""
    absmax = deq.abs().amax(dim=1).clamp_min(1e-8)  # (N,)
    return absmax / 127.0, 127.0 / absmax


def requantized_weight(mod) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(w8 (N, K) int8, col_scale (N,) float32, inv (N,) float32): a W4A8 layer's weight on its int8 grid."""
    deq = mod.dequantized_weight(torch.float32)  # (N, K): (q - z) * s, in float32
    col_scale, inv = _channel_grid(deq)
    w8 = torch.round(deq * inv.unsqueeze(1)).clamp_(-127, 127).to(torch.int8)
    return w8, col_scale, inv


def w4a8_tables(mod) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The native kernel's operands: (codes, zero (G, N), scale (G, N), inv (N,), col_scale (N,)), float32 tables
    of the values ``dequantized_weight(float32)`` uses (signed codes carry their offset of 8 as the zero point)."""
    col_scale, inv = _channel_grid(mod.dequantized_weight(torch.float32))  # the grid only: the kernel rounds
    scale = mod.scale.float().t().contiguous()
    if mod.zero is not None:
        zero = mod.zero.float().t().contiguous()
    else:
        zero = torch.full_like(scale, float(NIBBLE_OFFSET if mod.signed else 0))
    return pack_w4a8_codes(mod.raw_nibbles()), zero, scale, inv.contiguous(), col_scale.contiguous()


def unpack_w4a8(codes, zero, scale, inv, group_size: int) -> torch.Tensor:
    """The int8 weight in ``amx.pack_amx_weight``'s layout, computed from the int4 operands (native op)."""
    return required_native_ops("unpack_w4a8").unpack_w4a8(codes, zero, scale, inv, group_size)


def amx_w4a8_linear(xq, row_scale, tables, group_size: int, bias=None, *, activation: str | None = None,
                    quantize_output: bool = False):
    """As ``amx.amx_int8_linear`` for a W4A8 layer's ``w4a8_tables``: ``(M, N)`` float32, or ``(out, codes, scale,
    finite)`` with ``quantize_output``."""
    ops = required_native_ops("amx_w4a8_linear")
    return run_amx_w4a8(ops, xq, row_scale, tables, group_size, bias, activation_code(activation), quantize_output)


def run_amx_w4a8(ops, xq, row_scale, tables, group_size: int, bias, act: int, quantize_output: bool):
    """``amx_w4a8_linear`` with the native ops and the activation code already resolved (kernels.py's path)."""
    codes, zero, scale, inv, col_scale = tables
    linear = ops.amx_w4a8_linear if amx_int8_available() else ops.vnni_w4a8_linear
    out, q, s, finite = linear(xq.contiguous(), row_scale.contiguous(), codes, zero, scale, inv, group_size,
                               col_scale, _NO_BIAS if bias is None else bias.contiguous(), act, quantize_output)
    return (out, q, s, bool(finite)) if quantize_output else out


def probe_layer(n: int, k: int, group_size: int | None, symmetric: bool, gen: torch.Generator):
    """A W4A8 QuantizedLinear with random codes, scales (and zero points) and bias, for probes and tests."""
    from .modules import QuantizedLinear  # modules -> kernels -> this module
    from .qweight import QuantizedWeight

    groups = 1 if group_size is None else k // group_size
    if symmetric:
        codes = torch.randint(-8, 8, (n, k), generator=gen).to(torch.int8)
        zero = None
    else:
        codes = torch.randint(0, 16, (n, k), generator=gen).to(torch.uint8)
        zero = (torch.rand(n, groups, generator=gen) * 15).half()
    scale = (torch.rand(n, groups, generator=gen) * 0.1 + 0.01).half()
    mod = QuantizedLinear(k, n, bits=4, group_size=group_size, symmetric=symmetric, act_bits=8)
    mod.set_quantized(QuantizedWeight(codes, scale, zero, 4, group_size))
    mod.bias.copy_(torch.randn(n, generator=gen))
    return mod


def _probe_matches_reference() -> bool:
    """Random codes, symmetric and asymmetric, groups of 32 and 64 and per channel, partial row blocks."""
    gen = torch.Generator().manual_seed(0)
    for m, k, n, gs, symmetric in ((1, 64, 16, 32, False), (33, 384, 48, 64, True), (40, 128, 32, None, False)):
        layer = probe_layer(n, k, gs, symmetric, gen)
        gs = k if gs is None else gs
        tables = w4a8_tables(layer)
        w8, col_scale, _ = requantized_weight(layer)
        if not torch.equal(unpack_w4a8(*tables[:4], gs), pack_amx_weight(w8)):
            return False
        x = torch.randint(-127, 128, (m, k), dtype=torch.int8, generator=gen)
        rs = torch.rand(m, 1, generator=gen) + 0.01
        if not torch.equal(amx_w4a8_linear(x, rs, tables, gs, layer.bias),
                           int8_reference(x, rs, w8, col_scale, layer.bias)):
            return False
    return True


@functools.lru_cache(maxsize=None)
def _check() -> tuple[bool, str]:
    kernel = int8_kernel()  # the same build, CPU (and tile grant) as W8A8's kernel
    if kernel is None:
        return False, f"off: no fused int8 kernel here (AMX: {amx_int8_status()}; VNNI: {vnni_int8_status()})"
    ops = native_ops()
    if not hasattr(ops, f"{kernel}_w4a8_linear"):
        return False, "off: an older build without it"
    return probe_status(_probe_matches_reference,
                        f"on (int4 codes unpacked to the {kernel.upper()} int8 kernel per call)",
                        "off: the W4A8 product did not match the reference on this CPU")


def amx_w4a8_available() -> bool:
    """True when the W4A8 AMX path runs here and matched the exact reference on the first-use probe."""
    return _check()[0]


def amx_w4a8_status(build: bool = True) -> str:
    """One line for ``leanformer env``; ``build=False`` does not compile the native kernels to find out."""
    return sibling_status(_check, build, "W4A8 forward", (amx_int8_status, vnni_int8_status))
