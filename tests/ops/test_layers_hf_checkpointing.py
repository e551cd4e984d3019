"""Lean layers inside a Hugging Face model with HF gradient checkpointing and dropout on.

A tiny GPT-2 with every LayerNorm, Conv1D, GELU and Dropout module swapped for its lean version (the
attention itself stays stock: that is the patch engine's job). Checkpointing recomputes each block in
backward; the lean dropout must redraw the same masks and the norm -> projection recipes must rebuild
the same tensors, so gradients with and without checkpointing are bit-identical.
"""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from conftest import TOL
from leanformer.layers import LeanDropout, LeanGELU, LeanLayerNorm, LeanLinear

transformers = pytest.importorskip("transformers")
from transformers import GPT2Config, GPT2Model  # noqa: E402
from transformers.pytorch_utils import Conv1D  # noqa: E402


def _leanify(model: nn.Module) -> nn.Module:
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.LayerNorm):
                setattr(parent, name, LeanLayerNorm.from_module(child))
            elif isinstance(child, Conv1D):
                setattr(parent, name, LeanLinear.from_module(child))
            elif type(child) is nn.Dropout:
                setattr(parent, name, LeanDropout.from_module(child))
            elif name == "act":
                setattr(parent, name, LeanGELU.from_module(child))
    return model


def _grads(model, ids, ckpt_kwargs):
    model.train()
    if ckpt_kwargs is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=ckpt_kwargs)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(11)
    out = model(ids).last_hidden_state                       # (B, S, H)
    weights = torch.linspace(-1, 1, out.numel()).view_as(out)
    (out * weights).sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_gpt2_lean_layers_under_hf_gradient_checkpointing(use_reentrant):
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=16, vocab_size=50, resid_pdrop=0.1,
                     embd_pdrop=0.1, attn_pdrop=0.0, attn_implementation="eager")
    torch.manual_seed(0)
    stock = GPT2Model(cfg)
    lean = _leanify(copy.deepcopy(stock))
    ids = torch.randint(0, 50, (1, 7))                        # batch 1, odd length
    out_s, g_s = _grads(stock, ids, None)
    out_l, g_l = _grads(lean, ids, None)
    assert torch.equal(out_l, out_s)                          # same masks, same arithmetic
    for n in g_s:
        torch.testing.assert_close(g_l[n], g_s[n], **TOL[torch.float32], msg=n)
    out_c, g_c = _grads(lean, ids, {"use_reentrant": use_reentrant})
    assert torch.equal(out_c, out_l)
    for n in g_l:
        assert torch.equal(g_c[n], g_l[n]), n                 # recompute is deterministic: bit-identical
