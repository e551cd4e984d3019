"""oneDNN's packed int8 product (W8A8's fast path) against torch._int_mm: the same integers, bit for bit."""
import time

import pytest
import torch

from leanformer.quant import QuantizedLinear, quantize_rtn, set_policy
from leanformer.quant import kernels, onednn
from leanformer.quant.onednn import int8_matmul, onednn_int8_available, onednn_int8_status, pack_int8_weight

needs_onednn = pytest.mark.skipif(not onednn_int8_available(), reason=f"oneDNN int8: {onednn_int8_status()}")


@pytest.fixture(autouse=True)
def _small_inputs_take_onednn(kernel_policy_restored):
    set_policy(onednn_rows=1)  # small test inputs take the oneDNN path too


@needs_onednn
@pytest.mark.parametrize("m, k, n", [(1, 1, 1), (3, 13, 7), (17, 64, 48), (576, 384, 1536), (5, 1536, 96)])
def test_product_equals_int_mm(m, k, n):
    gen = torch.Generator().manual_seed(m * 7 + k)
    x = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=gen)
    w = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=gen)
    out = int8_matmul(x, pack_int8_weight(w))
    assert out.dtype == torch.float32 and out.shape == (m, n)
    assert torch.equal(out, torch._int_mm(x, w.t()).float())


@needs_onednn
def test_product_past_float32_integers_and_strided_rows():
    k = 2048  # 127 * 128 * 2048 > 2**25: the float32 cast must round like torch's
    w = torch.full((32, k), 127, dtype=torch.int8)
    w[1::2] = -128
    x = torch.full((9, 2 * k), -128, dtype=torch.int8)[:, ::2]  # a strided view of the codes
    x[3, 5] = 1
    ref = torch._int_mm(x.contiguous(), w.t())
    assert ref.abs().max() > 2 ** 24
    assert torch.equal(int8_matmul(x, pack_int8_weight(w)), ref.float())


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("native", [True, False])
def test_w8a8_module_is_bit_identical_to_the_int_mm_path(bias, native):
    lin = torch.nn.Linear(96, 48, bias=bias)
    mod = QuantizedLinear.from_float(lin, quantize_rtn(lin.weight, bits=8), act_bits=8)
    x = torch.randn(3, 11, 96) * 3
    set_policy(native=native, onednn_int8=True)
    with torch.no_grad():
        fast = mod(x)
        assert "w8a8_onednn" in mod._cache  # the packed weight was built and used
        set_policy(onednn_int8=False)
        slow = mod(x.clone())
    assert torch.equal(fast, slow)


def test_pack_rejects_bad_weights():
    with pytest.raises(ValueError, match="int8"):
        pack_int8_weight(torch.zeros(4, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        pack_int8_weight(torch.zeros(4, dtype=torch.int8))


@pytest.fixture
def fresh_check():
    """The availability check runs again under the test's monkeypatches, and again for later tests."""
    onednn._check.cache_clear()
    yield
    onednn._check.cache_clear()


def test_a_mismatching_probe_switches_the_path_off(monkeypatch, fresh_check):
    monkeypatch.setattr(onednn, "_probe_matches_int_mm", lambda: False)
    monkeypatch.setattr(onednn, "_cpu_has_vnni", lambda: True)
    assert not onednn_int8_available() and "did not match" in onednn_int8_status()
    lin = torch.nn.Linear(32, 16)
    mod = QuantizedLinear.from_float(lin, quantize_rtn(lin.weight, bits=8), act_bits=8)
    with torch.no_grad():
        mod(torch.randn(4, 32))
    assert "w8a8_onednn" not in mod._cache and "w8a8_t" in mod._cache  # torch._int_mm ran


def test_cpus_without_vnni_never_try_it(monkeypatch, fresh_check):
    monkeypatch.setattr(onednn, "_cpu_has_vnni", lambda: False)
    monkeypatch.setattr(onednn, "_probe_matches_int_mm", lambda: pytest.fail("probe must not run"))
    assert not onednn_int8_available() and "VNNI" in onednn_int8_status()


def test_policy_switch_is_honoured():
    lin = torch.nn.Linear(32, 16)
    mod = QuantizedLinear.from_float(lin, quantize_rtn(lin.weight, bits=8), act_bits=8)
    set_policy(onednn_int8=False)
    with torch.no_grad():
        kernels.run_kernel("w8a8", mod, torch.randn(5, 32))
    assert "w8a8_onednn" not in mod._cache


@needs_onednn
def test_few_rows_take_int_mm():
    lin = torch.nn.Linear(32, 16)
    mod = QuantizedLinear.from_float(lin, quantize_rtn(lin.weight, bits=8), act_bits=8)
    set_policy(onednn_rows=8)
    with torch.no_grad():
        mod(torch.randn(7, 32))
        assert "w8a8_onednn" not in mod._cache and "w8a8_t" in mod._cache
        mod(torch.randn(8, 32))
        assert "w8a8_onednn" in mod._cache


def test_an_op_that_fails_leaves_torch_int_mm(monkeypatch, fresh_check):
    monkeypatch.setattr(onednn, "_cpu_has_vnni", lambda: True)

    def broken(*args, **kwargs):
        raise TypeError("qlinear_pointwise() got an unexpected keyword argument")

    monkeypatch.setattr(onednn, "int8_matmul", broken)
    assert not onednn_int8_available() and onednn_int8_status().startswith("unavailable: TypeError")


@pytest.mark.parametrize("slowdown, on", [
    (900.0, False),  # as torch 2.13's oneDNN did on an AMD Zen 4 VM: its reference int8 matmul, ~1000x slower
    (3.5, True),  # oneDNN's brgemm measured 2.1-3.5x torch._int_mm's time at the probe's product on Sapphire Rapids
])
def test_a_correct_product_is_switched_off_only_when_far_slower(monkeypatch, fresh_check, slowdown, on):
    monkeypatch.setattr(onednn, "_cpu_has_vnni", lambda: True)
    monkeypatch.setattr(onednn, "_probe_matches_int_mm", lambda: True)
    monkeypatch.setattr(onednn, "_slowdown_vs_int_mm", lambda: slowdown)
    if on:
        assert onednn_int8_available() and onednn_int8_status().startswith("on")
    else:
        assert not onednn_int8_available() and "900x slower" in onednn_int8_status()


def test_the_slowdown_timing_sees_a_slow_product(monkeypatch):
    real = onednn.int8_matmul

    def slow(x, w):
        time.sleep(0.02)  # far above torch._int_mm's time for the probe's (32, 256) @ (256, 256)
        return real(x, w)

    monkeypatch.setattr(onednn, "int8_matmul", slow)
    assert onednn._slowdown_vs_int_mm() > onednn._SLOWER_LIMIT
