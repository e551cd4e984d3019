"""Flint, the "float-int" primitive type of ANT (Guo et al., MICRO 2022), with exact encode / decode.

Source: the paper's first-one encoding, cross-checked against the value set that the official code builds
(clevercool/ANT-Quantization, ``antquant/quant_modules.py``, ``flint_value``).

An unsigned ``n``-bit flint code ``c`` (most significant bit first) reads as follows:

* ``c == 0`` is 0 and ``c == 2**n - 1`` (all ones) is the maximum ``2**(n-1)``.
* Top bit 0: the exponent field is the leading zeros plus the first one. With ``p`` leading zeros the
  exponent is ``-p`` and the remaining ``n - p - 1`` bits are the mantissa.
* Top bit 1: the exponent field is the leading ones plus the first zero. With ``p`` leading ones the
  exponent is ``p - 1``, and again ``n - p - 1`` mantissa bits remain.
* value = ``2**e * (1 + mantissa / 2**m)``.

So exponents -1 and 0 take two exponent bits and keep the most mantissa bits (int-like resolution near 1).
Each step further out costs one more exponent bit (power-of-two-like range). Codes are ordered like
their values. Unsigned 4-bit flint is {0, 1/8, 1/4, 3/8, 1/2, 5/8, 3/4, 7/8, 1, 5/4, 3/2, 7/4, 2, 3, 4, 8}.

Signed flint is sign-magnitude: a sign bit on top of an ``(n-1)``-bit unsigned flint. Zero has two codes.
Signed 4-bit magnitudes are {0, 1/4, 1/2, 3/4, 1, 3/2, 2, 4}.

``integer=True`` scales by ``2**(n-1)`` (n = magnitude bits), so every value is an integer. This is the form
an integer MAC array consumes, and it is the codebook ``leanformer.quant.ant`` stores: unsigned 4-bit
becomes {0, 1, ..., 8, 10, 12, 14, 16, 24, 32, 64}.

The official code only defines flint with at least two magnitude bits. We support 2..8 total bits unsigned
and 3..8 signed.
"""
from __future__ import annotations

import functools

import torch

__all__ = ["flint_table", "flint_decode", "flint_encode", "magnitude_value"]


def _check(bits: int, signed: bool) -> int:
    lo = 3 if signed else 2
    if not isinstance(bits, int) or isinstance(bits, bool) or not lo <= bits <= 8:
        raise ValueError(f"flint bits must be an int in {lo}..8 for {'signed' if signed else 'unsigned'} flint, "
                         f"got {bits!r}")
    return bits - 1 if signed else bits


def magnitude_value(code: int, n: int) -> float:
    """Value of one unsigned ``n``-bit flint code (the bit-level definition above)."""
    if not 0 <= code < 2 ** n:
        raise ValueError(f"flint code {code} out of range for {n} bits")
    if code == 0:
        return 0.0
    if code == 2 ** n - 1:
        return float(2 ** (n - 1))
    top = code >> (n - 1)
    run_bits = code if top == 0 else (~code) & (2 ** n - 1)  # leading zeros of this = length of the run
    p = n - run_bits.bit_length()  # length of the leading run of equal bits (1 .. n-1)
    exponent = -p if top == 0 else p - 1
    m = n - p - 1  # mantissa bits left after the exponent field (run + terminating bit)
    mantissa = code & ((1 << m) - 1)
    return 2.0 ** exponent * (1.0 + mantissa / 2 ** m)


@functools.lru_cache(maxsize=None)
def _table(bits: int, signed: bool, integer: bool) -> tuple[float, ...]:
    n = _check(bits, signed)
    mult = float(2 ** (n - 1)) if integer else 1.0
    mags = [magnitude_value(c, n) * mult for c in range(2 ** n)]
    if not signed:
        return tuple(mags)
    return tuple(mags + [-v if v else 0.0 for v in mags])  # sign bit on top: codes 2**n.. are negative


def flint_table(bits: int, *, signed: bool = True, integer: bool = False,
                device: torch.device | str | None = None) -> torch.Tensor:
    """(2**bits,) fp32 value of every code, in code order (entry ``c`` is the value of code ``c``)."""
    return torch.tensor(_table(bits, signed, integer), dtype=torch.float32, device=device)


def flint_decode(codes: torch.Tensor, bits: int, *, signed: bool = True, integer: bool = False) -> torch.Tensor:
    """Codes (any integer dtype, values in [0, 2**bits)) -> fp32 values. Exact (table lookup)."""
    if codes.is_floating_point() or codes.is_complex():
        raise TypeError(f"flint codes must be an integer tensor, got {codes.dtype}")
    table = flint_table(bits, signed=signed, integer=integer, device=codes.device)
    c = codes.long()
    if c.numel() and (int(c.min()) < 0 or int(c.max()) >= 2 ** bits):
        raise ValueError(f"flint codes must lie in [0, {2 ** bits - 1}] for {bits} bits")
    return table[c]


def flint_encode(values: torch.Tensor, bits: int, *, signed: bool = True, integer: bool = False) -> torch.Tensor:
    """Exact inverse of ``flint_decode``: fp values that are flint numbers -> uint8 codes.

    Zero always encodes to code 0 (signed flint's "-0" code ``2**(bits-1)`` also decodes to 0). A value that
    is not exactly representable raises ``ValueError`` (use a nearest-value quantizer for rounding).
    """
    if not values.is_floating_point():
        raise TypeError(f"flint_encode expects floating-point values, got {values.dtype}")
    table = flint_table(bits, signed=signed, integer=integer, device=values.device).double()
    order = torch.argsort(table, stable=True)  # stable: the first code of a duplicated value (0) comes first
    sorted_vals = table[order]
    v = values.double()
    pos = torch.searchsorted(sorted_vals, v).clamp_max(len(table) - 1)  # first index with sorted >= v
    hit = sorted_vals[pos] == v
    if not bool(hit.all()):
        bad = v[~hit].flatten()[0].item()
        raise ValueError(f"value {bad!r} is not representable in {bits}-bit {'signed' if signed else 'unsigned'} "
                         f"flint{' (integer form)' if integer else ''}")
    # A duplicated zero has its +0 code (smallest code among the equal sorted values) at ``pos`` since
    # searchsorted returns the leftmost match and the stable argsort keeps code order among equals.
    return order[pos].to(torch.uint8)
