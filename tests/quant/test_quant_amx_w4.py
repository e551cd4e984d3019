"""leanformer's AMX int4 x bf16 kernel: the reference's bf16 weights exactly, float32 sums within their bound."""
import pytest
import torch

from leanformer.quant import QuantizedLinear, get_policy, quantize_rtn, set_policy
from leanformer.quant import kernels
from leanformer.quant.amx import amx_int8_status
from leanformer.quant.amx_w4 import amx_w4_available, amx_w4_linear, pack_amx_int4, w4_reference

needs_amx = pytest.mark.skipif(not amx_w4_available(), reason=f"AMX: {amx_int8_status()}")


pytestmark = pytest.mark.usefixtures("kernel_policy_restored")


def test_pack_layout_value_by_value():
    n, k = 32, 64
    q = (torch.arange(n * k) * 7 % 16).to(torch.uint8).view(n, k)
    p = pack_amx_int4(q)
    assert p.shape == (2, 2, 16, 16) and p.dtype == torch.uint8
    for nb, kt, r, j in [(0, 0, 0, 0), (1, 1, 15, 15), (0, 1, 3, 7), (1, 0, 9, 2)]:
        byte = int(p[nb, kt, r, j])
        assert byte & 0xF == q[16 * nb + j, 32 * kt + 2 * r] and byte >> 4 == q[16 * nb + j, 32 * kt + 2 * r + 1]


def test_pack_rejects_bad_codes():
    with pytest.raises(ValueError, match="uint8"):
        pack_amx_int4(torch.zeros(16, 32, dtype=torch.int8))
    with pytest.raises(ValueError, match="K % 32"):
        pack_amx_int4(torch.zeros(16, 48, dtype=torch.uint8))


def _module(k, n, gs, symmetric, seed=0):
    torch.manual_seed(seed)
    lin = torch.nn.Linear(k, n)
    return QuantizedLinear.from_float(lin, quantize_rtn(lin.weight, bits=4, group_size=gs, symmetric=symmetric))


def _tables(mod):
    return kernels._build_amx_w4(mod)


@needs_amx
@pytest.mark.parametrize("gs", [32, 64, 128, None])
@pytest.mark.parametrize("symmetric", [True, False])
def test_unpacked_weights_are_the_references_bit_for_bit(gs, symmetric):
    k, n = 128, 48
    mod = _module(k, n, gs, symmetric)
    codes, zero, scale = _tables(mod)
    eye = torch.eye(k, dtype=torch.bfloat16)  # one product per output: no sum to round
    got = amx_w4_linear(eye, codes, zero, scale, gs or k)
    assert torch.equal(got, mod.dequantized_weight(torch.bfloat16).float().t())


@needs_amx
@pytest.mark.parametrize("m, k, n, gs", [(1, 64, 16, 32), (5, 384, 48, 64), (31, 128, 32, 32), (33, 384, 272, 64),
                                         (100, 1536, 384, 64), (576, 384, 1536, 64), (64, 256, 160, 128)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_sums_are_within_the_float32_bound(m, k, n, gs, with_bias):
    mod = _module(k, n, gs, symmetric=False, seed=m + n)
    codes, zero, scale = _tables(mod)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m)).to(torch.bfloat16)
    bias = mod.bias if with_bias else None
    got = amx_w4_linear(x, codes, zero, scale, gs, bias)
    ref, bound = w4_reference(x, mod.dequantized_weight(torch.bfloat16), bias)
    assert got.shape == (m, n) and got.dtype == torch.float32
    assert bool(((got - ref).abs() <= bound).all())


@needs_amx
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_module_takes_the_kernel_above_int4_rows(dtype):
    mod = _module(384, 96, 64, symmetric=False)
    set_policy(int4_rows=24)
    x = torch.randn(40, 384).to(dtype)
    assert kernels.choose_kernel(mod, 40, x) == "amx_w4"
    assert kernels.choose_kernel(mod, 8, x) == "int4pack"
    with torch.no_grad():
        y = mod(x)
    assert y.dtype == dtype and "amx_w4" in mod._cache
    ref, bound = w4_reference(x.to(torch.bfloat16), mod.dequantized_weight(torch.bfloat16), mod.bias)
    assert bool(((y.float() - ref).abs() <= bound + (ref.abs() * 2 ** -8 if dtype == torch.bfloat16 else 0)).all())


@needs_amx
def test_it_is_closer_to_float32_than_the_bf16_gemm_it_replaces():
    mod = _module(1536, 384, 64, symmetric=False)
    x = torch.randn(64, 1536)
    exact = (x.to(torch.bfloat16).double() @ mod.dequantized_weight(torch.bfloat16).double().t()) + mod.bias.double()
    with torch.no_grad():
        fast = mod(x, kernel="amx_w4")
        old = mod(x, kernel="dequant")  # oneDNN's bf16 GEMM returns bf16-rounded sums
    assert (fast.double() - exact).abs().max() < (old.double() - exact).abs().max()


@pytest.mark.parametrize("switch", [dict(amx_w4=False), dict(native=False), dict(compute_dtype="float32")])
def test_policy_switches_are_honoured(switch):
    mod = _module(384, 96, 64, symmetric=False)
    before = get_policy().compute_dtype
    set_policy(**switch)
    try:
        assert kernels.choose_kernel(mod, 200, torch.randn(200, 384)) == "dequant"
    finally:
        set_policy(compute_dtype=before)


def test_formats_off_the_layout_keep_the_dequant_path():
    for mod in (_module(96, 48, 32, symmetric=False),  # K % 32 == 0 but N=48 is fine; K=96 with g32 fits
                _module(100, 48, None, symmetric=False)):  # K % 32 != 0
        choice = kernels.choose_kernel(mod, 200, torch.randn(200, mod.in_features))
        assert choice == ("amx_w4" if mod.in_features % 32 == 0 and amx_w4_available() else "dequant")


@needs_amx
@pytest.mark.parametrize("m", [1, 33, 200])
def test_two_threads_split_panels_and_rows_within_the_bound(m):
    mod = _module(384, 384, 64, symmetric=False)
    codes, zero, scale = _tables(mod)
    x = torch.randn(m, 384).to(torch.bfloat16)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        got = amx_w4_linear(x, codes, zero, scale, 64, mod.bias)
    finally:
        torch.set_num_threads(before)
    ref, bound = w4_reference(x, mod.dequantized_weight(torch.bfloat16), mod.bias)
    assert bool(((got - ref).abs() <= bound).all())


@pytest.fixture
def fresh_check():
    from leanformer.quant import amx_w4

    amx_w4._check_w4.cache_clear()
    yield amx_w4
    amx_w4._check_w4.cache_clear()


@needs_amx
def test_a_probe_outside_the_bound_switches_the_kernel_off(monkeypatch, fresh_check):
    monkeypatch.setattr(fresh_check, "_probe_w4_within_bound", lambda: False)
    assert not amx_w4_available() and "error bound" in fresh_check.amx_w4_status()
    mod = _module(384, 96, 64, symmetric=False)
    assert kernels.choose_kernel(mod, 200, torch.randn(200, 384)) == "dequant"
