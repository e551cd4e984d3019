"""Reference for flint: the value set built the way ANT's official code builds it (exponent by exponent).

Source: clevercool/ANT-Quantization ``antquant/quant_modules.py`` ``flint_value``, restated as plain loops.
It builds the *set* of values (no bit layout), so it checks ``leanformer.quant.flint``'s first-one decoding
independently. The grid is unnormalised, so the exponent-0 value is 1.0.
"""
from __future__ import annotations

__all__ = ["flint_value_set"]


def flint_value_set(bits: int, signed: bool = True) -> list[float]:
    """Sorted list of the 2**bits grid values (with zero repeated for signed types, as the official grid is)."""
    n = bits - 1 if signed else bits  # magnitude bits
    assert n >= 2, "flint needs at least two magnitude bits"
    mags = [0.0]
    # Negative exponents -1, -2, ...: exponent field of (k + 1) bits for exponent -k.
    for k in range(1, n + 1):
        mant_bits = n - (k + 1)
        if mant_bits < 0:
            break
        for j in range(2 ** mant_bits):
            mags.append(2.0 ** (-k) * (1 + j / 2 ** mant_bits))
    # Exponent 0 and the positive exponents: field of (e + 2) bits for exponent e, up to e = n - 2.
    for e in range(0, n - 1):
        mant_bits = n - (e + 2)
        for j in range(2 ** mant_bits):
            mags.append(2.0 ** e * (1 + j / 2 ** mant_bits))
    mags.append(2.0 ** (n - 1))  # the reserved maximum
    values = mags + ([-v for v in mags if v] + [0.0] if signed else [])
    assert len(values) == 2 ** bits, (bits, signed, len(values))
    return sorted(values)
