"""Every kernel path of QuantizedLinear against a plain reference computed from the dequantized weight."""
import pytest
import torch
import torch.nn.functional as F

from conftest import TOL
from leanformer.quant import QuantizedLinear, quantize_rtn, set_policy
from leanformer.quant.kernels import _int4pack_ok, _int8pack_ok, choose_kernel, fast_bf16_cpu

needs_bf16 = pytest.mark.skipif(not fast_bf16_cpu(), reason="packed CPU kernels are used only with native bf16")


@pytest.fixture(autouse=True)
def _policy(kernel_policy_restored):
    # fixed crossovers for these tests; afterwards the CPU's own defaults come back (on AMX they are 24 / 24, and
    # leaving 96 behind sent a later test's int4 layers to a different kernel)
    set_policy(int8_rows=32, int4_rows=96, compute_dtype="auto", allow_pack_kernels=True, planar_cache=True,
               share_prepared_inputs=True)
    yield


def _module(n, k, **q):
    lin = torch.nn.Linear(k, n)
    lin.weight.data.mul_(0.5)
    act_bits = q.pop("act_bits", None)
    return QuantizedLinear.from_float(lin, quantize_rtn(lin.weight, **q), act_bits=act_bits)


def _inputs(m, k):
    x = torch.randn(m, 2 * k)[:, ::2]  # non-contiguous rows
    assert k == 1 or not x.is_contiguous()
    return x


def _ref(mod, x, dtype=torch.float32):
    """Plain reference: the dequantized weight, optionally with the kernel's bf16 rounding of x and scales."""
    w = mod.quantized_weight().dequantize()
    return F.linear(x.to(dtype).float(), w, mod.bias)


CASES = [  # (N, K, quantizer kwargs)
    (48, 64, dict(bits=8)),
    (48, 64, dict(bits=4, group_size=32, symmetric=False, clip_search=True)),
    (32, 128, dict(bits=4, group_size=64, symmetric=True)),
    (7, 13, dict(bits=4, symmetric=False)),  # odd shapes: no packed kernel applies
    (5, 39, dict(bits=8, group_size=13, symmetric=False)),
    (16, 32, dict(bits=3, group_size=32)),
]


@pytest.mark.parametrize("n, k, q", CASES)
@pytest.mark.parametrize("m", [1, 5, 37])
def test_dequant_path_fp32_equals_reference(n, k, q, m):
    set_policy(compute_dtype="float32")
    mod, x = _module(n, k, **q), _inputs(m, k)
    torch.testing.assert_close(mod(x, kernel="dequant"), _ref(mod, x), **TOL[torch.float32])


@pytest.mark.parametrize("n, k, q", CASES)
def test_dequant_path_bf16_equals_reference(n, k, q):
    set_policy(compute_dtype="bfloat16")
    mod, x = _module(n, k, **q), _inputs(9, k)
    out = mod(x, kernel="dequant")
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, _ref(mod, x, torch.bfloat16), **TOL[torch.bfloat16])


@needs_bf16
@pytest.mark.parametrize("n, k, q", [c for c in CASES if c[2]["bits"] == 8 and c[2].get("group_size") is None])
@pytest.mark.parametrize("m", [1, 3, 16, 40])
def test_int8pack_path(n, k, q, m):
    mod, x = _module(n, k, **q), _inputs(m, k)
    assert _int8pack_ok(mod)
    torch.testing.assert_close(mod(x, kernel="int8pack"), _ref(mod, x, torch.bfloat16), **TOL[torch.bfloat16])


@needs_bf16
@pytest.mark.parametrize("n, k, q", [c for c in CASES[1:3]])
@pytest.mark.parametrize("m", [1, 3, 16, 40])
def test_int4pack_path(n, k, q, m):
    mod, x = _module(n, k, **q), _inputs(m, k)
    assert _int4pack_ok(mod)
    torch.testing.assert_close(mod(x, kernel="int4pack"), _ref(mod, x, torch.bfloat16), **TOL[torch.bfloat16])
    mod.load_state_dict(mod.state_dict())  # loading drops the cached kernel layout; it is rebuilt identically
    torch.testing.assert_close(mod(x, kernel="int4pack"), _ref(mod, x, torch.bfloat16), **TOL[torch.bfloat16])


