"""LayerNorm / RMSNorm Functions and the norm -> projection fusion (recipe)."""
from __future__ import annotations

import gc
import weakref

import pytest
import torch
import torch.nn.functional as F

from conftest import TOL, saved_tensor_bytes
from lean_ops_util import DTYPES, check_against, make, nbytes, param
from leanformer.ops import find_recipe, lean_layer_norm, lean_linear, lean_rms_norm
from leanformer.reference import layer_norm_ref, linear_ref, rms_norm_ref


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,norm", [((1, 7), (7,)), ((3, 5, 13), (13,)), ((2, 3, 4, 5), (4, 5))])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("noncontig", [False, True])
def test_layer_norm_matches_reference(dtype, shape, norm, affine, noncontig):
    x = make(shape, dtype, noncontig=noncontig, scale=3.0)
    w = param(*norm, dtype=dtype, scale=0.5, offset=1.0) if affine else None
    b = param(*norm, dtype=dtype) if affine else None
    check_against(lambda x, w, b: lean_layer_norm(x, norm, w, b, 1e-5),
                  lambda x, w, b: layer_norm_ref(x, norm, w, b, 1e-5), [x, w, b], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 7), (3, 5, 13), (2, 1, 17)])
@pytest.mark.parametrize("noncontig", [False, True])
def test_rms_norm_matches_reference(dtype, shape, noncontig):
    x = make(shape, dtype, noncontig=noncontig, scale=2.0)
    w = param(shape[-1], dtype=dtype, scale=0.5, offset=1.0)
    check_against(lambda x, w: lean_rms_norm(x, w, 1e-6), lambda x, w: rms_norm_ref(x, w, 1e-6), [x, w], dtype)


