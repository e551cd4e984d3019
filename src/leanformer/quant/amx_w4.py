"""Weight-only int4 layers on Intel AMX tiles: bf16 activations x int4 codes unpacked in cache, float32 sums
(leanformer's own kernel, ``csrc/amx_w4.cpp``; docs/quant.md, "The AMX int4 kernel").

The unpacked weights are exactly the dequant path's bf16 weights; the products of bf16 values are exact in
float32, so the output differs from float32 ``F.linear`` on those values only by the order of the float32 sum,
within ``w4_reference``'s bound - checked on this CPU before first use (``_probe_w4_within_bound``), with the
kernel switched off if it is ever exceeded. It shares the W8A8 kernel's build, tile grant and CPU check
(``amx.amx_int8_available``).
"""
from __future__ import annotations

import functools

import torch

from .amx import TILE_ROWS, amx_int8_available, amx_int8_status, kernel_ops, probe_status, sibling_status
from .native import native_ops

__all__ = ["PAIR_DEPTH", "amx_w4_available", "amx_w4_status", "amx_w4_shape_ok", "pack_amx_int4", "amx_w4_linear",
           "amx_w4_codebook_linear", "codebook_tables", "w4_reference"]

PAIR_DEPTH = 32  # K consumed by one bf16 tile product
_NO_BIAS = torch.empty(0)


def amx_w4_shape_ok(n: int, k: int, group_size: int) -> bool:
    """True when a (N, K) int4 weight with this group size fits the bf16 tile layout."""
    return (n > 0 and k > 0 and n % TILE_ROWS == 0 and k % PAIR_DEPTH == 0 and group_size % PAIR_DEPTH == 0
            and k % group_size == 0)


