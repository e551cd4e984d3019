"""SQuant: vectorised == the official loop (reference), the CASE guarantees, and bad input."""
import itertools

import pytest
import torch

from leanformer.quant.squant import squant_quantize, squant_round, squant_scale
from leanformer.reference.squant import squant_round_reference

MODES = ["squant", "squant-k", "squant-c", "squant-e"]


def _x(n, k, scale=3.0, kind="randn"):
    x = torch.randn(n, k) * scale
    if kind == "integers":  # sums exactly 0: the k = 0 / S = 0 paths
        x = x.round()
    elif kind == "clipped":  # beyond the code range: the t_max / t_min exclusions
        x = x.clamp(-8.6, 7.6)
    return x


@pytest.mark.parametrize("n,k,kernel", [(1, 1, None), (3, 13, None), (4, 24, 8), (5, 27, 9), (2, 7, 1), (6, 36, 4)])
@pytest.mark.parametrize("kind", ["randn", "integers", "clipped"])
def test_round_matches_reference(n, k, kernel, kind):
    x = _x(n, k, kind=kind)
    for mode in MODES:
        fast = squant_round(x, kernel_size=kernel, t_min=-8, t_max=7, mode=mode)
        ref = squant_round_reference(x, kernel_size=kernel, t_min=-8, t_max=7, mode=mode)
        assert torch.equal(fast, ref), mode


