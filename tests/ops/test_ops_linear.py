"""lean_linear vs the plain reference, stock parity, saved bytes, and bad input."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import saved_tensor_bytes
from lean_ops_util import DTYPES, check_against, make, nbytes, param
from leanformer.ops import lean_linear
from leanformer.reference import linear_ref

SHAPES = [((1, 7), 5), ((3, 5, 13), 11), ((2, 1, 17), 3)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("xshape,out", SHAPES)
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("noncontig", [False, True])
def test_linear_matches_reference(dtype, xshape, out, transposed, bias, noncontig):
    x = make(xshape, dtype, noncontig=noncontig)
    inn = xshape[-1]
    w = param(*((inn, out) if transposed else (out, inn)), dtype=dtype)
    b = param(out, dtype=dtype) if bias else None
    check_against(lambda x, w, b: lean_linear(x, w, b, transposed=transposed),
                  lambda x, w, b: linear_ref(x, w, b, transposed), [x, w, b], dtype)


def test_linear_bitwise_matches_stock_fp32():
    x, w, b = make((4, 6, 9)), param(5, 9), param(5)
    out, ref = lean_linear(x, w, b), F.linear(x, w, b)
    assert torch.equal(out, ref)
    wt = param(9, 5)   # HF Conv1D computes addmm(bias, x2d, W)
    assert torch.equal(lean_linear(x, wt, b, transposed=True), torch.addmm(b, x.view(-1, 9), wt).view(4, 6, 5))


def test_linear_autocast_bf16_matches_stock():
    x, w, b = make((3, 7, 10)), param(6, 10), param(6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = lean_linear(x, w, b)
        ref = F.linear(x, w, b)
    assert out.dtype == ref.dtype == torch.bfloat16 and torch.equal(out, ref)
    g = torch.randn_like(out)
    for a, r in zip(torch.autograd.grad(out, (x, w, b), g), torch.autograd.grad(ref, (x, w, b), g)):
        assert a.dtype == r.dtype
        torch.testing.assert_close(a, r)   # same bf16 ops in the same order


def test_linear_saves_input_and_weight_only():
    x, w, b = make((2, 5, 12)), param(7, 12), param(7)
    _, n = saved_tensor_bytes(lean_linear, x, w, b)
    assert n == nbytes(x, w)
    w.requires_grad_(False)             # frozen weight: x is not needed (dW not computed)
    _, n = saved_tensor_bytes(lean_linear, x, w, b)
    assert n == nbytes(w)


def test_linear_inplace_edit_of_saved_input_raises():
    x, w = make((3, 4)), param(2, 4)
    h = x * 1.0
    out = lean_linear(h, w)
    h.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_linear_double_backward_raises():
    x, w = make((3, 4)), param(2, 4)
    (gx,) = torch.autograd.grad(lean_linear(x, w).pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|differentiate"):
        gx.sum().backward()


def test_linear_bad_input():
    with pytest.raises(ValueError, match="does not match weight"):
        lean_linear(torch.randn(3, 4), torch.randn(2, 5))
    with pytest.raises(TypeError):
        lean_linear([1.0, 2.0], torch.randn(2, 2))