def _w8a8_reference(mod, x):
    """Per-token symmetric int8 activations times int8 weights, accumulated exactly in float64."""
    sx = x.abs().amax(-1, keepdim=True).clamp_min(1e-8) / 127
    xq = torch.clamp(torch.round(x / sx), -127, 127).double()
    qw = mod.quantized_weight()
    acc = xq @ qw.codes.double().T  # exact integer sums
    return (acc * sx.double() * qw.scale.double().T + mod.bias.double()).float()


@pytest.mark.parametrize("n, k", [(48, 64), (7, 13), (1, 1)])
@pytest.mark.parametrize("m", [1, 6, 33])
def test_w8a8_path(n, k, m):
    mod, x = _module(n, k, bits=8, act_bits=8), _inputs(m, k)
    assert choose_kernel(mod, m, x) == "w8a8"
    torch.testing.assert_close(mod(x), _w8a8_reference(mod, x), **TOL[torch.float32])


@needs_bf16
def test_auto_choice_by_rows_and_format():
    int4 = _module(48, 64, bits=4, group_size=32)
    odd = _module(7, 13, bits=4)
    x = torch.randn(1, 64)
    from leanformer.quant.amx_w4 import amx_w4_available

    int4_batch = "amx_w4" if amx_w4_available() else "dequant"  # leanformer's AMX kernel where it runs
    assert choose_kernel(int4, 1, x) == "int4pack"
    assert choose_kernel(int4, 96, x) == "int4pack" and choose_kernel(int4, 97, x) == int4_batch
    int8 = _module(48, 64, bits=8)
    assert choose_kernel(int8, 32, x) == "int8pack" and choose_kernel(int8, 33, x) == "dequant"
    assert choose_kernel(odd, 1, torch.randn(1, 13)) == "dequant"
    set_policy(allow_pack_kernels=False)
    assert choose_kernel(int4, 1, x) == int4_batch


def test_input_shapes_and_bad_input():
    mod = _module(48, 64, bits=4, group_size=32)
    x = torch.randn(2, 3, 64)
    assert mod(x).shape == (2, 3, 48)
    torch.testing.assert_close(mod(x)[1, 2], mod(x[1, 2:3])[0], **TOL[torch.bfloat16])
    with pytest.raises(ValueError, match="last dim"):
        mod(torch.randn(2, 63))
    with pytest.raises(TypeError, match="floating-point"):
        mod(torch.ones(2, 64, dtype=torch.long))
    with pytest.raises(ValueError, match="unknown kernel"):
        mod(torch.randn(2, 64), kernel="nope")
    with pytest.raises(ValueError, match="W8A8 needs 8-bit symmetric per-channel"):
        QuantizedLinear(64, 48, bits=8, group_size=32, act_bits=8)
    with pytest.raises(ValueError, match="W4A8"):  # 4-bit weights with int8 activations are W4A8 (test_quant_w4a8.py)
        QuantizedLinear(64, 48, bits=6, act_bits=8)


@needs_bf16
def test_int8pack_with_misaligned_weight():
    """safetensors returns tensors at arbitrary offsets; the raw kernel segfaults on them (seen here)."""
    mod = _module(48, 64, bits=8)
    buf = torch.empty(48 * 64 + 8, dtype=torch.int8)
    misaligned = buf[8:].view(48, 64)
    misaligned.copy_(mod.qweight)
    assert misaligned.data_ptr() % 64 != 0
    mod.qweight = misaligned
    x = _inputs(20, 64)
    torch.testing.assert_close(mod(x, kernel="int8pack"), _ref(mod, x, torch.bfloat16), **TOL[torch.bfloat16])


def _count_quantizations(monkeypatch):
    import leanformer.quant.kernels as kernels

    calls = []
    real = kernels.quantize_activations
    monkeypatch.setattr(kernels, "quantize_activations", lambda x2: calls.append(x2.shape) or real(x2))
    return calls


