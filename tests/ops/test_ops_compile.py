"""torch.compile: lean Functions trace, give the eager gradients, and (documented) lose the fusion saving."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from conftest import TOL, saved_tensor_bytes
from leanformer.ops import lean_gated_act, lean_gelu, lean_layer_norm, lean_linear, lean_rms_norm

H, I = 16, 48


def _params():
    torch.manual_seed(0)
    return [torch.nn.Parameter(t) for t in (torch.ones(H), torch.zeros(H), torch.randn(I, H) * .2,
                                             torch.randn(H, I) * .2)]


def _lean(x, w, b, W1, W2):   # BERT FFN-like LN -> W1 -> GELU -> W2, and LLaMA-like RMS -> gate/up -> down
    h = lean_gelu(lean_linear(lean_layer_norm(x, (H,), w, b), W1))
    r = lean_rms_norm(x, w)
    return lean_linear(h, W2) + lean_linear(lean_gated_act(lean_linear(r, W1), lean_linear(r, W1 * 0.5)), W2)


def _stock(x, w, b, W1, W2):
    h = F.gelu(F.linear(F.layer_norm(x, (H,), w, b), W1))
    h32 = x.float()
    r = w * (h32 * torch.rsqrt(h32.pow(2).mean(-1, keepdim=True) + 1e-6)).to(x.dtype)
    return F.linear(h, W2) + F.linear(F.silu(F.linear(r, W1)) * F.linear(r, W1 * 0.5), W2)


def _run(backend):
    params = _params()
    x = torch.randn(3, 5, H, requires_grad=True)
    fn = torch.compile(_lean, backend=backend, fullgraph=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out, n_compiled = saved_tensor_bytes(fn, x, *params)
    grads = torch.autograd.grad(out.sum(), (x, *params))
    eager, n_eager = saved_tensor_bytes(_lean, x, *params)
    ref = torch.autograd.grad(eager.sum(), (x, *params))
    torch.testing.assert_close(out, eager, **TOL[torch.float32])
    for a, r in zip(grads, ref):
        torch.testing.assert_close(a, r, **TOL[torch.float32])
    stock = torch.compile(_stock, backend=backend)
    _, n_stock_compiled = saved_tensor_bytes(stock, x, *params)
    _, n_stock = saved_tensor_bytes(_stock, x, *params)
    assert n_eager < n_stock
    return n_compiled, n_eager, n_stock_compiled


def test_compile_aot_eager_same_grads_and_documented_bytes():
    n_compiled, n_eager, n_stock_compiled = _run("aot_eager")
    # Documented limitation (docs/lean_layers.md): the partitioner decides the saved set under compile,
    # so the lean fusion is not applied there. If this starts failing, compile began to keep the saving:
    # update the docs and turn this into a strict saving assertion.
    assert n_compiled == n_stock_compiled


def test_compile_warns_once_that_fusion_is_off():
    from leanformer.ops import recipe
    recipe._compile_warned = False
    x, W = torch.randn(2, H, requires_grad=True), torch.nn.Parameter(torch.randn(4, H))
    fn = torch.compile(lambda x: lean_linear(lean_layer_norm(x, (H,), None, None), W), backend="aot_eager")
    with pytest.warns(UserWarning, match="torch.compile"):
        fn(x).sum().backward()


@pytest.mark.slow
def test_compile_inductor_same_grads():
    n_compiled, n_eager, n_stock_compiled = _run("inductor")
    assert n_compiled == n_stock_compiled   # as with aot_eager: the partitioner decides
