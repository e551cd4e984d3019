"""Native quantization CPU ops (W8A8, int4 batch paths) vs the eager reference: bit-identical; safe fallback."""
import os

import pytest
import torch

from leanformer.quant import QuantizedLinear, quantize_rtn, set_policy
from leanformer.quant import kernels, native
from leanformer.quant.native import native_ops, native_status


@pytest.fixture(autouse=True)
def _native_on():
    set_policy(native=True)
    yield
    set_policy(native=True)


def _rows(m, k, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen) * torch.logspace(-3, 3, m).unsqueeze(-1)  # rows from 1e-3 to 1e3
    x[0] = 0.0  # an all-zero row: the 1e-8 floor on the scale
    return x


@pytest.mark.parametrize("m, k", [(1, 1), (3, 13), (4, 33), (2, 47), (37, 64), (256, 1536)])  # tails of 16 and 32
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_quantize_rows_is_bit_identical(ops, m, k, seed):
    x = _rows(m, k, seed)
    codes, scale, finite = ops.quantize_rows(x)
    ref_codes, ref_scale = kernels.quantize_per_token(x)
    assert bool(finite) and torch.equal(codes, ref_codes) and torch.equal(scale, ref_scale)


def test_quantize_rows_reports_non_finite_and_dispatch_falls_back(ops):
    x = _rows(4, 16, 0)
    x[2, 5] = float("nan")
    assert not bool(ops.quantize_rows(x)[2])
    x[2, 5] = float("inf")
    assert not bool(ops.quantize_rows(x)[2])
    codes, scale = kernels.quantize_activations(x)  # the eager path's behaviour, whatever it is
    ref_codes, ref_scale = kernels.quantize_per_token(x)
    assert torch.equal(codes, ref_codes) and torch.equal(scale, ref_scale)
    strided = _rows(5, 32, 1)[:, ::2]  # non-contiguous (the pooler's first-token rows): the native op on a copy
    assert all(torch.equal(a, b) for a, b in zip(kernels.quantize_activations(strided),
                                                 kernels.quantize_per_token(strided)))


def test_a_strided_view_is_quantized_by_the_native_op(ops, monkeypatch):
    eager = []
    real = kernels.quantize_per_token
    monkeypatch.setattr(kernels, "quantize_per_token", lambda x: eager.append(1) or real(x))
    rows = _rows(6, 3 * 64, 2).view(6, 3, 64)[:, 0]  # (6, 64) every third block of 64, as hidden[:, 0] is
    codes, scale = kernels.quantize_activations(rows)
    assert not eager
    ref_codes, ref_scale = real(rows)
    assert torch.equal(codes, ref_codes) and torch.equal(scale, ref_scale)


@pytest.mark.parametrize("with_bias", [True, False])
def test_rescale_is_bit_identical(ops, with_bias):
    gen = torch.Generator().manual_seed(3)
    acc = torch.randint(-(2 ** 25), 2 ** 25, (17, 40), dtype=torch.int32, generator=gen)  # > 2**24: rounding casts
    xs, ws, bias = torch.rand(17, 1, generator=gen), torch.rand(40, generator=gen), torch.randn(40, generator=gen)
    ref = acc.float().mul_(xs).mul_(ws.reshape(1, -1))
    if with_bias:
        ref.add_(bias)
    out = ops.rescale_int32(acc, xs, ws, bias if with_bias else torch.empty(0))
    assert torch.equal(out, ref)


def test_native_ops_reject_bad_input(ops):
    with pytest.raises(RuntimeError, match="float32"):
        ops.quantize_rows(torch.randn(2, 8, dtype=torch.bfloat16))
    with pytest.raises(RuntimeError, match="int32"):
        ops.rescale_int32(torch.zeros(2, 3), torch.ones(2, 1), torch.ones(3), torch.empty(0))


def test_w8a8_module_is_bit_identical_with_and_without_native(ops):
    lin = torch.nn.Linear(96, 48)
    mod = QuantizedLinear.from_float(lin, quantize_rtn(lin.weight, bits=8), act_bits=8)
    x = torch.randn(2, 7, 96) * 4
    with torch.no_grad():
        fast = mod(x)
        set_policy(native=False)
        slow = mod(x.clone())
    assert torch.equal(fast, slow)


def test_failed_build_warns_once_and_uses_the_eager_path(monkeypatch):
    monkeypatch.setattr(native, "_STATE", {})
    monkeypatch.setattr(native, "_SOURCES", [native._SOURCES[0].with_name("missing.cpp")])
    monkeypatch.setattr(native, "_extension_name", lambda: "leanformer_missing_source_test")
    with pytest.warns(RuntimeWarning, match="unavailable"):
        assert native_ops() is None
    assert native_ops() is None and native_status().startswith("unavailable")
    lin = torch.nn.Linear(32, 16)
    mod = QuantizedLinear.from_float(lin, quantize_rtn(lin.weight, bits=8), act_bits=8)
    x = torch.randn(3, 32)
    with torch.no_grad():
        out = mod(x)
    xq, xs = kernels.quantize_per_token(x)
    ref = torch._int_mm(xq, mod.qweight.t()).float().mul_(xs).mul_(mod.scale.float().reshape(1, -1)).add_(mod.bias)
    assert torch.equal(out, ref)


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv("LEANFORMER_NATIVE", "0")
    assert native_ops() is None and native_status().startswith("off")


