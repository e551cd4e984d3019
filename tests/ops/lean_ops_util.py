"""Shared helpers for tests/ops (not a test module)."""
from __future__ import annotations

import torch

from conftest import TOL

DTYPES = [torch.float32, torch.bfloat16]


def make(shape, dtype=torch.float32, *, noncontig=False, requires_grad=True, scale=1.0):
    """Random leaf tensor of ``shape``; ``noncontig`` gives a strided (non-contiguous) view."""
    if noncontig:  # every other column of a wider buffer: a strided view
        t = (torch.randn(*shape[:-1], 2 * shape[-1]) * scale).to(dtype)[..., ::2]
        assert not t.is_contiguous()
    else:
        t = (torch.randn(*shape) * scale).to(dtype)
    return t.detach().requires_grad_(requires_grad)


def param(*shape, dtype=torch.float32, scale=1.0, offset=0.0):
    return torch.nn.Parameter((torch.randn(*shape) * scale + offset).to(dtype))


def grads(out, inputs, gout):
    inputs = [t for t in inputs if t is not None]
    return torch.autograd.grad(out, inputs, gout, allow_unused=True)


def assert_close(a, b, dtype, msg=""):
    tol = TOL[dtype]
    torch.testing.assert_close(a.float(), b.float(), **tol, msg=msg or None)


def check_against(fn_lean, fn_ref, inputs, dtype, *, same_dtype=False):
    """Forward and every gradient of ``fn_lean`` vs ``fn_ref``. The reference runs on the same input values
    in a wider dtype (fp64 for fp32 inputs, fp32 for bf16 inputs), so it is the yardstick, not a twin.
    ``same_dtype``: run the reference in ``dtype`` (for multi-op bf16 chains, whose distance to an exact
    reference is dominated by bf16 rounding inside the chain, stock's and ours alike)."""
    wide = dtype if same_dtype else torch.float64 if dtype == torch.float32 else torch.float32
    out = fn_lean(*inputs)
    ref_inputs = [None if t is None else t.detach().to(wide).requires_grad_(t.requires_grad) for t in inputs]
    ref = fn_ref(*ref_inputs)
    assert out.shape == ref.shape
    assert_close(out, ref, dtype, "forward")
    gout = torch.randn_like(out)
    live = [i for i, t in enumerate(inputs) if t is not None and t.requires_grad]
    g1 = grads(out, [inputs[i] for i in live], gout)
    g2 = grads(ref, [ref_inputs[i] for i in live], gout.to(wide))
    for i, a, b in zip(live, g1, g2):
        assert a is not None and a.dtype == inputs[i].dtype, f"grad of input {i}"
        assert_close(a, b, dtype, f"grad of input {i}")
    return out


def nbytes(*ts) -> int:
    """Bytes of the distinct storages of ``ts`` (as conftest.saved_tensor_bytes counts them)."""
    seen = {}
    for t in ts:
        if t is not None:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())
