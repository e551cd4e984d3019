"""Lean modules built with from_module: shared parameters, same outputs, savings on real HF blocks."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import TOL, saved_tensor_bytes
from lean_ops_util import make
from leanformer.layers import (LeanDropout, LeanGatedMLP, LeanGELU, LeanLayerNorm, LeanLinear, LeanRMSNorm,
                               LeanSiLU)

transformers = pytest.importorskip("transformers")
from transformers.activations import ACT2FN  # noqa: E402
from transformers.pytorch_utils import Conv1D  # noqa: E402


def _same_grads(lean, stock, x, params, dtype=torch.float32, exact=True):
    out_l, out_s = lean(x), stock(x)
    assert out_l.dtype == out_s.dtype
    assert torch.equal(out_l, out_s) if exact else torch.allclose(out_l, out_s, **TOL[dtype])
    g = torch.randn_like(out_l)
    for a, r in zip(torch.autograd.grad(out_l, (x, *params), g), torch.autograd.grad(out_s, (x, *params), g)):
        torch.testing.assert_close(a, r, **TOL[dtype])


@pytest.mark.parametrize("make_mod", [lambda: nn.Linear(13, 7), lambda: nn.Linear(13, 7, bias=False),
                                      lambda: Conv1D(7, 13)])
def test_lean_linear_shares_parameters(make_mod):
    m = make_mod()
    lean = LeanLinear.from_module(m)
    assert lean.weight is m.weight and lean.bias is m.bias
    assert list(lean.state_dict()) == list(m.state_dict())
    _same_grads(lean, m, make((2, 3, 13)), list(m.parameters()))


def test_lean_norms_share_parameters():
    ln = nn.LayerNorm(11, eps=1e-12)
    lean = LeanLayerNorm.from_module(ln)
    assert lean.weight is ln.weight and lean.bias is ln.bias and lean.eps == 1e-12
    _same_grads(lean, ln, make((2, 3, 11)), [ln.weight, ln.bias])
    from transformers.models.llama.modeling_llama import LlamaRMSNorm
    rms = LlamaRMSNorm(11, eps=1e-5)
    lean = LeanRMSNorm.from_module(rms)
    assert lean.weight is rms.weight and lean.variance_epsilon == 1e-5
    _same_grads(lean, rms, make((2, 3, 11)), [rms.weight])


@pytest.mark.parametrize("name,kind", [("gelu", "gelu"), ("gelu_new", "gelu_new"), ("gelu_pytorch_tanh", "gelu_tanh"),
                                       ("gelu_python", "gelu_python"), ("gelu_fast", "gelu_fast"),
                                       ("quick_gelu", "quick_gelu"), ("gelu_python_tanh", "gelu_new")])
def test_lean_gelu_recognises_each_hf_variant(name, kind):
    m = ACT2FN[name]
    lean = LeanGELU.from_module(m)
    assert lean.kind == kind
    _same_grads(lean, m, make((3, 41), scale=3.0), [])


def test_lean_activation_modules_from_torch():
    assert LeanGELU.from_module(nn.GELU()).kind == "gelu"
    assert LeanGELU.from_module(nn.GELU(approximate="tanh")).kind == "gelu_tanh"
    _same_grads(LeanSiLU.from_module(nn.SiLU()), nn.SiLU(), make((3, 9)), [])
    _same_grads(LeanSiLU.from_module(ACT2FN["silu"]), nn.SiLU(), make((3, 9)), [])


def test_lean_dropout_from_module_and_train_flag():
    d = nn.Dropout(0.2)
    lean = LeanDropout.from_module(d)
    x = make((4, 9))
    torch.manual_seed(1)
    out = lean(x)
    torch.manual_seed(1)
    assert torch.equal(out, d(x))
    lean.eval()
    assert lean(x) is x


@pytest.mark.parametrize("bad,cls", [(nn.ReLU(), LeanGELU), (nn.Linear(3, 3), LeanLayerNorm), (nn.ReLU(), LeanSiLU),
                                     (nn.Dropout2d(0.1), LeanDropout), (nn.Conv1d(3, 3, 1), LeanLinear),
                                     (nn.LayerNorm(4), LeanRMSNorm), (nn.Linear(3, 3), LeanGatedMLP)])
def test_unsupported_module_raises_type_error(bad, cls):
    with pytest.raises(TypeError, match="unsupported module"):
        cls.from_module(bad)


def test_changed_activation_class_is_refused():
    class Weird(nn.GELU):            # claims to be nn.GELU but computes something else
        def forward(self, x):
            return super().forward(x) * 1.0001
    with pytest.raises(TypeError, match="does not compute"):
        LeanGELU.from_module(Weird())


def _swap(module: nn.Module, **lean):
    for name, new in lean.items():
        setattr(module, name, new)
    return module


def _gpt2_mlp_pair(inner: int, resid_pdrop: float):
    """(stock, lean) HF GPT2MLP with the same weights; lean has c_fc / act / c_proj (and dropout, when it is
    on) swapped module by module."""
    from transformers import GPT2Config
    from transformers.models.gpt2.modeling_gpt2 import GPT2MLP
    cfg = GPT2Config(n_embd=16, n_inner=inner, resid_pdrop=resid_pdrop)
    stock = GPT2MLP(inner, cfg)
    lean = GPT2MLP(inner, cfg)
    lean.load_state_dict(stock.state_dict())
    swaps = dict(c_fc=LeanLinear.from_module(lean.c_fc), act=LeanGELU.from_module(lean.act),
                 c_proj=LeanLinear.from_module(lean.c_proj))
    if resid_pdrop:
        swaps["dropout"] = LeanDropout.from_module(lean.dropout)
    return stock, _swap(lean, **swaps)


def _grad_pairs(out, ref, x, lean, stock):
    """Gradients of one shared random cotangent through both outputs: (lean, stock) per input/parameter.
    Uses the outputs already computed (a second forward would draw new dropout masks)."""
    g = torch.randn_like(out)
    return zip(torch.autograd.grad(out, [x, *lean.parameters()], g),
               torch.autograd.grad(ref, [x, *stock.parameters()], g))


def test_gpt2_mlp_saves_only_preactivation():
    """HF GPT2MLP: c_fc (Conv1D) -> NewGELU -> c_proj (Conv1D) -> dropout, swapped module by module."""
    stock, lean = _gpt2_mlp_pair(64, resid_pdrop=0.1)
    x = make((2, 5, 16))
    torch.manual_seed(0)
    out, n = saved_tensor_bytes(lean, x)
    torch.manual_seed(0)
    ref, n_stock = saved_tensor_bytes(stock, x)
    assert torch.equal(out, ref)
    a = 2 * 5 * 64 * 4
    # stock: x, W_fc, W_proj, GELU temporaries (4 I-wide), GELU output, fp32 dropout noise (H-wide)
    # lean: x, W_fc, W_proj, the pre-activation a, 1-bit mask
    assert n_stock - n == 4 * a + 2 * 5 * 16 * 4 - (2 * 5 * 16 + 7) // 8
    for p, q in _grad_pairs(out, ref, x, lean, stock):
        torch.testing.assert_close(p, q, **TOL[torch.float32])


def test_llama_mlp_from_module_shares_and_matches():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP
    cfg = LlamaConfig(hidden_size=16, intermediate_size=40, num_attention_heads=2, num_key_value_heads=2)
    stock = LlamaMLP(cfg)
    lean = LeanGatedMLP.from_module(stock)
    assert lean.gate_proj.weight is stock.gate_proj.weight and list(lean.state_dict()) == list(stock.state_dict())
    x = make((2, 3, 16))
    out, n = saved_tensor_bytes(lean, x)
    ref, n_stock = saved_tensor_bytes(stock, x)
    assert torch.equal(out, ref)
    assert n_stock - n == 2 * (2 * 3 * 40 * 4)         # silu(g) and h are no longer kept
    _same_grads(lean, stock, x, list(stock.parameters()))


def test_gpt2_mlp_under_bf16_autocast_matches_stock():
    stock, lean = _gpt2_mlp_pair(48, resid_pdrop=0.0)
    x = make((2, 5, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, n = saved_tensor_bytes(lean, x)
        ref, n_stock = saved_tensor_bytes(stock, x)
    assert out.dtype == ref.dtype == torch.bfloat16 and torch.equal(out, ref)
    assert n < n_stock
    for p, q in _grad_pairs(out, ref, x, lean, stock):
        assert p.dtype == q.dtype
        # the GELU input gradient comes from the fused kernel (fp32 inside) vs stock's bf16 op chain
        torch.testing.assert_close(p.float(), q.float(), **TOL[torch.bfloat16])