@pytest.mark.parametrize("q", [dict(bits=4, group_size=32, symmetric=False, clip_search=True),
                               dict(bits=4, group_size=64, symmetric=True), dict(bits=3, group_size=16)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int4_dequant_is_bit_identical(ops, q, dtype):
    lin = torch.nn.Linear(128, 48)
    mod = QuantizedLinear.from_float(lin, quantize_rtn(lin.weight, **q))
    fast = mod.dequantized_weight(dtype)
    set_policy(native=False)
    slow = mod.dequantized_weight(dtype)
    assert fast.dtype == dtype and torch.equal(fast, slow)


def test_weight_only_forward_is_bit_identical_with_and_without_native(ops):
    lin = torch.nn.Linear(128, 96)
    mod = QuantizedLinear.from_float(lin, quantize_rtn(lin.weight, bits=4, group_size=64, symmetric=False))
    x = torch.randn(3, 50, 128)  # 150 rows: the dequant (batch) path
    set_policy(compute_dtype="bfloat16")
    try:
        with torch.no_grad():
            fast = mod(x, kernel="dequant")
            set_policy(native=False)
            slow = mod(x.clone(), kernel="dequant")
    finally:
        set_policy(compute_dtype="auto")
    assert torch.equal(fast, slow)
    y = torch.randn(7, 96).to(torch.bfloat16)
    assert torch.equal(ops.bf16_to_float_add(y, mod.bias), y.float().add_(mod.bias))


def _ant_module(k, n, gs, granularity, bits=4):
    from leanformer.quant.ant import ant_quantize

    torch.manual_seed(k + n)
    lin = torch.nn.Linear(k, n)
    with torch.no_grad():  # uniform, Gaussian and heavy-tailed rows: ANT mixes its types
        lin.weight[::3] = torch.rand_like(lin.weight[::3]) - 0.5
        lin.weight[1::3] **= 3
    return QuantizedLinear.from_float(lin, ant_quantize(lin.weight, bits=bits, group_size=gs, granularity=granularity))


@pytest.mark.parametrize("k, gs, granularity, bits", [(128, 32, "tensor", 4), (128, 64, "channel", 4),
                                                      (128, 16, "group", 4), (96, None, "channel", 3),
                                                      (128, 32, "group", 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_codebook_dequant_is_bit_identical(ops, k, gs, granularity, bits, dtype):
    mod = _ant_module(k, 48, gs, granularity, bits)
    fast = mod.dequantized_weight(dtype)
    assert ("codebook_rows", dtype) in mod._cache  # the native pass ran
    set_policy(native=False)
    mod._cache.clear()
    slow = mod.dequantized_weight(dtype)
    assert fast.dtype == dtype and torch.equal(fast, slow)


def test_codebook_dequant_keeps_the_eager_path_where_it_does_not_apply(ops):
    odd = _ant_module(13, 16, None, "channel")  # one group of 13 codes: no group-planar layout
    odd.dequantized_weight(torch.float32)
    assert not any(isinstance(key, tuple) and key[0] == "codebook_rows" for key in odd._cache)
    eight = _ant_module(64, 16, 32, "tensor", bits=8)  # 256-entry table
    eight.dequantized_weight(torch.float32)
    assert not any(isinstance(key, tuple) and key[0] == "codebook_rows" for key in eight._cache)


def test_codebook_dequant_rejects_bad_ids(ops):
    planar = torch.zeros(2, 1, 16, dtype=torch.uint8)
    table, scale = torch.zeros(3, 16), torch.ones(2, 1)
    with pytest.raises(RuntimeError, match=r"ids: values in \[0, T\)"):
        ops.dequant_codebook_planar(planar, table, torch.tensor([[0], [3]], dtype=torch.int32), scale, False)
    with pytest.raises(RuntimeError, match="table"):
        ops.dequant_codebook_planar(planar, torch.zeros(3, 8), torch.zeros(2, 1, dtype=torch.int32), scale, False)


def test_the_kernels_run_on_torchs_intra_op_threads(ops):
    """The build must compile at::parallel_for as parallel (-fopenmp) and on torch's own OpenMP runtime, so that
    torch.set_num_threads governs it; before 2026-12-07 every native kernel ran on one core."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert ops.parallel_threads_used(64) == 1
        assert native_status() == "loaded, kernels on 1 of torch's 1 threads"
        if (os.cpu_count() or 1) >= 2:
            torch.set_num_threads(2)
            assert ops.parallel_threads_used(64) == 2
            assert native_status() == "loaded, kernels on 2 of torch's 2 threads"
    finally:
        torch.set_num_threads(before)


def test_openmp_only_where_torch_threads_are_openmp(monkeypatch):
    monkeypatch.setattr(native.sys, "platform", "linux")
    monkeypatch.setattr(torch.__config__, "parallel_info", lambda: "ATen parallel backend: OpenMP\n")
    assert native._parallel_flag() == "-fopenmp"
    monkeypatch.setattr(torch.__config__, "parallel_info", lambda: "ATen parallel backend: native thread pool\n")
    assert native._parallel_flag() == "-fopenmp-simd"  # OpenMP threads would not be torch's
    monkeypatch.setattr(torch.__config__, "parallel_info", lambda: "ATen parallel backend: OpenMP\n")
    monkeypatch.setattr(native.sys, "platform", "darwin")
    assert native._parallel_flag() == "-fopenmp-simd"  # Apple clang has no -fopenmp
