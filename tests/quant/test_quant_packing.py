"""Packing round-trips (nibbles and bytes) on awkward shapes, and the QuantizedWeight contract."""
import pytest
import torch

from leanformer.quant.packing import pack_codes, packed_shape, unpack_codes
from leanformer.quant.qweight import QuantizedWeight


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (3, 13), (17, 64), (5, 2)])
def test_pack_roundtrip(bits, signed, shape):
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
    codes = torch.randint(lo, hi + 1, shape).to(torch.int8 if signed else torch.uint8)
    packed = pack_codes(codes, bits, signed=signed)
    assert tuple(packed.shape) == packed_shape(*shape, bits)
    if bits <= 4:  # really two codes per byte
        assert packed.dtype == torch.uint8 and packed.shape[1] == (shape[1] + 1) // 2
    out = unpack_codes(packed, shape[1], bits, signed=signed)
    assert out.dtype == codes.dtype and torch.equal(out, codes)


def test_nibble_layout_even_column_low():
    codes = torch.tensor([[1, 2, 3]], dtype=torch.uint8)
    assert pack_codes(codes, 4, signed=False).tolist() == [[1 | (2 << 4), 3]]
    signed = torch.tensor([[-8, 7]], dtype=torch.int8)  # offset binary: -8 -> 0, 7 -> 15
    assert pack_codes(signed, 4, signed=True).tolist() == [[0 | (15 << 4)]]


def test_pack_rejects_out_of_range():
    with pytest.raises(ValueError, match="nibble range"):
        pack_codes(torch.tensor([[16]], dtype=torch.uint8), 4, signed=False)
    with pytest.raises(ValueError, match="bits"):
        pack_codes(torch.zeros(2, 2, dtype=torch.uint8), 9, signed=False)


def test_qweight_dequantize_formats():
    codes = torch.tensor([[0, 1, 2, 3]], dtype=torch.uint8)
    scale = torch.tensor([[2.0, 10.0]])
    asym = QuantizedWeight(codes, scale, torch.tensor([[1.0, 2.0]]), 4, 2)
    assert asym.dequantize().tolist() == [[-2.0, 0.0, 0.0, 10.0]]
    sym = QuantizedWeight(codes.to(torch.int8) - 1, scale, None, 4, 2)
    assert sym.dequantize().tolist() == [[-2.0, 0.0, 10.0, 20.0]]
    table = torch.linspace(-1, 1, 16)
    cb = QuantizedWeight(codes, scale, None, 4, 2, table, "flint")
    assert torch.equal(cb.dequantize(), table[codes.long()] * scale.repeat_interleave(2, 1))
    per_row = QuantizedWeight(codes, scale, None, 4, 2, table[None], "ant-mixed")  # (N, 2**b)
    assert torch.equal(per_row.dequantize(), cb.dequantize())


@pytest.mark.parametrize("kwargs, match", [
    (dict(bits=9), "bits"),
    (dict(group_size=3), "group_size"),
    (dict(scale=torch.ones(2, 3)), "scale must have shape"),
    (dict(codes=torch.zeros(2, 4)), "int8 or uint8"),
    (dict(codebook=torch.zeros(5)), "codebook"),
])
def test_qweight_validation(kwargs, match):
    base = dict(codes=torch.zeros(2, 4, dtype=torch.uint8), scale=torch.ones(2, 2), zero=None, bits=4, group_size=2)
    base.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        QuantizedWeight(**base)


@pytest.mark.parametrize("n, k, gs", [(1, 2, 2), (3, 64, 64), (5, 96, 32), (2, 40, 8)])
def test_group_planar_roundtrip_and_layout(n, k, gs):
    from leanformer.quant.packing import group_planar, unpack_group_planar_to

    nib = torch.randint(0, 16, (n, k), dtype=torch.uint8)
    planar = group_planar(nib, gs)
    assert planar.shape == (n, k // gs, gs // 2) and planar.dtype == torch.uint8  # still two codes per byte
    # byte j of group g holds column g*gs + j (low nibble) and g*gs + j + gs/2 (high nibble)
    assert int(planar[0, 0, 0]) == int(nib[0, 0]) | (int(nib[0, gs // 2]) << 4)
    for dtype in (torch.float32, torch.bfloat16):
        out = unpack_group_planar_to(planar, dtype)
        assert out.dtype == dtype and torch.equal(out.reshape(n, k), nib.to(dtype))


def test_group_planar_rejects_odd_groups():
    from leanformer.quant.packing import group_planar

    with pytest.raises(ValueError, match="even group size"):
        group_planar(torch.zeros(2, 39, dtype=torch.uint8), 13)
