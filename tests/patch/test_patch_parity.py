"""Patched vs stock Hugging Face models: outputs and every parameter gradient within the fp32 tolerance.

Dropout stays ON (BERT/GPT-2 defaults 0.1; LLaMA attention dropout 0.1). Strict parity is possible because
every lean dropout (hidden: ``LeanDropout``; attention probabilities: the lean attention Function) draws its
mask with the same RNG call, shape and order as stock ``F.dropout`` on CPU, so under one seed the stock and
the patched model use identical masks; the lean side keeps them at 1 bit. The stock side is the plain
reference: HF eager attention (and SDPA, whose CPU math fallback draws the same mask).
"""
from __future__ import annotations

import copy

import pytest
import torch
from conftest import TOL
from patch_util import assert_same_step, make_batch, run_step, stock_and_lean, tiny_model

import leanformer

SHAPES = [(1, 7, 0), (3, 13, 5), (2, 16, 0)]  # (batch, seq, padding on the last sequence)


# default run: each lean attention mode once; the full cross product (stock eager/sdpa x modes) is marked slow
COMBOS = [("eager", "flash"), ("sdpa", "auto"), ("eager", "tempo")]
SLOW_COMBOS = [("sdpa", "flash"), ("sdpa", "tempo"), ("eager", "auto"), ("eager", "sdpa")]


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
@pytest.mark.parametrize("stock_attn,mode", COMBOS + [pytest.param(*c, marks=pytest.mark.slow) for c in SLOW_COMBOS])
def test_patched_matches_stock(arch, stock_attn, mode):
    stock, lean, report = stock_and_lean(arch, stock_attn, leanformer.LeanConfig(attention=mode))
    assert report.counts()["attention"] == 2
    for batch, seq, pad in SHAPES:
        data = make_batch(stock, batch, seq, pad_last=pad)
        assert_same_step(run_step(stock, data), run_step(lean, data), TOL[torch.float32])


def test_minilm_real_weights_match_stock():
    from leanformer.models import build_model

    stock = build_model("minilm", task="base").train()
    lean = copy.deepcopy(stock)
    report = leanformer.patch_(lean)
    assert report.counts()["attention"] == 6
    ids = torch.randint(0, stock.config.vocab_size, (2, 11), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    outs = []
    for m in (stock, lean):
        m.zero_grad(set_to_none=True)
        torch.manual_seed(3)
        h = m(input_ids=ids, attention_mask=mask).last_hidden_state
        (h * mask[..., None]).pow(2).mean().backward()
        outs.append((h.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}))
    assert_same_step(outs[0], outs[1], TOL[torch.float32])


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_bf16_autocast_matches_stock(arch):
    stock, lean, _ = stock_and_lean(arch, "eager")
    data = make_batch(stock, 2, 9, pad_last=3)
    # bf16 tolerance from the shared table: both sides round matmuls to bf16, in different association
    assert_same_step(run_step(stock, data, autocast=True), run_step(lean, data, autocast=True), TOL[torch.bfloat16])


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
@pytest.mark.parametrize("reentrant", [True, False])
def test_gradient_checkpointing_matches_stock(arch, reentrant):
    stock, lean, _ = stock_and_lean(arch, "sdpa")
    for m in (stock, lean):
        m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    data = make_batch(stock, 2, 11, pad_last=4)
    assert_same_step(run_step(stock, data), run_step(lean, data), TOL[torch.float32])


def test_eval_mode_and_no_grad_match_stock():
    stock, lean, _ = stock_and_lean("bert", "sdpa")
    stock.eval(), lean.eval()
    data = make_batch(stock, 2, 10, pad_last=2)
    with torch.no_grad():
        torch.testing.assert_close(stock(**data).logits, lean(**data).logits, **TOL[torch.float32])


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_bf16_parameters_match_stock(arch):
    stock = tiny_model(arch, "eager").to(torch.bfloat16)
    lean = copy.deepcopy(stock)
    leanformer.patch_(lean)
    data = make_batch(stock, 2, 9, pad_last=3)
    assert_same_step(run_step(stock, data), run_step(lean, data), TOL[torch.bfloat16])
