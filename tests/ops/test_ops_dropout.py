"""Dropout with a 1-bit mask: bit packing, stock parity, saved bytes, determinism under checkpointing."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from conftest import saved_tensor_bytes
from lean_ops_util import DTYPES, make, nbytes, param
from leanformer.ops import lean_dropout, lean_layer_norm, lean_linear, pack_bits, unpack_bits
from leanformer.ops.bitpack import pack_bits_torch, unpack_bits_torch
from leanformer.reference import dropout_ref


@pytest.mark.parametrize("shape", [(1,), (7,), (8,), (3, 5, 13), (2, 64)])
def test_pack_unpack_roundtrip(shape):
    mask = torch.rand(shape) > 0.4
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == (mask.numel() + 7) // 8
    assert torch.equal(unpack_bits(packed, mask.shape), mask)
    # the torch formulation (other devices, torch.compile) gives the same bytes
    assert torch.equal(pack_bits_torch(mask), packed)
    assert torch.equal(unpack_bits_torch(packed, mask.numel()).view(mask.shape), mask)
    with pytest.raises(ValueError, match="uint8 bytes"):
        unpack_bits(packed[:0], (9, 9))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("shape,noncontig", [((1, 7), False), ((3, 5, 13), True)])
def test_dropout_equals_stock_for_same_seed(dtype, p, shape, noncontig):
    x = make(shape, dtype, noncontig=noncontig)
    torch.manual_seed(7)
    out = lean_dropout(x, p)
    after = torch.rand(1)                      # RNG stream advanced exactly as stock advances it
    torch.manual_seed(7)
    ref = F.dropout(x, p)
    assert torch.equal(out, ref) and torch.equal(after, torch.rand(1))
    g = torch.randn_like(out)
    assert torch.equal(torch.autograd.grad(out, x, g)[0], torch.autograd.grad(ref, x, g)[0])
    keep = out != 0 if p < 1 else torch.zeros_like(x, dtype=torch.bool)
    torch.testing.assert_close(out, dropout_ref(x, keep | (x == 0), p) if p < 1 else x * 0)


def test_dropout_saves_one_bit_per_element():
    x = make((3, 5, 13))
    _, n = saved_tensor_bytes(lean_dropout, x, 0.1)
    assert n == (x.numel() + 7) // 8                  # 25 bytes for 195 elements
    _, n_stock = saved_tensor_bytes(F.dropout, x, 0.1)
    assert n_stock == x.numel() * 4                   # CPU F.dropout keeps an fp32 noise tensor


def test_dropout_identity_cases_save_nothing():
    x = make((4, 9))
    for p, training in ((0.0, True), (0.3, False)):
        out, n = saved_tensor_bytes(lean_dropout, x, p, training)
        assert out is x and n == 0
    with pytest.raises(ValueError, match="p must be in"):
        lean_dropout(x, 1.5)


def _block(x, w, b, W, lean):
    """dropout -> residual add -> LayerNorm -> projection (BERT's output sub-layer feeding the next layer)."""
    drop, ln, lin = (lean_dropout, lean_layer_norm, lean_linear) if lean else (F.dropout, F.layer_norm, F.linear)
    h = drop(x @ W.t(), 0.1) + x
    return lin(ln(h, (x.shape[-1],), w, b), W)


def test_dropout_residual_norm_chain_saves_mask_input_and_stats():
    H = 16
    x, w, b, W = make((2, 5, H)), param(H, offset=1.0), param(H), param(H, H)
    out, n = saved_tensor_bytes(_block, x, w, b, W, True)
    rows = 10
    # x and W (first matmul), the 1-bit mask, the LN input h + gamma + beta + 2 row stats; nothing else
    assert n == nbytes(x, W, w, b) + (x.numel() + 7) // 8 + x.numel() * 4 + 2 * rows * 4


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_dropout_is_deterministic_under_checkpointing(use_reentrant):
    H = 16
    x, w, b, W = make((2, 5, H)), param(H, offset=1.0), param(H), param(H, H)
    torch.manual_seed(3)
    out = _block(x, w, b, W, True)
    g = torch.randn_like(out)
    ref = torch.autograd.grad(out, (x, w, b, W), g)
    torch.manual_seed(3)
    out_ck = checkpoint(_block, x, w, b, W, True, use_reentrant=use_reentrant)
    assert torch.equal(out_ck, out)
    out_ck.backward(g)               # (reentrant checkpoint does not support autograd.grad)
    for t, r in zip((x, w, b, W), ref):
        assert torch.equal(t.grad, r)  # recompute redrew the same mask: gradients bit-identical
    torch.manual_seed(3)
    stock = _block(x, w, b, W, False)
    assert torch.equal(stock, out)


def test_dropout_double_backward_raises():
    x = make((4, 6))
    (gx,) = torch.autograd.grad(lean_dropout(x, 0.2).pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        gx.sum().backward()
