"""W4A8: int4 group codes requantized onto a per-channel int8 grid and run on W8A8's int8 products. The native
unpack equals the torch definition (``requantized_weight``) bit for bit, and every product equals the exact
int8 reference on it."""
import copy

import pytest
import torch

from leanformer.quant import QuantizedLinear, W4A8Config, quantize_, set_policy
from leanformer.quant import w4a8
from leanformer.quant.amx import int8_reference, pack_amx_weight
from leanformer.quant.w4a8 import (amx_w4a8_available, amx_w4a8_linear, amx_w4a8_status, pack_w4a8_codes,
                                   probe_layer, requantized_weight, unpack_w4a8, w4a8_tables)

needs_amx = pytest.mark.skipif(not amx_w4a8_available(), reason=f"W4A8 AMX: {amx_w4a8_status()}")


pytestmark = pytest.mark.usefixtures("kernel_policy_restored")


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_code_layout_value_by_value():
    n, k = 32, 128
    nibbles = (torch.arange(n * k) * 7 % 16).to(torch.uint8).view(n, k)
    codes = pack_w4a8_codes(nibbles)
    assert codes.shape == (2, 2, 16, 32)
    want = pack_amx_weight(nibbles.to(torch.int8))  # the int8 layout the unpacked weight must have
    low, high = codes & 0xF, codes >> 4
    assert torch.equal(low.to(torch.int8), want[..., 0::2]) and torch.equal(high.to(torch.int8), want[..., 1::2])


