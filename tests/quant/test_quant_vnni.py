"""The AVX512-VNNI int8 kernel's native op (csrc/vnni_int8.cpp) against the exact reference, bit for bit, on
awkward shapes: it runs wherever the CPU has VNNI (AMX machines included), whichever kernel W8A8 layers pick."""
import pytest
import torch

from leanformer.quant.amx import int8_reference, pack_amx_weight, vnni_int8_available, vnni_int8_status
from leanformer.quant.native import native_ops

needs_vnni = pytest.mark.skipif(not vnni_int8_available(), reason=f"VNNI int8: {vnni_int8_status()}")
pytestmark = needs_vnni
_NO_BIAS = torch.empty(0)


def _operands(m, k, n, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=gen)
    w = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=gen)
    rs, cs = torch.rand(m, 1, generator=gen) * 0.1 + 1e-3, torch.rand(n, generator=gen) * 0.01 + 1e-4
    return x, w, rs, cs, torch.randn(n, generator=gen)


# rows around the 8-row block (1, 7, 8, 9, 17) and columns around the 32-column group (16, 48, 80: a lone
# 16-column block at the end), K from one tile to MiniLM's 1536
@pytest.mark.parametrize("m, k, n", [(1, 64, 16), (7, 64, 48), (8, 128, 32), (9, 384, 80), (17, 1536, 48),
                                     (100, 384, 1536), (576, 1536, 384)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_product_equals_reference(m, k, n, with_bias):
    x, w, rs, cs, bias = _operands(m, k, n, m * 7 + k + n)
    bias = bias if with_bias else None
    out, codes, scale, finite = native_ops().vnni_int8_linear(x, rs, pack_amx_weight(w), cs,
                                                              _NO_BIAS if bias is None else bias, 0, True)
    want = int8_reference(x, rs, w, cs, bias)
    assert torch.equal(out, want)
    want_codes, want_scale, _ = native_ops().quantize_rows(want)
    assert bool(finite) and torch.equal(codes, want_codes) and torch.equal(scale, want_scale)


def test_extreme_codes_exercise_the_unsigned_shift_and_its_correction():
    # a = -128 becomes 0 after the shift and a = 127 becomes 255; weights at both ends; |sums| past 2**24
    k = 2048
    w = torch.full((32, k), 127, dtype=torch.int8)
    w[1::2] = -128
    x = torch.full((9, k), -128, dtype=torch.int8)
    x[1::2] = 127
    x[3, 5] = 0
    rs, cs = torch.ones(9, 1), torch.ones(32)
    want = int8_reference(x, rs, w, cs, None)
    assert want.abs().max() > 2 ** 24
    assert torch.equal(native_ops().vnni_int8_linear(x, rs, pack_amx_weight(w), cs, _NO_BIAS, 0, False)[0], want)


@pytest.mark.parametrize("m", [3, 40])
def test_gelu_is_the_shared_epilogue_applied_to_the_exact_product(m):
    x, w, rs, cs, bias = _operands(m, 384, 96, m)
    p = pack_amx_weight(w)
    plain = native_ops().vnni_int8_linear(x, rs, p, cs, bias, 0, False)[0]
    fused = native_ops().vnni_int8_linear(x, rs, p, cs, bias, 1, False)[0]
    assert torch.equal(fused, native_ops().amx_gelu_(plain.clone()))


@pytest.mark.parametrize("threads", [1, 2])
def test_thread_counts_give_the_same_bits(threads):
    x, w, rs, cs, bias = _operands(33, 384, 96, 5)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = native_ops().vnni_int8_linear(x, rs, pack_amx_weight(w), cs, bias, 0, False)[0]
    finally:
        torch.set_num_threads(before)
    assert torch.equal(out, int8_reference(x, rs, w, cs, bias))


def test_non_finite_outputs_are_flagged():
    x, w, rs, cs, bias = _operands(4, 64, 16, 1)
    rs[2] = float("inf")
    _, _, _, finite = native_ops().vnni_int8_linear(x, rs, pack_amx_weight(w), cs, bias, 0, True)
    assert not bool(finite)


def test_bad_operands_are_named():
    ops = native_ops()
    packed = pack_amx_weight(torch.zeros(16, 64, dtype=torch.int8))
    one, ones16 = torch.ones(2, 1), torch.ones(16)
    with pytest.raises(RuntimeError, match="matching xq's K"):
        ops.vnni_int8_linear(torch.zeros(2, 128, dtype=torch.int8), one, packed, ones16, _NO_BIAS, 0, False)
    with pytest.raises(RuntimeError, match="xq"):
        ops.vnni_int8_linear(torch.zeros(2, 64), one, packed, ones16, _NO_BIAS, 0, False)
    with pytest.raises(RuntimeError, match="activation"):
        ops.vnni_int8_linear(torch.zeros(2, 64, dtype=torch.int8), one, packed, ones16, _NO_BIAS, 7, False)
    with pytest.raises(RuntimeError, match="col_scale"):
        ops.vnni_int8_linear(torch.zeros(2, 64, dtype=torch.int8), one, packed, torch.ones(8), _NO_BIAS, 0, False)
    with pytest.raises(RuntimeError, match="bias"):
        ops.vnni_int8_linear(torch.zeros(2, 64, dtype=torch.int8), one, packed, ones16, torch.ones(3), 0, False)
