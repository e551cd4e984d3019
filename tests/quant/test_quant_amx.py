"""leanformer's fused int8 kernel (W8A8 with the rescale fused; AMX tiles, or AVX512-VNNI without them) against
the exact reference, bit for bit. The VNNI kernel's own op is tested in test_quant_vnni.py."""
import copy
import pickle

import pytest
import torch

from leanformer.quant import QuantizedLinear, amx, quantize_rtn, set_policy
from leanformer.quant.amx import (amx_int8_available, amx_int8_linear, amx_int8_status, int8_kernel,
                                  int8_kernel_available, pack_amx_weight, vnni_int8_status)

needs_int8 = pytest.mark.skipif(not int8_kernel_available(),
                                reason=f"fused int8 kernel: AMX {amx_int8_status()}; VNNI {vnni_int8_status()}")


pytestmark = pytest.mark.usefixtures("kernel_policy_restored")


def _reference(xq, rs, w, cs, bias):
    """int64 products (exact at any size), then the eager float32 rescale: cast, row scale, column scale, bias."""
    y = (xq.long() @ w.long().t()).to(torch.int32).float().mul_(rs).mul_(cs)
    return y if bias is None else y.add_(bias)


def test_pack_layout_value_by_value():
    n, k = 32, 128
    w = (torch.arange(n * k) % 251 - 125).to(torch.int8).view(n, k)
    p = pack_amx_weight(w)
    assert p.shape == (2, 2, 16, 64) and p.dtype == torch.int8
    for nb, kt, r, j, t in [(0, 0, 0, 0, 0), (1, 1, 15, 15, 3), (0, 1, 3, 7, 2), (1, 0, 9, 2, 1)]:
        assert p[nb, kt, r, 4 * j + t] == w[16 * nb + j, 64 * kt + 4 * r + t]