def test_code_layout_rejects_bad_shapes():
    with pytest.raises(ValueError, match="N % 16"):
        pack_w4a8_codes(torch.zeros(24, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8"):
        pack_w4a8_codes(torch.zeros(16, 64, dtype=torch.int8))


def test_requantized_weight_is_on_the_int8_grid_within_half_a_step():
    mod = probe_layer(48, 192, 32, False, _gen())
    w8, col_scale, inv = requantized_weight(mod)
    deq = mod.dequantized_weight(torch.float32)
    assert w8.dtype == torch.int8 and w8.abs().max() == 127  # every channel's largest weight lands on +-127
    err = (w8.float() * col_scale.unsqueeze(1) - deq).abs()
    assert (err <= col_scale.unsqueeze(1) * (0.5 + 1e-5)).all()  # half a step, plus float32 rounding of the scale
    assert torch.allclose(inv * col_scale, torch.ones_like(inv))


@pytest.mark.parametrize("n,k,gs,symmetric", [(16, 64, 32, False), (48, 192, 64, True), (32, 256, 128, False),
                                              (16, 128, None, True), (64, 64, 4, False)])
def test_native_unpack_equals_the_definition_bit_for_bit(ops, n, k, gs, symmetric):
    mod = probe_layer(n, k, gs, symmetric, _gen(n + k))
    codes, zero, scale, inv, _ = w4a8_tables(mod)
    got = unpack_w4a8(codes, zero, scale, inv, k if gs is None else gs)
    assert torch.equal(got, pack_amx_weight(requantized_weight(mod)[0]))


def test_native_unpack_rejects_mismatched_operands(ops):
    mod = probe_layer(32, 128, 64, False, _gen())
    codes, zero, scale, inv, _ = w4a8_tables(mod)
    with pytest.raises(RuntimeError, match="group_size"):
        ops.unpack_w4a8(codes, zero, scale, inv, 48)
    with pytest.raises(RuntimeError, match=r"zero / scale: \(G, N\)"):
        ops.unpack_w4a8(codes, zero[:1], scale, inv, 64)
    with pytest.raises(RuntimeError, match="inv"):
        ops.unpack_w4a8(codes, zero, scale, inv[:16], 64)
    with pytest.raises(RuntimeError, match="codes"):
        ops.unpack_w4a8(codes.to(torch.int8), zero, scale, inv, 64)


@needs_amx
@pytest.mark.parametrize("m", [1, 33, 200])
@pytest.mark.parametrize("gs", [32, 64])
def test_product_equals_the_exact_int8_reference(m, gs):
    mod = probe_layer(80, 384, gs, False, _gen(m))
    x = torch.randint(-127, 128, (m, 384), dtype=torch.int8, generator=_gen(1))
    rs = torch.rand(m, 1, generator=_gen(2)) + 0.01
    w8, col_scale, _ = requantized_weight(mod)
    got = amx_w4a8_linear(x, rs, w4a8_tables(mod), gs, mod.bias)
    assert torch.equal(got, int8_reference(x, rs, w8, col_scale, mod.bias))


@needs_amx
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rows", [1, 18, 200])
def test_module_is_bit_identical_on_every_int8_product(bias, rows):
    mod = probe_layer(96, 384, 32, False, _gen(rows))
    if not bias:
        mod.bias = None
    x = torch.randn(rows, 384, generator=_gen(3)) * 3
    set_policy(onednn_rows=1)
    with torch.no_grad():
        fast = mod(x)
        assert "w4a8_amx" in mod._cache and "w4a8_int8" not in mod._cache  # no int8 copy kept on this path
        set_policy(amx_int8=False)
        assert torch.equal(fast, mod(x.clone()))  # oneDNN on the cached int8 copy
        set_policy(onednn_int8=False)
        assert torch.equal(fast, mod(x.clone()))  # torch._int_mm


def test_eager_path_without_native_ops_equals_the_reference():
    from leanformer.quant.kernels import quantize_per_token

    mod = probe_layer(32, 128, 32, True, _gen())
    x = torch.randn(20, 128, generator=_gen(4))
    set_policy(native=False)
    with torch.no_grad():
        got = mod(x)
    xq, xs = quantize_per_token(x)
    w8, col_scale, _ = requantized_weight(mod)
    assert torch.equal(got, int8_reference(xq, xs, w8, col_scale, mod.bias))


def test_module_refuses_what_w4a8_cannot_run():
    with pytest.raises(ValueError, match="W4A8"):
        QuantizedLinear(64, 16, bits=3, group_size=32, symmetric=False, act_bits=8)
    with pytest.raises(ValueError, match="codebook"):
        QuantizedLinear(64, 16, bits=4, group_size=32, symmetric=False, codebook=True, act_bits=8)


def test_config_validates_its_fields():
    assert W4A8Config().bits == 4 and W4A8Config().group_size == 32
    for bad in (dict(group_size=30), dict(group_size=0), dict(fuse="yes"), dict(scale_dtype="int8"),
                dict(refine_steps=-1)):
        with pytest.raises(ValueError):
            W4A8Config(**bad)
    assert W4A8Config.from_dict(W4A8Config(group_size=64).to_dict()) == W4A8Config(group_size=64)


def test_quantize_gives_the_weight_only_codes_with_int8_activations():
    from leanformer.quant import WeightOnlyConfig

    model = torch.nn.Sequential(torch.nn.Linear(128, 64), torch.nn.ReLU(), torch.nn.Linear(64, 32))
    w4, w4a8_model = copy.deepcopy(model), copy.deepcopy(model)
    quantize_(w4, WeightOnlyConfig(bits=4, group_size=32, act_weighting=False))
    report = quantize_(w4a8_model, W4A8Config(act_weighting=False))
    assert len(report.layers) == 2
    for q4, q48 in ((w4[0], w4a8_model[0]), (w4[2], w4a8_model[2])):
        assert q48.act_bits == 8 and q48.bits == 4 and q4.act_bits is None
        assert torch.equal(q4.qweight, q48.qweight) and torch.equal(q4.scale, q48.scale)


def test_a_mismatching_probe_switches_the_path_off(monkeypatch):
    w4a8._check.cache_clear()
    try:
        monkeypatch.setattr(w4a8, "_probe_matches_reference", lambda: False)
        if not amx_w4a8_available() and "did not match" not in amx_w4a8_status():
            pytest.skip(f"no AMX path to switch off here: {amx_w4a8_status()}")
        assert not amx_w4a8_available() and "did not match" in amx_w4a8_status()
        mod = probe_layer(32, 128, 32, False, _gen())
        with torch.no_grad():
            mod(torch.randn(40, 128))
        assert "w4a8_amx" not in mod._cache and "w4a8_int8" in mod._cache
    finally:
        w4a8._check.cache_clear()


def test_status_without_building_says_not_checked_on_a_vnni_only_cpu(monkeypatch):
    # leanformer env (build=False) must not compile the native kernels to report W4A8 on a CPU with VNNI, no AMX
    from leanformer.quant import amx

    caches = (amx._check, amx._vnni_check, w4a8._check)
    for cache in caches:
        cache.cache_clear()
    try:
        monkeypatch.setattr(amx, "cpu_has", lambda *names: "vnni" in names)
        monkeypatch.setattr(amx, "native_built", lambda: False)
        status = amx_w4a8_status(build=False)
        assert status.startswith("not checked yet") and "W4A8 forward" in status
        assert w4a8._check.cache_info().currsize == 0  # nothing was checked (or built) to say so
    finally:
        for cache in caches:
            cache.cache_clear()