def _hf_rms(x, w, eps):   # LlamaRMSNorm.forward, verbatim ops
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return w * h.to(x.dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_matches_hf_formula(dtype):
    x, w = make((2, 3, 16), dtype), param(16, dtype=torch.float32, offset=1.0)
    out, ref = lean_rms_norm(x, w, 1e-6), _hf_rms(x, w, 1e-6)
    assert out.dtype == ref.dtype and torch.equal(out, ref)           # same ops in the same order
    g = torch.randn_like(out)
    for a, r in zip(torch.autograd.grad(out, (x, w), g), torch.autograd.grad(ref, (x, w), g)):
        assert a.dtype == r.dtype
        # analytic backward vs autograd's chain: last-ulp (fp32) / rounding-order (bf16) differences
        torch.testing.assert_close(a.float(), r.float(), **TOL[dtype])


def test_layer_norm_bitwise_matches_stock_fp32():
    x, w, b = make((4, 6, 9), scale=3.0), param(9, offset=1.0), param(9)
    out, ref = lean_layer_norm(x, (9,), w, b), F.layer_norm(x, (9,), w, b)
    assert torch.equal(out, ref)
    g = torch.randn_like(out)
    for a, r in zip(torch.autograd.grad(out, (x, w, b), g), torch.autograd.grad(ref, (x, w, b), g)):
        assert torch.equal(a, r)     # same native kernels


def _ln_chain(x, w, b, weights, lean=True):
    """LN -> several projections (BERT Q/K/V); returns the concatenated outputs. ``lean=False``: the
    reference in fp32/fp64, stock ops in bf16 (see check_against ``same_dtype``)."""
    if lean:
        y = lean_layer_norm(x, (x.shape[-1],), w, b)
        return torch.cat([lean_linear(y, W, bb) for W, bb in weights], -1)
    if x.dtype == torch.bfloat16:
        y = F.layer_norm(x, (x.shape[-1],), w, b)
        return torch.cat([F.linear(y, W, bb) for W, bb in weights], -1)
    y = layer_norm_ref(x, (x.shape[-1],), w, b)
    return torch.cat([linear_ref(y, W, bb) for W, bb in weights], -1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_proj", [1, 3])
def test_layer_norm_to_linear_chain_saves_input_and_stats(dtype, n_proj):
    H, O = 13, 7
    x = make((2, 5, H), dtype, scale=2.0)
    w, b = param(H, dtype=dtype, offset=1.0), param(H, dtype=dtype)
    weights = [(param(O, H, dtype=dtype), param(O, dtype=dtype)) for _ in range(n_proj)]
    flat = [t for pair in weights for t in pair]
    out, n = saved_tensor_bytes(lambda: _ln_chain(x, w, b, weights))
    rows = 2 * 5
    stat_bytes = 2 * rows * torch.empty((), dtype=dtype).element_size()   # CPU keeps stats in the input dtype
    # x + gamma + beta + mean + rstd (row stats) + each W; no normalised output, no copies
    assert n == nbytes(x, w, b, *(W for W, _ in weights)) + stat_bytes
    def stock():
        y = F.layer_norm(x, (H,), w, b)
        return torch.cat([F.linear(y, W, bb) for W, bb in weights], -1)

    _, n_stock = saved_tensor_bytes(stock)
    assert n_stock - n == nbytes(x)    # stock also saves the LN output once
    check_against(lambda x, w, b, *ws: _ln_chain(x, w, b, list(zip(ws[::2], ws[1::2]))),
                  lambda x, w, b, *ws: _ln_chain(x, w, b, list(zip(ws[::2], ws[1::2])), lean=False),
                  [x, w, b, *flat], dtype, same_dtype=dtype == torch.bfloat16)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_to_linear_chain_saves_input_and_rstd(dtype):
    x, w, W = make((3, 4, 16), dtype), param(16, dtype=dtype, offset=1.0), param(5, 16, dtype=dtype)
    out, n = saved_tensor_bytes(lambda: lean_linear(lean_rms_norm(x, w), W))
    assert n == nbytes(x, w, W) + 3 * 4 * 4          # + rstd (fp32, one per row)
    ref = (lambda x, w, W: F.linear(_hf_rms(x, w, 1e-6), W)) if dtype == torch.bfloat16 else \
        (lambda x, w, W: linear_ref(rms_norm_ref(x, w), W))
    check_against(lambda x, w, W: lean_linear(lean_rms_norm(x, w), W), ref, [x, w, W], dtype,
                  same_dtype=dtype == torch.bfloat16)


def test_chain_under_bf16_autocast_matches_stock_and_saves_less():
    H = 12
    x, w, b, W, bb = make((2, 5, H)), param(H, offset=1.0), param(H), param(7, H), param(7)

    def run(ln, lin):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return lin(ln(x, (H,), w, b), W, bb)

    out, n = saved_tensor_bytes(run, lean_layer_norm, lean_linear)
    ref, n_stock = saved_tensor_bytes(run, F.layer_norm, F.linear)
    assert out.dtype == ref.dtype == torch.bfloat16 and torch.equal(out, ref)
    g = torch.randn_like(out)
    for a, r in zip(torch.autograd.grad(out, (x, w, b, W, bb), g), torch.autograd.grad(ref, (x, w, b, W, bb), g)):
        assert a.dtype == r.dtype
        torch.testing.assert_close(a, r, **TOL[torch.float32])   # same ops; rebuilt LN output bit-identical
    assert n_stock - n == x.numel() * 2                           # stock's bf16 copy of the LN output


def test_recipe_rebuild_is_bit_identical():
    x, w, b = make((3, 7, 11), scale=3.0), param(11, offset=1.0), param(11)
    for y in (lean_layer_norm(x, (11,), w, b), lean_rms_norm(x, w)):
        recipe, tensors = find_recipe(y)
        assert torch.equal(recipe.recompute(*tensors), y)


def test_inplace_edit_of_norm_output_falls_back_to_plain_saving():
    x, w, b, W = make((2, 3, 8)), param(8, offset=1.0), param(8), param(4, 8)

    def run(ln, lin):
        y = ln(x, (8,), w, b)
        y.mul_(2.0)                   # the recipe would rebuild the un-doubled y: must not be used
        return lin(y, W)

    out, ref = run(lean_layer_norm, lean_linear), run(F.layer_norm, F.linear)
    g = torch.randn_like(out)
    for a, r in zip(torch.autograd.grad(out, (x, w, b, W), g), torch.autograd.grad(ref, (x, w, b, W), g)):
        torch.testing.assert_close(a, r, **TOL[torch.float32])


def test_inplace_edit_of_norm_input_raises():
    w, b, W = param(8, offset=1.0), param(8), param(4, 8)
    x = make((2, 8)) * 1.0
    out = lean_linear(lean_layer_norm(x, (8,), w, b), W)
    x.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_recipe_keeps_nothing_alive_after_backward():
    w, b, W = param(8, offset=1.0), param(8), param(4, 8)
    src = make((2, 8))
    x = src * 1.0
    ref_x = weakref.ref(x)
    y = lean_layer_norm(x, (8,), w, b)
    out = lean_linear(y, W)
    del x
    gc.collect()
    assert ref_x() is not None            # saved for backward: alive
    out.sum().backward()
    del out
    gc.collect()
    assert ref_x() is None                # y (kept by the caller) does not keep the norm input alive
    assert find_recipe(y) is None         # and a later consumer of y saves y itself


def test_norm_bad_input():
    with pytest.raises(ValueError, match="normalized_shape"):
        lean_layer_norm(torch.randn(3, 4), (5,))
    with pytest.raises(ValueError, match="does not match weight"):
        lean_rms_norm(torch.randn(3, 4), torch.randn(5))
