"""Lean attention Function vs the plain eager reference: outputs and dq, dk, dv on awkward shapes, with
padding (bool / additive) masks, the causal flag, GQA, dropout (the same masks as stock F.dropout), fp32 and
bf16; and the bytes it saves, computed from the shapes."""
from __future__ import annotations

import pytest
import torch
from conftest import TOL

from leanformer.patch.attention.core import lean_attention
from leanformer.patch.attention.reference import reference_attention
from leanformer.profile import saved_bytes

# (batch, heads, kv heads, seq q, seq k, head dim, dropout, causal, mask kind)
CASES = [
    (1, 4, 4, 7, 7, 8, 0.0, False, None),
    (2, 4, 2, 13, 13, 8, 0.2, True, None),  # GQA + causal + dropout
    (3, 2, 2, 11, 11, 5, 0.1, False, "bool"),
    (2, 6, 3, 9, 9, 4, 0.3, False, "float"),
    (2, 6, 2, 5, 17, 4, 0.1, False, "head-bool"),  # Sq != Sk, per-head mask
    (1, 2, 1, 600, 600, 3, 0.1, True, None),  # several row chunks per batch element
]


def _inputs(b, h, hkv, sq, sk, d, kind, dtype=torch.float32):
    gen = torch.Generator().manual_seed(b * 100 + sq)
    q = torch.randn(b, sq, h, d, generator=gen).to(dtype).transpose(1, 2).requires_grad_()  # non-contiguous
    k = torch.randn(b, hkv, sk, d, generator=gen).to(dtype).requires_grad_()
    v = torch.randn(b, hkv, sk, d, generator=gen).to(dtype).requires_grad_()
    mask = None
    if kind == "bool":
        mask = torch.rand(b, 1, sq, sk, generator=gen) > 0.3
    elif kind == "head-bool":
        mask = torch.rand(b, h, sq, sk, generator=gen) > 0.3
    elif kind == "float":
        mask = torch.where(torch.rand(b, 1, sq, sk, generator=gen) > 0.3, 0.0, torch.finfo(torch.float32).min)
    return q, k, v, mask


def _check(mode, case, dtype, tol):
    b, h, hkv, sq, sk, d, p, causal, kind = case
    q, k, v, mask = _inputs(b, h, hkv, sq, sk, d, kind, dtype)
    torch.manual_seed(5)
    out = lean_attention(q, k, v, mask, dropout_p=p, is_causal=causal, mode=mode)
    torch.manual_seed(5)
    ref = reference_attention(q, k, v, mask, dropout_p=p, is_causal=causal)
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), g)
    want = torch.autograd.grad(ref, (q, k, v), g)
    torch.testing.assert_close(out, ref, **tol)
    for a, w, name in zip(got, want, "qkv"):
        torch.testing.assert_close(a, w, **tol, msg=lambda m, n=name: f"d{n}: {m}")


@pytest.mark.parametrize("mode", ["flash", "tempo"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_reference_fp32(mode, case):
    _check(mode, case, torch.float32, TOL[torch.float32])


@pytest.mark.parametrize("mode", ["flash", "tempo"])
def test_matches_reference_bf16(mode):
    _check(mode, CASES[1], torch.bfloat16, TOL[torch.bfloat16])


def test_sdpa_mode_matches_reference_without_dropout():
    _check("sdpa", CASES[0], torch.float32, TOL[torch.float32])


@pytest.mark.parametrize("mode", ["flash", "tempo"])
def test_saved_bytes_from_shapes(mode):
    b, h, s, d = 2, 4, 24, 8
    x = torch.randn(b, s, 3 * h * d, requires_grad=True)

    def run():
        qkv = x * 1.0  # one (B, S, 3H) storage, as GPT-2's c_attn output
        q, k, v = (t.view(b, s, h, d).transpose(1, 2) for t in qkv.split(h * d, -1))
        return lean_attention(q, k, v, dropout_p=0.1, mode=mode)

    out, got, _ = saved_bytes(run, exclude=(x,))
    unit = b * s * h * d * 4
    bits = b * h * s * -(-s // 8)  # 1-bit dropout mask, rows padded to a byte
    stat = b * h * s * s * 4 if mode == "tempo" else b * h * s * 4  # P, or the per-row logsumexp
    assert got == 3 * unit + unit + bits + stat  # q, k, v (one storage) + output + mask + stat
    assert out.is_contiguous()  # (B, S, h, d): the output projection saves this same storage


def test_inplace_edit_of_saved_tensor_raises():
    q, k, v, _ = _inputs(2, 2, 2, 5, 5, 4, None)
    for victim in ("v", "out"):
        vv = v * 1.0
        out = lean_attention(q * 1.0, k * 1.0, vv, mode="flash")
        with torch.no_grad():
            (vv if victim == "v" else out).add_(1.0)  # both are saved for backward
        with pytest.raises(RuntimeError, match="inplace"):
            out.sum().backward()


def test_bad_inputs_raise():
    q, k, v, _ = _inputs(1, 4, 4, 3, 3, 2, None)
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        lean_attention(q, k[:, :3], v[:, :3])
    with pytest.raises(ValueError, match="dropout_p"):
        lean_attention(q, k, v, dropout_p=1.0)
    with pytest.raises(ValueError, match="mode"):
        lean_attention(q, k, v, mode="fast")
    with pytest.raises(ValueError, match="mask"):
        lean_attention(q, k, v, torch.ones(3, 3, dtype=torch.bool))
