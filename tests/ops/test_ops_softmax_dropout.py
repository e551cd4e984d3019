"""Eager attention's dropout(softmax(s)) @ v keeping P, V and a 1-bit mask."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import TOL, saved_tensor_bytes
from lean_ops_util import DTYPES, check_against, make, nbytes
from leanformer.ops import lean_softmax_dropout_matmul
from leanformer.reference import softmax_dropout_matmul_ref


def _stock(s, v, p, softmax_dtype=None):
    probs = F.softmax(s, -1) if softmax_dtype is None else F.softmax(s, -1, dtype=softmax_dtype).to(v.dtype)
    return torch.matmul(F.dropout(probs, p), v)


@pytest.mark.parametrize("p", [0.0, 0.1])
@pytest.mark.parametrize("shape", [(1, 1, 5, 7, 3), (2, 3, 11, 11, 4)])
def test_equals_stock_eager_attention(p, shape):
    B, H, S, T, D = shape
    s, v = make((B, H, S, T), scale=2.0), make((B, H, T, D), noncontig=True)
    torch.manual_seed(5)
    out, n = saved_tensor_bytes(lean_softmax_dropout_matmul, s, v, p)
    torch.manual_seed(5)
    ref, n_stock = saved_tensor_bytes(_stock, s, v, p)
    assert torch.equal(out, ref)
    g = torch.randn_like(out)
    for a, r in zip(torch.autograd.grad(out, (s, v), g), torch.autograd.grad(ref, (s, v), g)):
        torch.testing.assert_close(a, r, **TOL[torch.float32])
    probs = B * H * S * T * 4
    mask = (B * H * S * T + 7) // 8 if p > 0 else 0
    assert n == probs + nbytes(v) + mask                       # P, V, 1-bit mask
    if p > 0:
        assert n_stock == 3 * probs + nbytes(v)                # P, fp32 noise, dropout(P), V


@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference_with_known_mask(dtype):
    s, v = make((2, 2, 6, 9), dtype, scale=2.0), make((2, 2, 9, 5), dtype)
    torch.manual_seed(9)
    keep = torch.empty(2, 2, 6, 9).bernoulli_(0.8).bool()      # the draw lean_dropout makes on CPU
    torch.manual_seed(9)
    check_against(lambda s, v: lean_softmax_dropout_matmul(s, v, 0.2),
                  lambda s, v: softmax_dropout_matmul_ref(s, v, keep, 0.2), [s, v], dtype)


def test_llama_style_fp32_softmax_in_bf16():
    s, v = make((1, 2, 7, 7), torch.bfloat16, scale=2.0), make((1, 2, 7, 4), torch.bfloat16)
    out = lean_softmax_dropout_matmul(s, v, 0.0, softmax_dtype=torch.float32)
    ref = _stock(s, v, 0.0, torch.float32)
    assert out.dtype == ref.dtype == torch.bfloat16 and torch.equal(out, ref)
    g = torch.randn_like(out)
    for a, r in zip(torch.autograd.grad(out, (s, v), g), torch.autograd.grad(ref, (s, v), g)):
        torch.testing.assert_close(a.float(), r.float(), **TOL[torch.bfloat16])


def test_bad_shapes():
    with pytest.raises(ValueError, match="line up"):
        lean_softmax_dropout_matmul(torch.randn(1, 2, 3, 4), torch.randn(1, 2, 5, 6))