def test_pack_rejects_bad_weights():
    with pytest.raises(ValueError, match="int8"):
        pack_amx_weight(torch.zeros(16, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="K % 64"):
        pack_amx_weight(torch.zeros(16, 96, dtype=torch.int8))
    with pytest.raises(ValueError, match="N % 16"):
        pack_amx_weight(torch.zeros(24, 64, dtype=torch.int8))


@needs_int8
@pytest.mark.parametrize("m, k, n", [(1, 64, 16), (5, 64, 48), (31, 128, 32), (33, 384, 80), (64, 1536, 16),
                                     (100, 384, 1536), (576, 1536, 384)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_product_equals_reference(m, k, n, with_bias):
    gen = torch.Generator().manual_seed(m * 31 + k + n)
    x = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=gen)
    w = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=gen)
    rs, cs = torch.rand(m, 1, generator=gen) * 0.1, torch.rand(n, generator=gen) * 0.01
    bias = torch.randn(n, generator=gen) if with_bias else None
    out = amx_int8_linear(x, rs, pack_amx_weight(w), cs, bias)
    assert out.shape == (m, n) and out.dtype == torch.float32
    assert torch.equal(out, _reference(x, rs, w, cs, bias))


@needs_int8
def test_extreme_codes_past_float32_integers_and_strided_input():
    k = 2048  # +-127 * 128 * 2048 > 2**25: the int32 -> float32 conversion must round like a cast
    w = torch.full((32, k), 127, dtype=torch.int8)
    w[1::2] = -128
    x = torch.full((9, 2 * k), -128, dtype=torch.int8)[:, ::2]  # a strided view of the codes
    x[3, 5] = 1
    rs, cs = torch.ones(9, 1), torch.ones(32)
    ref = _reference(x, rs, w, cs, None)
    assert ref.abs().max() > 2 ** 24
    assert torch.equal(amx_int8_linear(x, rs, pack_amx_weight(w), cs), ref)


def test_native_op_rejects_mismatched_operands():
    from leanformer.quant.native import native_ops

    ops = native_ops()
    if ops is None:
        pytest.skip("native kernels unavailable")
    packed = pack_amx_weight(torch.zeros(16, 64, dtype=torch.int8))
    with pytest.raises(RuntimeError, match="matching xq's K"):
        ops.amx_int8_linear(torch.zeros(2, 128, dtype=torch.int8), torch.ones(2, 1), packed, torch.ones(16),
                            torch.empty(0), 0, False)
    with pytest.raises(RuntimeError, match="xq"):
        ops.amx_int8_linear(torch.zeros(2, 64), torch.ones(2, 1), packed, torch.ones(16), torch.empty(0), 0, False)
    with pytest.raises(RuntimeError, match="activation"):
        ops.amx_int8_linear(torch.zeros(2, 64, dtype=torch.int8), torch.ones(2, 1), packed, torch.ones(16),
                            torch.empty(0), 7, False)
    with pytest.raises(RuntimeError, match="col_scale"):
        ops.amx_int8_linear(torch.zeros(2, 64, dtype=torch.int8), torch.ones(2, 1), packed, torch.ones(8),
                            torch.empty(0), 0, False)


def _w8a8(k=384, n=96, bias=True):
    lin = torch.nn.Linear(k, n, bias=bias)
    return QuantizedLinear.from_float(lin, quantize_rtn(lin.weight, bits=8), act_bits=8)


@needs_int8
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rows", [1, 18, 200])
def test_w8a8_module_is_bit_identical_to_the_other_products(bias, rows):
    mod = _w8a8(bias=bias)
    x = torch.randn(rows, 384) * 3
    set_policy(onednn_rows=1)
    with torch.no_grad():
        fast = mod(x)
        assert "w8a8_amx" in mod._cache
        set_policy(amx_int8=False)
        assert torch.equal(fast, mod(x.clone()))  # oneDNN
        set_policy(onednn_int8=False)
        assert torch.equal(fast, mod(x.clone()))  # torch._int_mm


@needs_int8
def test_shapes_off_the_tile_grid_take_the_other_products():
    mod = _w8a8(k=96, n=48)  # K % 64 != 0
    with torch.no_grad():
        mod(torch.randn(4, 96))
    assert "w8a8_amx" not in mod._cache


@needs_int8
def test_copies_and_pickles_after_a_forward():
    mod = _w8a8()
    x = torch.randn(7, 384)
    with torch.no_grad():
        want = mod(x)
        for clone in (copy.deepcopy(mod), pickle.loads(pickle.dumps(mod))):
            assert not clone._cache and torch.equal(clone(x), want)


@pytest.mark.parametrize("switch", ["amx_int8", "native"])
def test_policy_switches_are_honoured(switch):
    mod = _w8a8()
    set_policy(**{switch: False})
    with torch.no_grad():
        mod(torch.randn(3, 384))
    assert "w8a8_amx" not in mod._cache


@pytest.fixture
def fresh_check():
    """The availability check runs again under the test's monkeypatches, and again for later tests."""
    amx._check.cache_clear()
    amx._vnni_check.cache_clear()
    yield
    amx._check.cache_clear()
    amx._vnni_check.cache_clear()


@needs_int8
def test_a_mismatching_probe_switches_the_path_off(monkeypatch, fresh_check):
    kernel = int8_kernel()
    amx._check.cache_clear()
    amx._vnni_check.cache_clear()
    monkeypatch.setattr(amx, "_probe_matches_reference", lambda *linear: False)  # both kernels' probe
    status = amx_int8_status() if kernel == "amx" else vnni_int8_status()
    assert not int8_kernel_available() and "did not match" in status
    mod = _w8a8()
    x = torch.randn(5, 384)
    with torch.no_grad():
        got = mod(x)
        set_policy(amx_int8=False)
        assert torch.equal(got, mod(x))  # and the output is the other products'
    assert "w8a8_amx" not in mod._cache


def test_cpus_without_amx_never_try_it(monkeypatch, fresh_check):
    monkeypatch.setattr(amx, "cpu_has", lambda *names: False)
    monkeypatch.setattr(amx, "_probe_matches_reference", lambda *linear: pytest.fail("probe must not run"))
    assert not amx_int8_available() and "no AMX" in amx_int8_status()
    assert not int8_kernel_available() and "no VNNI" in vnni_int8_status()
    assert "no AMX" in amx_int8_status(build=False)


def test_status_without_building_says_not_checked(monkeypatch, fresh_check):
    monkeypatch.setattr(amx, "cpu_has", lambda *names: True)
    monkeypatch.setattr(amx, "native_built", lambda: False)
    assert amx_int8_status(build=False).startswith("not checked yet")


@needs_int8
@pytest.mark.parametrize("m", [1, 33, 200])
def test_two_threads_give_the_same_bits(m):
    x, w = torch.randint(-128, 128, (m, 384), dtype=torch.int8), torch.randint(-128, 128, (96, 384), dtype=torch.int8)
    rs, cs = torch.rand(m, 1), torch.rand(96)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        got = amx_int8_linear(x, rs, pack_amx_weight(w), cs)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(got, _reference(x, rs, w, cs, None))