def test_w8a8_shares_one_activation_quantization_between_readers(monkeypatch):
    """q/k/v projections read one tensor: it is quantized once, and every output still equals the reference."""
    calls = _count_quantizations(monkeypatch)
    q, k, v = (_module(48, 64, bits=8, act_bits=8) for _ in range(3))
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        outs = [mod(x) for mod in (q, k, v)]
    assert len(calls) == 1
    for mod, out in zip((q, k, v), outs):
        torch.testing.assert_close(out, _w8a8_reference(mod, x.reshape(-1, 64)).view(2, 5, 48), **TOL[torch.float32])
    set_policy(share_prepared_inputs=False)
    with torch.no_grad():
        for mod in (q, k, v):
            mod(x)
    assert len(calls) == 4


def test_w8a8_shared_quantization_never_serves_stale_codes(monkeypatch):
    calls = _count_quantizations(monkeypatch)
    mod = _module(48, 64, bits=8, act_bits=8)
    x = torch.randn(6, 64)
    with torch.no_grad():
        mod(x)
        x.mul_(3.0)  # in-place write: the version counter moves, the codes must be recomputed
        torch.testing.assert_close(mod(x), _w8a8_reference(mod, x), **TOL[torch.float32])
        mod(x[1:])  # another view of the same memory is another input
        assert len(calls) == 3
        y = torch.randn(6, 64)  # a new tensor, even if it lands at a recycled address
        torch.testing.assert_close(mod(y), _w8a8_reference(mod, y), **TOL[torch.float32])
    with torch.inference_mode():  # inference tensors have no version counter: never reused, still right
        z = torch.randn(6, 64)
        before = len(calls)
        mod(z), mod(z)
        assert len(calls) == before + 2
        torch.testing.assert_close(mod(z), _w8a8_reference(mod, z), **TOL[torch.float32])


@pytest.mark.parametrize("n, k, q", [c for c in CASES if c[2]["bits"] <= 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_planar_cache_unpacks_the_same_weight(n, k, q, dtype):
    """The in-memory group-planar copy and the file layout dequantize to bit-identical weights."""
    mod = _module(n, k, **q)
    fast = mod.dequantized_weight(dtype)
    set_policy(planar_cache=False)
    mod.load_state_dict(mod.state_dict())  # drop caches
    slow = mod.dequantized_weight(dtype)
    assert torch.equal(fast, slow)
    torch.testing.assert_close(slow.float(), mod.quantized_weight().dequantize(), **TOL[dtype])


@pytest.mark.parametrize("amx, rows", [(True, (24, 24)), (False, (32, 96))])
def test_row_crossovers_follow_the_cpu_kind(monkeypatch, amx, rows):
    from leanformer.quant import kernels

    monkeypatch.setattr(kernels, "_amx_cpu", lambda: amx)
    policy = kernels.KernelPolicy()
    assert (policy.int8_rows, policy.int4_rows) == rows


@pytest.mark.parametrize("q", [dict(bits=4, group_size=32, symmetric=False), dict(bits=8), dict(bits=8, act_bits=8)])
def test_copies_and_pickles_drop_the_kernel_cache_and_follow_loaded_weights(q):
    import copy
    import io

    set_policy(onednn_rows=1)  # W8A8 caches oneDNN's packed weight, which cannot be copied or pickled
    try:
        mod, other = _module(48, 64, **dict(q)), _module(48, 64, **dict(q))
        x = torch.randn(200, 64)
        with torch.no_grad():
            y = mod(x)
            assert mod._cache  # layouts were built
            twin = copy.deepcopy(mod)
            assert torch.equal(twin(x), y)
            twin.load_state_dict(other.state_dict())  # must invalidate the copy's own cache, not the original's
            assert torch.equal(twin(x), other(x)) and torch.equal(mod(x), y)
            buf = io.BytesIO()
            torch.save(mod, buf)
            buf.seek(0)
            assert torch.equal(torch.load(buf, weights_only=False)(x), y)
    finally:
        set_policy(onednn_rows=128)