def pack_amx_int4(nibbles: torch.Tensor) -> torch.Tensor:
    """(N, K) raw nibbles 0..15 -> (N/16, K/32, 16, 16) uint8: byte (n, k, r, j) holds column 16n + j's values
    at K = 32k + 2r (low nibble) and 32k + 2r + 1 (high), one bf16 tile row of pairs per 16 bytes."""
    if nibbles.dtype != torch.uint8 or nibbles.dim() != 2:
        raise ValueError(f"pack_amx_int4 expects (N, K) uint8 nibbles, got {tuple(nibbles.shape)} {nibbles.dtype}")
    n, k = nibbles.shape
    if n % TILE_ROWS or k % PAIR_DEPTH:
        raise ValueError(f"pack_amx_int4 needs N % {TILE_ROWS} == 0 and K % {PAIR_DEPTH} == 0, got N={n}, K={k}")
    v = nibbles.reshape(n // TILE_ROWS, TILE_ROWS, k // PAIR_DEPTH, PAIR_DEPTH // 2, 2)  # [nb, j, kt, r, t]
    v = v.permute(0, 2, 3, 1, 4)  # [nb, kt, r, j, t]
    return (v[..., 0] | (v[..., 1] << 4)).contiguous()


def amx_w4_linear(x_bf16: torch.Tensor, codes: torch.Tensor, zero: torch.Tensor, scale: torch.Tensor,
                  group_size: int, bias: torch.Tensor | None = None, *, activation: str | None = None,
                  bf16_output: bool = False):
    """(M, K) bf16 x int4 weight (``pack_amx_int4`` codes, (G, N) float32 tables of bf16 zero / scale values)
    -> (M, N) float32 sums of the exact bf16 products, + bias, then ``activation`` ("gelu", as in
    ``amx_int8_linear``). ``bf16_output=True`` returns ``(out, out.to(torch.bfloat16))``, the copy written from
    the same registers (the next layer's bf16 input)."""
    ops, act = kernel_ops("amx_w4_linear", activation)
    out, out_bf16 = ops.amx_w4_linear(x_bf16.contiguous(), codes, zero, scale, group_size,
                                      _NO_BIAS if bias is None else bias.contiguous(), act,
                                      bf16_output)
    return (out, out_bf16) if bf16_output else out


def codebook_tables(codebook: torch.Tensor, n: int, groups: int,
                    dtype: torch.dtype = torch.bfloat16) -> tuple[torch.Tensor, torch.Tensor]:
    """A codebook of 4-bit or narrower codes, (C,), (N, C), (N, 1, C) or (N, G, C) with C <= 16 -> the codebook
    kernels' operands: ``table`` (T, 16) float32, its distinct rows rounded to ``dtype`` (as the reference's
    ``codebook.to(dtype)``) and zero-padded to 16, and ``ids`` (G, N) int32, each column's row per group.

    ANT picks one of a few numeric types per tensor, channel or group, so T is at most the number of types and
    the table stays in L1 however many columns share it."""
    c = codebook.shape[-1]
    if c > 16 or codebook.dim() not in (1, 2, 3):
        raise ValueError(f"the int4 codebook kernel needs (C,), (N, C) or (N, G, C) tables with C <= 16, "
                         f"got {tuple(codebook.shape)}")
    rows = codebook.reshape(-1, c) if codebook.dim() > 1 else codebook.reshape(1, c)
    rows = torch.nn.functional.pad(rows.to(dtype).float(), (0, 16 - c))  # (R, 16)
    table, inverse = torch.unique(rows, dim=0, return_inverse=True)  # (T, 16), (R,)
    if codebook.dim() == 1:
        ids = inverse.expand(groups, n)
    else:
        per_column = inverse.view(n, -1)  # (N, Gc) with Gc in {1, G}
        if per_column.shape[1] not in (1, groups):
            raise ValueError(f"codebook {tuple(codebook.shape)} has {per_column.shape[1]} groups, the weight {groups}")
        ids = per_column.expand(n, groups).t()
    return table.contiguous(), ids.to(torch.int32).contiguous()


def amx_w4_codebook_linear(x_bf16: torch.Tensor, codes: torch.Tensor, table: torch.Tensor, ids: torch.Tensor,
                           scale: torch.Tensor, group_size: int, bias: torch.Tensor | None = None, *,
                           activation: str | None = None, bf16_output: bool = False):
    """``amx_w4_linear`` for codebook weights (ANT): w = bf16(table[ids[g, n], q] * scale[g, n]) with the operands
    of ``codebook_tables`` and (G, N) float32 bf16 scales; the same sums, bound, epilogue and outputs."""
    ops, act = kernel_ops("amx_w4_codebook_linear", activation)
    out, out_bf16 = ops.amx_w4_codebook_linear(x_bf16.contiguous(), codes, table, ids, scale, group_size,
                                               _NO_BIAS if bias is None else bias.contiguous(), act, bf16_output)
    return (out, out_bf16) if bf16_output else out


def w4_reference(x_bf16, w_bf16, bias):
    """The float32 product the int4 kernel computes, F.linear(x, w) on the bf16 values, and its error bound:
    |sum order difference| <= K * 2**-23 * (|x| @ |w|.T) (float32 sums of exact products)."""
    x, w = x_bf16.float(), w_bf16.float()
    ref = x @ w.t() + (0 if bias is None else bias)
    bound = x.shape[1] * 2.0 ** -23 * (x.abs() @ w.abs().t()) + 1e-30
    return ref, bound


def _probe_w4_within_bound() -> bool:
    gen = torch.Generator().manual_seed(0)
    for m, k, n, gs in ((1, 64, 16, 32), (33, 384, 48, 64), (40, 128, 160, 128)):
        q = torch.randint(0, 16, (n, k), dtype=torch.uint8, generator=gen)
        s = (torch.rand(n, k // gs, generator=gen) * 0.1 + 0.01).to(torch.bfloat16)
        z = (torch.rand(n, k // gs, generator=gen) * 15).to(torch.bfloat16)
        w = ((q.view(n, -1, gs).to(torch.bfloat16) - z.unsqueeze(-1)) * s.unsqueeze(-1)).view(n, k)
        x = torch.randn(m, k, generator=gen).to(torch.bfloat16)
        bias = torch.randn(n, generator=gen)
        got = amx_w4_linear(x, pack_amx_int4(q), z.float().t().contiguous(), s.float().t().contiguous(), gs, bias)
        ref, bound = w4_reference(x, w, bias)
        if not bool(((got - ref).abs() <= bound).all()):
            return False
        # the codebook variant on the same codes: a different table row per column and group
        cb = torch.randn(n, k // gs, 16, generator=gen).to(torch.bfloat16)  # (N, G, 16)
        w = (torch.gather(cb, -1, q.view(n, -1, gs).long()) * s.unsqueeze(-1)).view(n, k)
        table, ids = codebook_tables(cb, n, k // gs)
        got = amx_w4_codebook_linear(x, pack_amx_int4(q), table, ids, s.float().t().contiguous(), gs, bias)
        ref, bound = w4_reference(x, w, bias)
        if not bool(((got - ref).abs() <= bound).all()):
            return False
    return True


@functools.lru_cache(maxsize=None)
def _check_w4() -> tuple[bool, str]:
    if not amx_int8_available():  # the same build, tile grant and CPU
        return False, amx_int8_status()
    ops = native_ops()
    if not hasattr(ops, "amx_w4_ready") or not ops.amx_w4_ready():
        return False, "off: built without AMX-BF16"
    return probe_status(_probe_w4_within_bound, "on (leanformer AMX int4 x bf16 kernel)",
                        "off: the AMX int4 product left its error bound on this CPU")


def amx_w4_available() -> bool:
    """True when the AMX int4 kernel runs here and stayed within its bound on the first-use probe."""
    return _check_w4()[0]


def amx_w4_status(build: bool = True) -> str:
    """One line for ``leanformer env``; ``build=False`` does not compile the native kernels to find out."""
    return sibling_status(_check_w4, build, "int4 batch forward")
