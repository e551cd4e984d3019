"""Activations keeping only the pre-activation, activation -> projection fusion, and the gated product."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import TOL, saved_tensor_bytes
from lean_ops_util import DTYPES, check_against, make, nbytes, param
from leanformer.ops import ACTIVATIONS, lean_activation, lean_gated_act, lean_gelu, lean_linear, lean_rms_norm
from leanformer.ops.activation import act_forward
from leanformer.reference import ACTIVATION_REFS, gated_ref, linear_ref

KINDS = sorted(ACTIVATIONS)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape,noncontig", [((1, 7), False), ((3, 5, 13), True), ((2, 1, 17), False)])
def test_activation_matches_reference(dtype, kind, shape, noncontig):
    x = make(shape, dtype, noncontig=noncontig, scale=3.0)
    check_against(lambda x: lean_activation(x, kind), ACTIVATION_REFS[kind], [x], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_activation_matches_its_implementation(dtype, kind):
    """Forward equals the implementation it replaces bit for bit. Input gradient: bit for bit for the
    kernels (same aten backward) and QuickGELU (same autograd chain); the Python GELU formulas use the
    fused GELU backward of the same function: last-ulp (fp32) / bf16-rounding differences."""
    x = make((4, 33), dtype, scale=4.0)
    out, ref = lean_activation(x, kind), act_forward(kind, x)
    assert torch.equal(out, ref)
    g = torch.randn_like(out)
    got, want = torch.autograd.grad(out, x, g)[0], torch.autograd.grad(ref, x, g)[0]
    if kind in ("gelu", "gelu_tanh", "silu", "quick_gelu"):
        assert torch.equal(got, want)
    else:
        torch.testing.assert_close(got.float(), want.float(), **TOL[dtype])


@pytest.mark.parametrize("kind", ["gelu", "gelu_new", "silu"])
@pytest.mark.parametrize("transposed", [False, True])
def test_activation_to_linear_saves_only_preactivation(kind, transposed):
    a = make((2, 5, 24), scale=2.0)
    W = param(*((24, 6) if transposed else (6, 24)))
    out, n = saved_tensor_bytes(lambda: lean_linear(lean_activation(a, kind), W, transposed=transposed))
    assert n == nbytes(a, W)
    _, n_stock = saved_tensor_bytes(lambda: lean_linear(act_forward(kind, a), W, transposed=transposed))
    extra = {"gelu": 1, "silu": 1, "gelu_new": 4}[kind]   # GPT-2's Python GELU saves 4 I-wide tensors, the kernels 1
    assert n_stock - n == extra * nbytes(a)
    check_against(lambda a, W: lean_linear(lean_activation(a, kind), W, transposed=transposed),
                  lambda a, W: linear_ref(ACTIVATION_REFS[kind](a), W, transposed=transposed), [a, W], torch.float32)


def test_activation_under_autocast_matches_stock():
    a, W = make((3, 40), scale=2.0), param(8, 40)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = lean_linear(lean_gelu(a), W)
        ref = F.linear(F.gelu(a), W)
    assert torch.equal(out, ref)
    g = torch.randn_like(out)
    for x, r in zip(torch.autograd.grad(out, (a, W), g), torch.autograd.grad(ref, (a, W), g)):
        torch.testing.assert_close(x, r, **TOL[torch.float32])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["silu", "gelu", "gelu_tanh"])
def test_gated_matches_reference(dtype, kind):
    g, u = make((3, 5, 19), dtype, scale=2.0), make((3, 5, 19), dtype, noncontig=True)
    check_against(lambda g, u: lean_gated_act(g, u, kind), lambda g, u: gated_ref(g, u, kind), [g, u], dtype)


def _llama_mlp(x, wn, Wg, Wu, Wd, lean):
    if lean:
        h = lean_rms_norm(x, wn)
        return lean_linear(lean_gated_act(lean_linear(h, Wg), lean_linear(h, Wu)), Wd)
    h32 = x.float()
    h = wn * (h32 * torch.rsqrt(h32.pow(2).mean(-1, keepdim=True) + 1e-6)).to(x.dtype)
    return F.linear(F.silu(F.linear(h, Wg)) * F.linear(h, Wu), Wd)


@pytest.mark.parametrize("dtype", DTYPES)
def test_llama_mlp_chain_saves_minimum(dtype):
    """RMSNorm -> gate/up -> silu(g)*u -> down saves x, rstd, g, u and the weights: nothing else."""
    H, I = 16, 40
    x = make((2, 3, H), dtype)
    wn, Wg, Wu, Wd = (param(H, dtype=dtype, offset=1.0), param(I, H, dtype=dtype), param(I, H, dtype=dtype),
                      param(H, I, dtype=dtype))
    out, n = saved_tensor_bytes(lambda: _llama_mlp(x, wn, Wg, Wu, Wd, True))
    gu = 2 * 2 * 3 * I * x.element_size()
    assert n == nbytes(x, wn, Wg, Wu, Wd) + 2 * 3 * 4 + gu    # + fp32 rstd per row + g + u
    _, n_stock = saved_tensor_bytes(lambda: _llama_mlp(x, wn, Wg, Wu, Wd, False))
    if dtype == torch.float32:  # stock also keeps x*rstd, the norm output, silu(g) and silu(g)*u
        assert n_stock - n == 2 * nbytes(x) + gu
    else:                       # ... plus fp32 copies of x (HF upcasts before the statistics)
        assert n_stock - n > 2 * nbytes(x) + gu
    check_against(lambda *t: _llama_mlp(*t, True), lambda *t: _llama_mlp(*t, False), [x, wn, Wg, Wu, Wd], dtype,
                  same_dtype=True)


def test_gated_bad_input():
    with pytest.raises(ValueError, match="shapes differ"):
        lean_gated_act(torch.randn(2, 3), torch.randn(2, 4))
    with pytest.raises(ValueError, match="unknown activation"):
        lean_activation(torch.randn(2), "relu6")


@pytest.mark.parametrize("op", ["act", "gated"])
def test_inplace_edit_of_saved_preactivation_raises(op):
    a = make((3, 8)) * 1.0
    u = make((3, 8))
    out = lean_activation(a, "gelu") if op == "act" else lean_gated_act(a, u)
    a.mul_(2.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()