def _ref_quantize(weight, bits, group_size, symmetric, kernel, mode="squant"):
    """squant_quantize rebuilt from the reference rounding (same scale helper)."""
    n, k = weight.shape[0], weight[0].numel()
    gs = k if group_size is None else group_size
    w = weight.reshape(n, k // gs, gs).float()
    scale, zero = squant_scale(w, bits, symmetric, torch.float16)
    half = 2 ** (bits - 1)
    x, lo, hi = (w / scale, -half, half - 1) if symmetric else (w / scale + zero, 0, 2 * half - 1)
    q = squant_round_reference(x.reshape(n, k), kernel_size=kernel, t_min=lo, t_max=hi, mode=mode)
    return q.clamp(lo, hi).reshape(weight.shape)


@pytest.mark.parametrize("shape,group,kernel", [
    ((5, 3, 3, 3), None, 9),     # conv 3x3: kernel = 3x3 window
    ((4, 7, 1, 1), None, 1),     # conv 1x1: no kernel stage (official)
    ((3, 4, 3, 3), 18, 9),       # conv 3x3, groups of two kernels
    ((3, 13), None, None),       # Linear, prime K: channel stage only (official)
    ((4, 24), 8, 8),             # Linear with groups: the group is the kernel
])
@pytest.mark.parametrize("symmetric", [True, False])
def test_quantize_matches_reference(shape, group, kernel, symmetric):
    weight = torch.randn(shape)
    qw = squant_quantize(weight, bits=4, group_size=group, symmetric=symmetric)
    expect = _ref_quantize(weight, 4, group, symmetric, kernel)
    assert torch.equal(qw.codes.float(), expect.float())
    assert qw.codes.shape == weight.shape
    assert qw.codes.dtype == (torch.int8 if symmetric else torch.uint8)


def test_noncontiguous_weight():
    weight = torch.randn(24, 6).t()  # (6, 24) non-contiguous
    a = squant_quantize(weight, bits=4, group_size=8)
    b = squant_quantize(weight.contiguous(), bits=4, group_size=8)
    assert torch.equal(a.codes, b.codes) and torch.equal(a.scale, b.scale)


def _errors(weight, qw, kernel):
    n = weight.shape[0]
    gs = weight[0].numel() if qw.group_size is None else qw.group_size
    x = weight.reshape(n, -1, gs).float() / qw.scale.float().unsqueeze(-1)
    e = (qw.codes.reshape(n, -1, gs).double() - x.double()).reshape(n, -1)  # (N, K) code-unit errors
    return e, e.view(n, -1, kernel).sum(-1), e.sum(-1)


@pytest.mark.parametrize("bits", [3, 4, 8])
def test_case_guarantees_conv(bits):
    weight = torch.randn(16, 8, 3, 3)
    rtn = squant_quantize(weight, bits=bits, mode="squant-e")
    k_only = squant_quantize(weight, bits=bits, mode="squant-k")
    full = squant_quantize(weight, bits=bits)
    e_rtn, ker_rtn, ch_rtn = _errors(weight, rtn, 9)
    e_k, ker_k, _ = _errors(weight, k_only, 9)
    e, ker, ch = _errors(weight, full, 9)
    eps = 1e-9
    # After K: every kernel within 0.5, and never further from 0 than RTN left it.
    assert ker_k.abs().max() <= 0.5 + eps
    assert bool((ker_k.abs() <= ker_rtn.abs() + eps).all())
    # After C: every channel within 0.5; C flips at most one element per kernel, so kernels stay below 1.
    assert ch.abs().max() <= 0.5 + eps
    assert ker.abs().max() < 1.0
    # Every code is floor or ceil of its real value, and in range.
    assert e.abs().max() < 1.0
    half = 2 ** (bits - 1)
    assert int(full.codes.min()) >= -half and int(full.codes.max()) <= half - 1
    # The objective SQuant optimises (E + K + C with unit weights): far below RTN's.
    obj = lambda e_, k_, c_: float((e_ ** 2).sum() + (k_ ** 2).sum() + (c_ ** 2).sum())  # noqa: E731
    assert obj(e, ker, ch) < obj(e_rtn, ker_rtn, ch_rtn)
    assert float((ch ** 2).sum()) < 0.2 * float((ch_rtn ** 2).sum())


def test_kernel_stage_is_the_constrained_optimum():
    """Among all floor/ceil roundings with |kernel sum| <= 0.5, SQuant-K has the least squared error."""
    torch.manual_seed(1)
    for _ in range(20):
        x = torch.randn(1, 9) * 3
        q = squant_round(x, kernel_size=9, t_min=-100, t_max=100, mode="squant-k")[0]
        xs = x[0].double()
        lo, hi = torch.floor(xs), torch.ceil(xs)
        best = None
        for choice in itertools.product([0, 1], repeat=9):
            cand = torch.where(torch.tensor(choice, dtype=torch.bool), hi, lo)
            err = cand - xs
            if abs(float(err.sum())) <= 0.5 and (best is None or float((err ** 2).sum()) < best - 1e-12):
                best = float((err ** 2).sum())
        assert abs(float(((q - xs) ** 2).sum()) - best) < 1e-9


def test_linear_per_channel_runs_channel_stage_only():
    weight = torch.randn(8, 40)
    a = squant_quantize(weight, bits=4)
    b = squant_quantize(weight, bits=4, mode="squant-c")
    assert torch.equal(a.codes, b.codes)
    _, _, ch = _errors(weight, a, 40)
    assert ch.abs().max() <= 0.5 + 1e-9


def test_asymmetric_official_scale_and_zero():
    weight = torch.randn(4, 3, 3, 3) + 0.3
    qw = squant_quantize(weight, bits=4, symmetric=False, scale_dtype=torch.float32)
    w = weight.reshape(4, -1)
    expect_scale = (w.amax(1) - w.amin(1)) / 15
    torch.testing.assert_close(qw.scale[:, 0], expect_scale, rtol=1e-6, atol=0)
    assert torch.equal(qw.zero[:, 0], -torch.round(w.amin(1) / qw.scale[:, 0]))
    assert int(qw.codes.min()) >= 0 and int(qw.codes.max()) <= 15
    # Better output fidelity than RTN on inputs with a non-zero mean (what the C term targets).
    rtn = squant_quantize(weight, bits=4, symmetric=False, mode="squant-e", scale_dtype=torch.float32)
    xin = torch.rand(256, 3, 8, 8)
    ref = torch.nn.functional.conv2d(xin, weight)
    err = lambda q: float((torch.nn.functional.conv2d(xin, q.dequantize()) - ref).pow(2).mean())  # noqa: E731
    assert err(qw) < err(rtn)


def test_dequantize_close_to_weight():
    weight = torch.randn(32, 64)
    qw = squant_quantize(weight, bits=8, group_size=32)
    sqnr = 10 * torch.log10(weight.pow(2).sum() / (weight - qw.dequantize()).pow(2).sum())
    assert sqnr > 35  # int8 g32: ~40 dB expected


def test_bad_input():
    w = torch.randn(4, 12)
    with pytest.raises(ValueError, match="bits"):
        squant_quantize(w, bits=1)
    with pytest.raises(ValueError, match="bits"):
        squant_quantize(w, bits=9)
    with pytest.raises(ValueError, match="group_size"):
        squant_quantize(w, bits=4, group_size=5)
    for bad in (float("nan"), float("inf")):
        w2 = w.clone()
        w2[1, 2] = bad
        with pytest.raises(ValueError, match="NaN or inf"):
            squant_quantize(w2, bits=4)
    with pytest.raises(ValueError, match="multiple of the conv kernel"):
        squant_quantize(torch.randn(2, 4, 3, 3), bits=4, group_size=4)
    with pytest.raises(ValueError, match="mode"):
        squant_quantize(w, bits=4, mode="squant-x")
    with pytest.raises(ValueError, match="kernel_size"):
        squant_quantize(w, bits=4, kernel_size=5)
    with pytest.raises(TypeError):
        squant_quantize(torch.ones(4, 4, dtype=torch.int32), bits=4)


def test_bf16_weight_equals_its_fp32_copy():
    weight = torch.randn(6, 4, 3, 3).to(torch.bfloat16)
    a = squant_quantize(weight, bits=4)
    b = squant_quantize(weight.float(), bits=4)
    assert torch.equal(a.codes, b.codes) and torch.equal(a.scale, b.scale)
