"""Flint encode / decode: the paper's table value by value, the official value set, exact round trips."""
import pytest
import torch

from leanformer.quant.flint import flint_decode, flint_encode, flint_table, magnitude_value
from leanformer.reference.flint import flint_value_set

# ANT paper, 4-bit unsigned flint: code (MSB first) -> value. Exponent from the first one (top bit 0) or
# the first zero (top bit 1); the bits after it are the mantissa.
PAPER_U4 = {
    "0000": 0.0, "0001": 1 / 8, "0010": 1 / 4, "0011": 3 / 8,   # 0, then exponents -3 and -2
    "0100": 1 / 2, "0101": 5 / 8, "0110": 3 / 4, "0111": 7 / 8,  # exponent -1, 2 mantissa bits
    "1000": 1.0, "1001": 5 / 4, "1010": 3 / 2, "1011": 7 / 4,    # exponent 0, 2 mantissa bits
    "1100": 2.0, "1101": 3.0, "1110": 4.0, "1111": 8.0,          # exponents 1, 2, then the maximum
}
# Signed 4-bit: sign bit + 3-bit magnitude {0, 1/4, 1/2, 3/4, 1, 3/2, 2, 4} (official grid of ANT).
PAPER_S4_MAG = {"000": 0.0, "001": 0.25, "010": 0.5, "011": 0.75, "100": 1.0, "101": 1.5, "110": 2.0, "111": 4.0}


def test_unsigned_4bit_table_value_by_value():
    table = flint_table(4, signed=False)
    for bits, value in PAPER_U4.items():
        assert table[int(bits, 2)].item() == value, bits
    ints = flint_table(4, signed=False, integer=True).tolist()
    assert ints == [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 24, 32, 64]


def test_signed_4bit_table_value_by_value():
    table = flint_table(4, signed=True)
    for bits, value in PAPER_S4_MAG.items():
        assert table[int("0" + bits, 2)].item() == value
        assert table[int("1" + bits, 2)].item() == -value
    assert flint_table(4, signed=True, integer=True)[:8].tolist() == [0, 1, 2, 3, 4, 6, 8, 16]


def test_8bit_spot_values():
    assert magnitude_value(0b00000001, 8) == 2.0 ** -7
    assert magnitude_value(0b01000000, 8) == 0.5
    assert magnitude_value(0b01111111, 8) == 0.5 * (1 + 63 / 64)
    assert magnitude_value(0b10000000, 8) == 1.0
    assert magnitude_value(0b10111111, 8) == 1 + 63 / 64
    assert magnitude_value(0b11111110, 8) == 64.0
    assert magnitude_value(0b11111111, 8) == 128.0


@pytest.mark.parametrize("signed", [True, False])
def test_value_set_matches_official_construction(signed):
    for bits in range(3 if signed else 2, 9):
        assert sorted(flint_table(bits, signed=signed).tolist()) == flint_value_set(bits, signed), bits


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
def test_unsigned_codes_are_monotone(bits):
    t = flint_table(bits, signed=False)
    assert bool((t[1:] > t[:-1]).all())


@pytest.mark.parametrize("signed,bits", [(True, 3), (True, 4), (True, 8), (False, 2), (False, 4), (False, 8)])
@pytest.mark.parametrize("integer", [False, True])
def test_round_trip_exact(signed, bits, integer):
    codes = torch.arange(2 ** bits)
    values = flint_decode(codes, bits, signed=signed, integer=integer)
    back = flint_encode(values, bits, signed=signed, integer=integer)
    expect = codes.clone()
    if signed:
        expect[2 ** (bits - 1)] = 0  # "-0" encodes back to +0
    assert torch.equal(back.long(), expect)
    assert torch.equal(flint_decode(back, bits, signed=signed, integer=integer), values)


def test_bad_input():
    with pytest.raises(ValueError, match="bits"):
        flint_table(2, signed=True)
    with pytest.raises(ValueError, match="bits"):
        flint_table(9, signed=False)
    with pytest.raises(ValueError, match="not representable"):
        flint_encode(torch.tensor([0.3]), 4)
    with pytest.raises(ValueError, match="codes must lie"):
        flint_decode(torch.tensor([16]), 4)
    with pytest.raises(TypeError):
        flint_decode(torch.tensor([1.0]), 4)
